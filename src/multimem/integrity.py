"""File integrity: sha256 digests and the check of a stage directory against its manifest.json.

A manifest maps each output file (path relative to the directory) to its sha256:
    {"files": {"documents.npz": "3f5a...", "tokenizer.json": "9bc1..."}, ...}
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path, PurePosixPath

from multimem.atomic import write_json_atomic
from multimem.params import UserError

# stage that writes each output directory (by directory name), for "rerun <stage>" hints
STAGE_OF_DIR = {"prepared": "prepare", "memories": "build_memories", "base": "pretrain"}


class IntegrityError(UserError):
    """A stage output is missing or differs from the sha256 its manifest records."""


def sha256_file(path: str | Path, block_size: int = 1 << 20) -> str:
    """Hex sha256 of the file at `path`, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(block_size), b""):
            digest.update(block)
    return digest.hexdigest()


def record_manifest(directory: str | Path, names: list[str], fields: dict) -> dict:
    """Write directory/manifest.json atomically: `fields` plus "files" {name: sha256} of the files `names`
    (written last, it marks the directory finished); return it. IntegrityError if one of them is missing."""
    directory = Path(directory)
    missing = [n for n in names if not (directory / n).is_file()]
    if missing:
        raise IntegrityError(f"{directory / missing[0]} is missing, so {directory} cannot be recorded as finished; "
                             f"{_rerun(fields.get('stage'), directory)}")
    manifest = {**fields, "files": {n: sha256_file(directory / n) for n in names}}
    write_json_atomic(directory / "manifest.json", manifest)
    return manifest


def verify_manifest(directory: str | Path, manifest_name: str = "manifest.json", stage: str | None = None,
                    hint: str | None = None) -> dict:
    """Check every file in manifest["files"] exists under `directory` with the recorded sha256.

    Returns the manifest. Raises IntegrityError listing each missing or changed file and what to do:
    `hint`, else rerun `stage`, else manifest["stage"], else the stage writing a directory of that name.
    """
    directory = Path(directory)
    path = directory / manifest_name
    guess = stage or STAGE_OF_DIR.get(directory.name)
    fix = (lambda _: hint) if hint else (lambda s: _rerun(s, directory))  # noqa: E731
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IntegrityError(f"{path} is missing; {fix(guess)}") from None
    except (OSError, ValueError) as e:
        raise IntegrityError(f"{path} is unreadable ({e}); {fix(guess)}") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict):
        raise IntegrityError(f"{path} has no \"files\" mapping; {fix(guess)}")
    recorded = manifest.get("stage")
    stage = stage or (recorded if isinstance(recorded, str) and recorded else guess)
    problems = []
    for rel, expected in sorted(files.items()):
        rel_path = PurePosixPath(rel)
        if rel_path.is_absolute() or ".." in rel_path.parts:
            problems.append(f"{rel!r} in {path} points outside {directory}")
            continue
        file = directory / rel_path
        if not file.is_file():
            problems.append(f"{file} is missing")
        elif (actual := sha256_file(file)) != expected:
            problems.append(f"{file} was changed or corrupted "
                            f"(sha256 {actual[:12]}..., manifest {str(expected)[:12]}...)")
    if problems:
        if len(problems) == 1:
            raise IntegrityError(f"{problems[0]}; {fix(stage)}")
        listed = "".join(f"\n  - {p}" for p in problems)
        raise IntegrityError(f"{len(problems)} files do not match {path}:{listed}\n{fix(stage)}")
    return manifest


def _rerun(stage: str | None, directory: Path) -> str:
    if stage is None:
        return f"rerun the stage that writes {directory}"
    return f"rerun stage {stage} (`dvc repro {stage}`)"
