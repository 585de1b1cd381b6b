"""A train run directory, models/<variant>/seed<k>/ (written by multimem.training.runs.train):

    config.json         {"model": ModelConfig.to_dict(), "variant", "seed", "protocol", "base", ...}
    best.safetensors    state dict of the best-validation epoch
    train_summary.json  best epoch, history (one record per epoch), ... (absent while training runs)
    live/               dvclive: metrics.json, plots/metrics/**.tsv
    manifest.json       written last: run key and sha256 of the three files above (the run finished)

The initial model of a run is rebuilt exactly as training built it: seed everything with the run's
seed, construct TransformerLM(cfg) (the variant-only parameters, landmark and gate, drawn from that
seed), then copy the base LM's weights in (multimem.training.base_init.init_from_base).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from safetensors.torch import load_file

from multimem.model.config import ModelConfig
from multimem.model.transformer import TransformerLM
from multimem.integrity import verify_manifest
from multimem.params import UserError
from multimem.training.base_init import init_from_base
from multimem.training.device import seed_everything
from multimem.training.loop import RunPaths
from multimem.training.runs import damaged_run_hint
from multimem.training.weights import CONFIG, WEIGHTS, load_model_files


MANIFEST = "manifest.json"  # written last by train: the run finished


class RunError(UserError, ValueError):
    """A run directory that cannot be evaluated (unreadable config, weights of another shape)."""


@dataclass(frozen=True)
class Run:
    """One trained (variant, seed) and the files of its directory."""

    variant: str
    seed: int
    path: Path

    @property
    def files(self) -> RunPaths:
        return RunPaths.under(self.path)

    @property
    def name(self) -> str:
        return f"{self.variant}-seed{self.seed}"

    def config(self) -> ModelConfig:
        """The ModelConfig the run trained (config.json's "model", or config.json itself)."""
        try:
            info = json.loads((self.path / CONFIG).read_text(encoding="utf-8"))
            return ModelConfig.from_dict(info.get("model", info))
        except (OSError, ValueError, TypeError) as err:
            raise RunError(f"{self.path / CONFIG}: not a model config ({err}); rerun stage train") from None

    def summary(self) -> dict[str, Any] | None:
        """train_summary.json, or None while the run has not finished."""
        path = self.files.summary
        try:
            return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
        except (OSError, ValueError) as err:
            raise RunError(f"{path} is unreadable ({err}); {damaged_run_hint(self.path)}") from None


def find_runs(models: Path | str, variants: Sequence[str], seeds: Sequence[int]) -> tuple[list[Run], list[str]]:
    """Finished runs of variants × seeds (in that order): manifest.json (written last by train) present, and
    every file it lists present and intact, else IntegrityError; and the names (<variant>-seed<k>) of the
    unfinished or missing ones (no manifest.json)."""
    found, missing = [], []
    for variant in variants:
        for seed in seeds:
            run = Run(variant, int(seed), Path(models) / variant / f"seed{seed}")
            ok = (run.path / MANIFEST).is_file()
            if ok:
                verify_manifest(run.path, hint=damaged_run_hint(run.path))
            (found if ok else missing).append(run if ok else run.name)
    return found, missing


def load_trained(run: Run) -> TransformerLM:
    """The run's best weights in a TransformerLM of its config (CPU, eval mode)."""
    model = TransformerLM(run.config())
    try:
        model.load_state_dict(load_file(str(run.files.best)))
    except RuntimeError as err:
        raise RunError(f"{run.files.best} does not fit {run.path / CONFIG}: {err}") from None
    return model.eval()


def initial_model(cfg: ModelConfig, seed: int, base: Path | str, weights: str = WEIGHTS) -> TransformerLM:
    """The model a train run of `cfg` and `seed` started from (CPU, eval mode); see the module docstring.
    `base`/`weights`: models/base + model.safetensors, or the oracle start models/start/seed<k> +
    best.safetensors (train.init_from: oracle).

    Reseeds python, numpy's global state and torch with `seed`, as training does."""
    base_state, base_cfg, _ = load_model_files(base, weights)
    seed_everything(seed)
    model = TransformerLM(cfg)
    init_from_base(model, base_state, base_cfg)
    return model.eval()

