# Values shared by the rules.
import glob
from functools import partial
from pathlib import Path

from multimem.params import rerun_key

EXP = config["experiment"]
RUNS = [(v, s) for v in config["train"]["variants"] for s in config["train"]["seeds"]]
CMD = "python pipeline/{stage}.py --params params.yaml"
ENV = "../envs/multimem.yaml"
keys = partial(rerun_key, config)  # keys("train.lr", ...): the params a rule reads


# Ablations (pipeline/rules/ablation.smk): specs experiments/ablations/<name>.yaml and the rungs that run
ABLATION_DIR = "experiments/ablations"
ABLATIONS = sorted(Path(p).stem for p in glob.glob(f"{ABLATION_DIR}/*.yaml"))


def ablation_rungs(name):
    from multimem.ablation import built, load_spec

    return [r.name for r in built(load_spec(f"{ABLATION_DIR}/{name}.yaml"))]
