"""manifest.json of a stage output directory: what was made, from what, and the sha256 of every file.

Checked by multimem.integrity.verify_manifest before a later stage reads the directory.
"""

from __future__ import annotations

import json
from pathlib import Path

from multimem.integrity import sha256_file

MANIFEST = "manifest.json"


def write_manifest(directory: Path, fields: dict) -> dict:
    """Write directory/manifest.json (keys sorted, so it is byte-stable): `fields` plus "files" {name: sha256}
    of every other file; return it."""
    files = {p.name: sha256_file(p) for p in sorted(directory.iterdir()) if p.is_file() and p.name != MANIFEST}
    manifest = {**fields, "files": files}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return manifest
