"""Stage start: where every variant of a seed begins (train.init_from) -> models/start/seed<k>/.

    python pipeline/start.py --params params.yaml --seed 0

init_from base: nothing to train (start.json only); oracle: the oracle variant trained from models/base for
train.start_steps steps, gated on its validation accuracy (train.oracle_gate). Rerunning resumes.
"""

from __future__ import annotations

import argparse
import sys

from multimem.params import cli_main, load_params
from multimem.training.ddp import env_dist_info
from multimem.training.runs import CHECKPOINT_EVERY, start


@cli_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--data", default="data")
    parser.add_argument("--base", default="models/base")
    parser.add_argument("--models", default="models")
    parser.add_argument("--checkpoint-every", type=int, default=CHECKPOINT_EVERY,
                        help="optimiser steps between mid-epoch checkpoints")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    info = start(params, args.seed, args.data, args.base, args.models, args.checkpoint_every)
    if env_dist_info().is_main:
        if info["init_from"] == "base":
            print(f"start: seed {args.seed} starts from {args.base} (train.init_from: base)")
        else:
            verdict = "converged" if info["converged"] else "DID NOT CONVERGE: this seed is reported as failed"
            print(f"start: oracle seed {args.seed}, best val accuracy {info['best_val_acc']:.4f} "
                  f"(gate {info['gate']}) after {info['steps']} steps: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
