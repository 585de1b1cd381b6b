"""Stage report: execute notebooks/landmark_report.ipynb with papermill and convert it to a
self-contained HTML page (inputs hidden, figures embedded) -> reports/<experiment>.html.

    python pipeline/report.py --params params.yaml
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

from multimem.atomic import atomic_path
from multimem.params import cli_main, load_params

_EXTERNAL_SCRIPT = re.compile(r"<script[^>]*\bsrc=\"https?://[^\"]*\"[^>]*>\s*</script>", re.I)


def render(notebook: Path, out_html: Path, parameters: dict, cwd: Path) -> None:
    """papermill-execute `notebook` with `parameters` (passed as data), export HTML atomically."""
    import nbformat
    import papermill
    from nbconvert import HTMLExporter

    with tempfile.TemporaryDirectory() as tmp:
        executed = Path(tmp) / notebook.name
        papermill.execute_notebook(str(notebook), str(executed), parameters=parameters, cwd=str(cwd),
                                   kernel_name="python3", progress_bar=False)
        exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
        html, _ = exporter.from_notebook_node(nbformat.read(executed, as_version=4))
    html = _EXTERNAL_SCRIPT.sub("", html)  # figures are embedded PNGs; nothing needs a CDN
    out_html.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_html) as tmp_html:
        Path(tmp_html).write_text(html, encoding="utf-8")


@cli_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--notebook", default="notebooks/landmark_report.ipynb")
    parser.add_argument("--out", default=None, help="default: reports/<experiment>.html")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    out = Path(args.out or f"reports/{params['experiment']}.html")
    report = params["report"]
    render(Path(args.notebook), out, {"params_path": str(Path(args.params).resolve()),
                                      "title": report["title"], "figure_dpi": report["figure_dpi"]}, Path.cwd())
    print(f"report: {out} ({out.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
