# Values shared by the rules.
from functools import partial

from multimem.params import rerun_key

EXP = config["experiment"]
RUNS = [(v, s) for v in config["train"]["variants"] for s in config["train"]["seeds"]]
CMD = "python pipeline/{stage}.py --params params.yaml"
ENV = "../envs/multimem.yaml"
keys = partial(rerun_key, config)  # keys("train.lr", ...): the params a rule reads
