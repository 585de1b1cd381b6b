"""The model core: a GPT-NeoX-shaped decoder whose memory layer mixes N compressive memories by a landmark.

Modules, one concept each:
    config           ModelConfig / MemoryConfig (every v1 protocol choice is a named switch)
    linear_attention causal linear attention: chunked (fast) and naive (definition) and running-sum (v1's)
    memory_bank      MemoryBank: N compressive memories (M_i, z_i) as batched tensors
    landmarks        landmark vectors and relevance scores per memory
    multimem_layer   MultiMemoryLayer: local linear attention + landmark-mixed memory readout
    pythia_layer     GPT-NeoX (Pythia) layer with rotary embeddings and parallel residual
    transformer      TransformerLM: embeddings, layers, final LayerNorm, untied LM head
    hf_import        import of GPT-NeoX / Pythia weights from a transformers checkpoint
    reference_v1     v1's layer computed as v1's code did (running-sum attention), for equivalence checks
"""

from multimem.model.config import LANDMARKS, MIXERS, REFERENCE_MIXERS, MemoryConfig, ModelConfig
from multimem.model.memory_bank import MemoryBank
from multimem.model.transformer import LMOutput, TransformerLM

__all__ = ["LANDMARKS", "MIXERS", "REFERENCE_MIXERS", "LMOutput", "MemoryBank", "MemoryConfig", "ModelConfig",
           "TransformerLM"]
