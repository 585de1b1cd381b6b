# The multimem pipeline through Snakemake: the same pipeline/ entry points as dvc.yaml, the same
# params.yaml, validated against the same schema. Default target: reports/<experiment>.html
#
#     snakemake --cores 1 reports/landmark_v2.html
import json

from snakemake.utils import validate

from multimem.params import validate_params

configfile: "params.yaml"
validate(config, "src/multimem/params_schema.yaml")
validate_params(config)  # the cross-field checks every stage runs

EXP = config["experiment"]
RUNS = [(v, s) for v in config["train"]["variants"] for s in config["train"]["seeds"]]
CMD = "python pipeline/{stage}.py --params params.yaml"


def keys(*paths):
    """The params a rule reads, as one string: Snakemake reruns the rule when it changes."""
    out = {}
    for path in paths:
        value = config
        for part in path.split("."):
            value = value[part]
        out[path] = value
    return json.dumps(out, sort_keys=True)


include: "pipeline/rules/stages.smk"
