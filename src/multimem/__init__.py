"""multimem: language models with several compressive memories chosen by a landmark.

The package reads as the pipeline does:
    data/        corpora, tokenizer, splits, memory tasks        (stages prepare, build_memories)
    model/       the model core: memory layer, landmarks, memory bank, Pythia layers
    training/    pretrain and per-variant training, checkpoints   (stages pretrain, train)
    evaluation/  perplexity, selection, statistics, report tables (stages evaluate, report)
Shared base: params (+ params_schema.yaml), resources (memory checks), experiment (presets and branches),
atomic (outputs), integrity (manifests), hub (network access), bench (benchmarks).
"""

__version__ = "0.1.0"
