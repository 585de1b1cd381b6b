"""Render a report notebook: papermill-execute it with parameters, export self-contained HTML whose bytes
depend only on the results (the injected parameters cell gets a fixed id, papermill's timings and stderr
are dropped, pandas Styler ids are renumbered, no external script is linked)."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from multimem.atomic import atomic_path
from multimem.params import UserError

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
