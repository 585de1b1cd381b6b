# The multimem pipeline through Snakemake: the same pipeline/ entry points as dvc.yaml, the same
# params.yaml, validated against the same schema.
#
#     snakemake --cores 1                                      # default target (rule all): the report of
#                                                              # params.yaml, in the same files as `dvc repro`
#     snakemake --cores 1 reports/landmark_v1-demo.html        # any preset by name, in its own tree build/<preset>/
#     snakemake --cores 2 reports/landmark_ablation.html       # an ablation by name (experiments/ablations/)
from snakemake.utils import validate

from multimem.params import load_params, validate_params

load_params("params.yaml")  # refused here first: bad values, and YAML alias bombs that would hang Snakemake's loader


configfile: "params.yaml"


validate_params(config)  # the cross-field checks every stage runs (first: it refuses alias bombs quickly)
validate(config, "src/multimem/params_schema.yaml")


include: "pipeline/rules/common.smk"


rule all:  # the default target: the first rule of the Snakefile itself (not of an included file)
    input:
        f"reports/{EXP}.html",


include: "pipeline/rules/stages.smk"
include: "pipeline/rules/presets.smk"
include: "pipeline/rules/ablation.smk"
