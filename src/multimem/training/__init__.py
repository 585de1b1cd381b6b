"""Training stages' library: one concept per module.

    device          device choice, bf16/TF32 on CUDA, determinism on CPU, AdamW
    batches         LM chunks and selection examples; seeded, resumable, rank-sharded batch order
    protocols       lm (v1) and selection (v2): batch -> loss, memory state between batches
    early_stopping  EarlyStopping on validation loss
    checkpoint      atomic, digest-checked, resumable checkpoints with RNG states
    ddp             torchrun data parallelism (gradient all-reduce, shared-bank averaging)
    weights         safetensors weights + config.json of a model (base or run)
    base_init       a variant initialised from the base LM
    loop            Trainer: epochs, validation, best weights, checkpoints, dvclive, summary
    runs            the pretrain and train stages, from params to outputs
"""
