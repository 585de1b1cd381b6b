"""Stage evaluate: perplexity, selection accuracy and the mixer bracket of every trained run, aggregated
over seeds -> metrics/<experiment>/ (runs/*.json, summary.json, plots/*.csv).

    python pipeline/evaluate.py --params params.yaml [--data data] [--base models/base] [--models models]
                                [--metrics metrics]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from multimem.evaluation.stage import Paths, evaluate
from multimem.params import cli_main, load_params
from multimem.training.loop import ppl_text


@cli_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data", default="data")
    parser.add_argument("--base", default="models/base")
    parser.add_argument("--models", default="models")
    parser.add_argument("--metrics", default="metrics")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    start = time.perf_counter()
    out = evaluate(params, Paths(Path(args.data), Path(args.base), Path(args.models), Path(args.metrics)))
    s, split = out["summary"], params["eval"]["report_split"]
    variants = list(dict.fromkeys(r["variant"] for r in out["records"]))
    parts = []
    for v in variants:
        ppl = s.get(f"{v}.{split}_ppl.mean")
        acc = s.get(f"{v}.{split}_acc.mean") if params["memories"]["task"] == "recall" else None
        top1 = s.get(f"{v}.task_sel_acc.mean", s.get(f"{v}.sel_trained_top1.mean"))
        parts.append(v + (f" {split} value acc {acc:.1%}" if acc is not None else
                          f" {split} ppl {ppl_text(ppl)}" if ppl is not None else "")
                     + (f", selection {top1:.1%}" if top1 is not None else ""))
    missing = f"; missing runs: {', '.join(out['missing'])}" if out["missing"] else ""
    missing += f"; failed runs (oracle start missed its gate): {', '.join(out['failed'])}" if out["failed"] else ""
    print(f"evaluate: {len(out['records'])} runs ({'; '.join(parts)}){missing}; "
          f"{time.perf_counter() - start:.1f} s -> {out['out']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
