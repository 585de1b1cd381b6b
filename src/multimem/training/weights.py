"""Model files: safetensors weights (written atomically) beside a config.json {"model": ModelConfig, ...}.

    models/base/                model.safetensors + config.json   (pretrain)
    models/<variant>/seed<k>/   best.safetensors + config.json    (train)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from multimem.atomic import atomic_path
from multimem.model.config import ModelConfig
from multimem.integrity import IntegrityError

WEIGHTS, CONFIG = "model.safetensors", "config.json"


def save_weights(model: torch.nn.Module, path: Path | str, metadata: dict[str, str] | None = None) -> Path:
    """The model's state dict as safetensors (CPU, contiguous)."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return Path(path)


def load_weights(path: Path | str) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def load_model_files(
    folder: Path | str, weights: str = WEIGHTS, stage: str = "pretrain"
) -> tuple[dict[str, torch.Tensor], ModelConfig, dict[str, Any]]:
    """(state dict, ModelConfig, the rest of config.json) of models/base (weights model.safetensors)
    or of a train run models/<variant>/seed<k> (weights="best.safetensors", stage="train")."""
    folder = Path(folder)
    for name in (weights, CONFIG):
        if not (folder / name).exists():
            raise IntegrityError(f"{folder / name} is missing; rerun stage {stage} (`python pipeline/{stage}.py`)")
    info = json.loads((folder / CONFIG).read_text())
    cfg = ModelConfig.from_dict(info.pop("model"))
    return load_weights(folder / weights), cfg, info
