# Ablations by name: every spec experiments/ablations/<name>.yaml gives reports/<name>.html.
#
#     snakemake --cores 2 reports/landmark_ablation.html
#
# Each rung (python -m multimem.ablation list <spec>) is a full experiment built in its own tree
# build/ablation/<name>/<rung>/ (params.yaml written from the spec; pipeline/, src/, notebooks/,
# experiments/ linked), as a preset built by name is; the report rule then reads every rung's summary.
import os
from pathlib import Path

rule ablation_rung:
    input:
        spec=f"{ABLATION_DIR}/{{ablation}}.yaml",
        code=["Snakefile", *CODE],
    output:
        "build/ablation/{ablation}/{rung}/metrics/{rung}/summary.json",
    wildcard_constraints:
        ablation="|".join(map(re.escape, ABLATIONS)) or "(?!)",
        rung=r"[a-z][a-z0-9_]*-[0-9]{2}-[a-z][a-z0-9_]*",
    params:
        tree=lambda w: f"build/ablation/{w.ablation}/{w.rung}",
        links=" ".join(f"{d}:{os.path.relpath(d, 'build/ablation/x/y')}" for d in LINKED),
        snakemake=f"{sys.executable} -m snakemake --snakefile {Path(workflow.main_snakefile).resolve()}",
        python=sys.executable,
    threads: workflow.cores
    conda:
        ENV
    log:
        "logs/ablation-{ablation}-{rung}.log",
    shell:
        "mkdir -p {params.tree}"
        " && {params.python} -m multimem.ablation params {input.spec} {wildcards.rung} {params.tree}/params.yaml"
        " && for l in {params.links}; do ln -sfn ${{l#*:}} {params.tree}/${{l%%:*}}; done"
        " && {params.snakemake} --directory {params.tree} --cores {threads} metrics/{wildcards.rung}/summary.json"
        " > {log} 2>&1"


rule ablation_report:
    input:
        "pipeline/ablation_report.py",
        "src/multimem/evaluation/ablation_table.py",
        "notebooks/ablation_report.ipynb",
        spec=f"{ABLATION_DIR}/{{ablation}}.yaml",
        rungs=lambda w: [f"build/ablation/{w.ablation}/{r}/metrics/{r}/summary.json" for r in ablation_rungs(w.ablation)],
    output:
        html="reports/{ablation}.html",
        table="reports/{ablation}.csv",
    wildcard_constraints:
        ablation="|".join(map(re.escape, ABLATIONS)) or "(?!)",
    conda:
        ENV
    log:
        "logs/ablation-{ablation}-report.log",
    shell:
        "python pipeline/ablation_report.py --spec {input.spec} --builds build/ablation/{wildcards.ablation}"
        " --out {output.html} > {log} 2>&1"


ruleorder: ablation_report > preset
