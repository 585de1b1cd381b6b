"""Stage pretrain: the base LM (random init, trained on lm_train, or imported Pythia weights) -> models/base/.

    python pipeline/pretrain.py --params params.yaml [--prepared data/prepared] [--out models/base]
    torchrun --standalone --nproc_per_node=2 pipeline/pretrain.py --params params.yaml
"""

from __future__ import annotations

import argparse
import sys
import time

from multimem.params import cli_main, load_params
from multimem.training.ddp import env_dist_info
from multimem.training.loop import ppl_text
from multimem.training.runs import CHECKPOINT_EVERY, pretrain


@cli_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--prepared", default="data/prepared")
    parser.add_argument("--out", default="models/base")
    parser.add_argument("--checkpoint-every", type=int, default=CHECKPOINT_EVERY,
                        help="optimiser steps between mid-epoch checkpoints")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    start = time.perf_counter()
    m = pretrain(params, args.prepared, args.out, args.checkpoint_every)
    if not env_dist_info().is_main:
        return 0
    trained = (f"{m['steps']} steps, best val loss {m['best_val_loss']:.4f} (ppl {ppl_text(m['best_val_ppl'])}) "
               f"at epoch {m['best_epoch']}, training time {m['seconds']:.1f} s" if m["trained"] else "not trained")
    trained += f" (this command {time.perf_counter() - start:.1f} s: less when it resumed)" if m["trained"] else ""
    print(f"pretrain: init {m['init']}, {m['params']:,} parameters, {trained} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
