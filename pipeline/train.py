"""Stage train: one variant and seed, from its start (models/base or models/start/seed<k>) -> models/<variant>/seed<k>/.

    python pipeline/train.py --params params.yaml --variant learned --seed 0
    torchrun --standalone --nproc_per_node=2 pipeline/train.py --params params.yaml --variant learned --seed 0

Rerunning the same command after an interruption resumes from the last good checkpoint.
"""

from __future__ import annotations

import argparse
import sys
import time

from multimem.model.config import MIXERS
from multimem.params import cli_main, load_params, require_listed
from multimem.training.ddp import env_dist_info
from multimem.training.loop import ppl_text
from multimem.training.runs import CHECKPOINT_EVERY, train


@cli_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--variant", required=True, choices=MIXERS, help="landmark variant, e.g. learned")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--data", default="data")
    parser.add_argument("--base", default="models/base")
    parser.add_argument("--models", default="models")
    parser.add_argument("--checkpoint-every", type=int, default=CHECKPOINT_EVERY,
                        help="optimiser steps between mid-epoch checkpoints")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    require_listed(params, "--variant", args.variant, "train.variants", args.params)
    require_listed(params, "--seed", args.seed, "train.seeds", args.params)
    start = time.perf_counter()
    s = train(params, args.variant, args.seed, args.data, args.base, args.models, args.checkpoint_every)
    if not env_dist_info().is_main or "failed" in s:
        return 0
    print(f"train: {args.variant} seed {args.seed} ({s['protocol']}), {s['params']:,} parameters, "
          f"best val loss {s['best_val_loss']:.4f} (ppl {ppl_text(s['best_val_ppl'])}) at epoch {s['best_epoch']} of "
          f"{s['epochs_run']}{' (early stop)' if s['stopped_early'] else ''}, training time {s['seconds']:.1f} s "
          f"(this command {time.perf_counter() - start:.1f} s: less when it resumed) "
          f"-> {args.models}/{args.variant}/seed{args.seed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
