# The multimem pipeline through Snakemake: the same pipeline/ entry points as dvc.yaml, the same
# params.yaml, validated against the same schema. Default target: reports/<experiment>.html
#
#     snakemake --cores 1 reports/landmark_v2.html
from snakemake.utils import validate

from multimem.params import validate_params


configfile: "params.yaml"


validate(config, "src/multimem/params_schema.yaml")
validate_params(config)  # the cross-field checks every stage runs


include: "pipeline/rules/common.smk"
include: "pipeline/rules/stages.smk"
