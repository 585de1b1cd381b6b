"""manifest.json of a stage output directory: what was made, from what, and the sha256 of every file.

Checked by multimem.integrity.verify_manifest before a later stage reads the directory.
"""

from __future__ import annotations

from pathlib import Path

from multimem.integrity import record_manifest

MANIFEST = "manifest.json"


def write_manifest(directory: Path, fields: dict) -> dict:
    """Write directory/manifest.json (keys sorted, so it is byte-stable): `fields` plus "files" {name: sha256}
    of every other file; return it."""
    names = [p.name for p in sorted(Path(directory).iterdir()) if p.is_file() and p.name != MANIFEST]
    return record_manifest(directory, names, fields)
