"""multimem: language models with several compressive memories chosen by a landmark.

Modules, one concept each:
    config           ModelConfig / MemoryConfig (every v1 protocol choice is a named switch)
    linear_attention causal linear attention: chunked (fast) and naive (definition) and running-sum (v1's)
    memory_bank      MemoryBank: N compressive memories (M_i, z_i) as batched tensors
    landmarks        landmark vectors and relevance scores per memory
    multimem_layer   MultiMemoryLayer: local linear attention + landmark-mixed memory readout
    pythia_layer     GPT-NeoX (Pythia) layer with rotary embeddings and parallel residual
    model            TransformerLM: embeddings, layers, final LayerNorm, untied LM head
    hf_import        import of GPT-NeoX / Pythia weights from a transformers checkpoint
"""

__version__ = "0.1.0"
