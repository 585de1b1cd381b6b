"""Stage report: execute notebooks/landmark_report.ipynb with papermill and convert it to a
self-contained HTML page (inputs hidden, figures embedded) -> reports/<experiment>.html.

The same metrics give byte-identical HTML (the injected parameters cell gets a fixed id, papermill's timings
are dropped), so dvc.lock keeps the report's hash; report.title is shown as text (HTML-escaped).

    python pipeline/report.py --params params.yaml
"""

from __future__ import annotations

import argparse
import html
import re
import sys
import tempfile
from pathlib import Path

from multimem.atomic import atomic_path
from multimem.params import UserError, cli_main, load_params

_STYLER_ID = re.compile(r"\bT_[0-9a-f]{5}(?![0-9a-zA-Z])")
_EXTERNAL_SCRIPT = re.compile(r"<script[^>]*\bsrc=\"https?://[^\"]*\"[^>]*>\s*</script>", re.I)


def render(notebook: Path, out_html: Path, parameters: dict, cwd: Path) -> None:
    """papermill-execute `notebook` with `parameters` (passed as data), export HTML atomically."""
    import nbformat
    import papermill
    from nbconvert import HTMLExporter

    with tempfile.TemporaryDirectory() as tmp:
        executed = Path(tmp) / notebook.name
        try:
            papermill.execute_notebook(str(notebook), str(executed), parameters=parameters, cwd=str(cwd),
                                       kernel_name="python3", progress_bar=False)
        except papermill.PapermillExecutionError as e:
            raise UserError(f"{notebook}: cell {e.exec_count} failed ({e.ename}: {' '.join(str(e.evalue).split())})")
        nb = _stable(nbformat.read(executed, as_version=4))
        exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
        page, _ = exporter.from_notebook_node(nb)
    page = _EXTERNAL_SCRIPT.sub("", page)  # figures are embedded PNGs; nothing needs a CDN
    page = _renumber_styler_ids(page)
    out_html.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_html) as tmp_html:
        Path(tmp_html).write_text(page, encoding="utf-8")


def _stable(nb):
    """The executed notebook without what differs between reruns: papermill's random id for the cell it
    injects, its timings, and stderr (warnings name the kernel's temporary files; the report is results)."""
    nb.metadata.pop("papermill", None)
    for i, cell in enumerate(nb.cells):
        if "injected-parameters" in cell.metadata.get("tags", []):
            cell.id = f"injected-parameters-{i}"
        for key in ("papermill", "execution"):
            cell.metadata.pop(key, None)
        if "outputs" in cell:
            cell.outputs = [o for o in cell.outputs if o.get("name") != "stderr"]
    return nb


def _renumber_styler_ids(page: str) -> str:
    """pandas Styler tables get a random id each render (T_<5 hex>); number them in order of appearance."""
    order: dict[str, str] = {}
    return _STYLER_ID.sub(lambda m: order.setdefault(m.group(0), f"T_{len(order):05d}"), page)


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
