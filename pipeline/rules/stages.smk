# Rules of the Snakefile, one per stage of dvc.yaml (file outputs, so Snakemake sees each result).
# The default target, rule all, is in the Snakefile (Snakemake takes it only from there).


rule validate:  # the Snakefile already validated params.yaml; this writes the stamp every rule reads
    input:
        "pipeline/validate.py",
    output:
        "data/validated.json",
    conda:
        ENV
    log:
        "logs/validate.log",
    shell:
        CMD.format(stage="validate") + " > {log} 2>&1"


rule prepare:
    input:
        "pipeline/prepare.py",
        "data/validated.json",
    output:
        "data/prepared/manifest.json",
    params:
        keys("data"),
    conda:
        ENV
    log:
        "logs/prepare.log",
    shell:
        CMD.format(stage="prepare") + " > {log} 2>&1"


rule build_memories:
    input:
        "pipeline/build_memories.py",
        "data/validated.json",
        "data/prepared/manifest.json",
    output:
        "data/memories/manifest.json",
    params:
        keys("memories"),
    conda:
        ENV
    log:
        "logs/build_memories.log",
    shell:
        CMD.format(stage="build_memories") + " > {log} 2>&1"


rule pretrain:
    input:
        "pipeline/pretrain.py",
        "data/validated.json",
        "data/prepared/manifest.json",
    output:
        "models/base/config.json",
    params:
        keys("pretrain", "model", "train.weight_decay", "train.grad_clip", "train.precision", "train.threads",
             "train.device"),
    conda:
        ENV
    log:
        "logs/pretrain.log",
    shell:
        CMD.format(stage="pretrain") + " > {log} 2>&1"


rule start:  # where every variant of a seed begins: the oracle start (train.init_from: oracle) or the base
    input:
        "pipeline/start.py",
        "data/validated.json",
        "data/memories/manifest.json",
        "models/base/config.json",
    output:
        "models/start/seed{seed}/start.json",
    params:
        keys("model", "train.protocol", "train.init_from", "train.start_steps", "train.oracle_gate",
             "train.batch_size", "train.lr", "train.weight_decay", "train.grad_clip", "train.write_grad",
             "train.eval_memory", "train.max_steps_per_epoch", "train.loss_reduction", "train.precision",
             "train.threads", "train.device"),
    conda:
        ENV
    log:
        "logs/start/seed{seed}.log",
    shell:
        CMD.format(stage="start") + " --seed {wildcards.seed} > {log} 2>&1"


rule train:
    input:
        "pipeline/train.py",
        "data/validated.json",
        "data/memories/manifest.json",
        "models/base/config.json",
        "models/start/seed{seed}/start.json",
    output:
        "models/{variant}/seed{seed}/train_summary.json",
    wildcard_constraints:
        variant="|".join(config["train"]["variants"]),
    params:
        keys("model", "train.protocol", "train.init_from", "train.epochs", "train.patience", "train.batch_size",
             "train.lr", "train.weight_decay", "train.grad_clip", "train.write_grad", "train.eval_memory",
             "train.max_steps_per_epoch", "train.loss_reduction", "train.precision", "train.threads",
             "train.device"),
    conda:
        ENV
    log:
        "logs/train/{variant}-seed{seed}.log",
    shell:
        CMD.format(stage="train") + " --variant {wildcards.variant} --seed {wildcards.seed} > {log} 2>&1"


rule evaluate:
    input:
        "pipeline/evaluate.py",
        "data/validated.json",
        "data/memories/manifest.json",
        [f"models/{v}/seed{s}/train_summary.json" for v, s in RUNS],
    output:
        f"metrics/{EXP}/summary.json",
    params:
        keys("experiment", "train.variants", "train.seeds", "train.protocol", "train.eval_memory", "eval"),
    conda:
        ENV
    log:
        "logs/evaluate.log",
    shell:
        CMD.format(stage="evaluate") + " > {log} 2>&1"


rule report:
    input:
        "pipeline/report.py",
        "data/validated.json",
        "src/multimem/evaluation/report_tables.py",
        "src/multimem/evaluation/render.py",
        "notebooks/landmark_report.ipynb",
        f"metrics/{EXP}/summary.json",
    output:
        f"reports/{EXP}.html",
    params:
        keys("report"),
    conda:
        ENV
    log:
        "logs/report.log",
    shell:
        CMD.format(stage="report") + " > {log} 2>&1"
