"""Stage report: execute notebooks/landmark_report.ipynb with papermill and convert it to a
self-contained HTML page (inputs hidden, figures embedded) -> reports/<experiment>.html.

The same metrics give byte-identical HTML (the injected parameters cell gets a fixed id, papermill's timings
are dropped), so dvc.lock keeps the report's hash; report.title is shown as text (HTML-escaped).

    python pipeline/report.py --params params.yaml
"""

from __future__ import annotations

import argparse
import html
import sys
from pathlib import Path

from multimem.evaluation.render import render
from multimem.params import UserError, cli_main, load_params

@cli_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--notebook", default="notebooks/landmark_report.ipynb")
    parser.add_argument("--out", default=None, help="default: reports/<experiment>.html")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    out = Path(args.out or f"reports/{params['experiment']}.html")
    summary = Path("metrics") / params["experiment"] / "summary.json"
    if not summary.is_file():
        raise UserError(f"{summary} is missing; run stage evaluate first (`dvc repro evaluate`)")
    report = params["report"]
    render(Path(args.notebook), out, {"params_path": str(Path(args.params).resolve()),
                                      "title": html.escape(report["title"]), "figure_dpi": report["figure_dpi"]},
           Path.cwd())
    print(f"report: {out} ({out.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
