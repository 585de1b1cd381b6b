# Any preset's report by name, beside the experiment of params.yaml (which rule all and the stage rules
# build in data/, models/, metrics/, reports/, the files `dvc repro` writes):
#
#     snakemake --cores 1 reports/landmark_v1-demo.html      # reads experiments/landmark_v1-demo.yaml
#
# builds the preset in its own tree build/<preset>/ (params.yaml = the preset; pipeline/, src/, notebooks/,
# experiments/ linked): this workflow runs there on its own, so data, models, metrics, logs and Snakemake's
# records of two presets never mix; the report is then copied to reports/<preset>.html. A change of the
# preset, the workflow or a stage's entry point reruns that inner run, which redoes what the change touches.
import glob
import re
import sys
from pathlib import Path

LINKED = ("pipeline", "src", "notebooks", "experiments")
CODE = sorted(glob.glob("pipeline/*.py") + glob.glob("pipeline/rules/*.smk")) + ["notebooks/landmark_report.ipynb"]


rule preset:
    input:
        preset="experiments/{preset}.yaml",
        code=["Snakefile", *CODE],
    output:
        "reports/{preset}.html",
    wildcard_constraints:
        preset=rf"(?!{re.escape(EXP)}$)[A-Za-z0-9][A-Za-z0-9_.-]*",  # params.yaml's own is rule report's
    params:
        tree=lambda w: f"build/{w.preset}",
        links=" ".join(LINKED),
        snakemake=f"{sys.executable} -m snakemake --snakefile {Path(workflow.main_snakefile).resolve()}",
        inner=lambda w: f"reports/{load_params(f'experiments/{w.preset}.yaml')['experiment']}.html",
    threads: workflow.cores
    conda:
        ENV
    log:
        "logs/preset-{preset}.log",
    shell:
        "mkdir -p {params.tree} && cp -p {input.preset} {params.tree}/params.yaml"
        " && for d in {params.links}; do ln -sfn ../../$d {params.tree}/$d; done"
        " && {params.snakemake} --directory {params.tree} --cores {threads} {params.inner} > {log} 2>&1"
        " && cp {params.tree}/{params.inner} {output}"
