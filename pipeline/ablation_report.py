"""Report of an ablation: every rung's summary -> the ablation table (reports/<name>.csv, Holm across the
table) and notebooks/ablation_report.ipynb executed with papermill -> reports/<name>.html.

    python pipeline/ablation_report.py --spec experiments/ablations/landmark_ablation.yaml \
        --builds build/ablation/landmark_ablation --out reports/landmark_ablation.html
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from multimem.ablation import load_spec, rungs
from multimem.atomic import write_text_atomic
from multimem.evaluation.ablation_table import ablation_table, load_rows
from multimem.evaluation.render import render
from multimem.params import UserError, cli_main


@cli_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True)
    parser.add_argument("--builds", required=True, help="folder of the rung trees build/ablation/<name>")
    parser.add_argument("--notebook", default="notebooks/ablation_report.ipynb")
    parser.add_argument("--out", required=True, help="reports/<name>.html (the table goes beside it, .csv)")
    args = parser.parse_args(argv)
    spec = load_spec(args.spec)
    try:
        rows = load_rows(rungs(spec), args.builds)
    except FileNotFoundError as e:
        raise UserError(str(e)) from None
    table = ablation_table(rows)
    out = Path(args.out)
    csv = out.with_suffix(".csv")
    write_text_atomic(csv, table.to_csv(index=False, float_format="%.6g"))
    render(Path(args.notebook), out, {"spec_path": str(Path(args.spec).resolve()),
                                      "table_path": str(csv.resolve())}, Path.cwd())
    print(f"ablation report: {out} ({out.stat().st_size / 1024:.0f} KiB), {len(table)} rungs -> {csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
