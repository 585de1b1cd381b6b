"""The training loop: epochs of optimiser steps, validation, early stopping, best weights, resumable
checkpoints, dvclive curves and a final summary.

Outputs (RunPaths), written by rank 0:
    best            weights of the epoch with the lowest validation loss (safetensors)
    checkpoints/    last.pt / prev.pt: everything needed to resume, after every epoch and every
                    `checkpoint_every` optimiser steps (checkpoint.py)
    live/           dvclive: metrics.json, plots/metrics/**.tsv (one step per epoch)
    summary         train_summary.json

Resume: a rerun with the same run key continues from the newest good checkpoint: model, optimiser,
memory bank (lm protocol), RNG states, the epoch's order (a function of (seed, epoch)) and the
position in it, the epoch's running sums, early-stopping state and the per-epoch history, so on CPU
it ends bit-identical to an uninterrupted run. dvclive's files are rebuilt from that history at every start.
A checkpoint with another run key (changed parameters, data or base) is ignored with a warning.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tqdm import tqdm

from multimem.params import ParamsError, UserError
from multimem.training.batches import batch_rows, epoch_order, steps_per_epoch
from multimem.training.checkpoint import CheckpointStore, capture_rng, restore_rng
from multimem.training.ddp import (
    DistInfo,
    all_reduce_sum,
    average_shared_bank,
    barrier,
    broadcast_parameters,
    sum_gradients,
)
from multimem.training.device import PRECISIONS, autocast, make_adamw
from multimem.training.early_stopping import EarlyStopping
from multimem.training.protocols import LMProtocol, SelectionProtocol, StepResult
from multimem.atomic import write_json_atomic
from multimem.training.weights import save_weights


LOSS_REDUCTIONS = ("sum", "mean")  # train.loss_reduction (v1 sum)


class Batches(Protocol):
    def __len__(self) -> int: ...
    def batch(self, idx: np.ndarray) -> dict[str, torch.Tensor]: ...


class NonFiniteError(UserError, RuntimeError):
    """A loss or gradient became NaN/inf; training stops rather than skip the step (exit 3)."""

    exit_code = 3


@dataclass(frozen=True)
class LoopConfig:
    epochs: int
    batch_size: int  # global batch
    lr: float
    weight_decay: float
    grad_clip: float  # 0 = off
    patience: int  # 0 = no early stopping
    seed: int
    max_steps_per_epoch: int = 0  # 0 = whole epoch
    max_steps: int = 0  # optimiser steps in all, 0 = no limit
    checkpoint_every: int = 50  # optimiser steps between mid-epoch checkpoints
    run_key: str = ""  # fingerprint of everything that determines the run
    loss_reduction: str = "mean"  # backward of: mean = Σ loss / global tokens; sum = Σ loss (v1, reduction="sum")
    precision: str = "bf16"  # CUDA: bf16 autocast (+ TF32, device.configure_backend) | float32 (v1); CPU float32

    def __post_init__(self) -> None:
        if self.loss_reduction not in LOSS_REDUCTIONS:
            raise ParamsError(f"train.loss_reduction: {self.loss_reduction!r} is not allowed; "
                              f"allowed: {', '.join(LOSS_REDUCTIONS)}")
        if self.precision not in PRECISIONS:
            raise ParamsError(f"train.precision: {self.precision!r} is not allowed; allowed: {', '.join(PRECISIONS)}")


@dataclass(frozen=True)
class RunPaths:
    best: Path
    checkpoints: Path
    live: Path
    summary: Path

    @classmethod
    def under(cls, out: Path | str, best_name: str = "best.safetensors") -> "RunPaths":
        out = Path(out)
        return cls(out / best_name, out / "checkpoints", out / "live", out / "train_summary.json")


def perplexity(loss: float) -> float:
    """exp(loss), clamped at exp(700) so that it stays a finite JSON number."""
    return math.exp(min(loss, 700.0))


def ppl_text(ppl: float) -> str:
    """A perplexity for a message: 2 decimals below 1e6, else 3 significant digits (a diverged run's
    exp(700) would print as a 300-digit number)."""
    return f"{ppl:.2f}" if ppl < 1e6 else f"{ppl:.3g}"


class _Sums:
    """Token-loss sum, token count and diagnostic (sum, count) pairs of one pass."""

    def __init__(self, state: dict[str, Any] | None = None) -> None:
        state = state or {"loss_sum": 0.0, "tokens": 0.0, "stats": {}}
        self.loss_sum, self.tokens = float(state["loss_sum"]), float(state["tokens"])
        self.stats = {k: [float(s), float(c)] for k, (s, c) in state["stats"].items()}

    def add(self, loss_sum: float, tokens: float, stats: dict[str, tuple[float, float]]) -> None:
        self.loss_sum += loss_sum
        self.tokens += tokens
        for k, (s, c) in stats.items():
            acc = self.stats.setdefault(k, [0.0, 0.0])
            acc[0] += s
            acc[1] += c

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.tokens, 1.0)

    def means(self) -> dict[str, float]:
        return {k: s / c for k, (s, c) in sorted(self.stats.items()) if c > 0}

    def state_dict(self) -> dict[str, Any]:
        return {"loss_sum": self.loss_sum, "tokens": self.tokens, "stats": {k: list(v) for k, v in self.stats.items()}}


def _global(result: StepResult, info: DistInfo) -> tuple[float, float, dict]:
    """All-reduce a step's loss sum, token count and diagnostics over ranks (one collective)."""
    keys = sorted(result.stats)
    flat = [result.loss_sum.detach().double(), torch.tensor(float(result.tokens), dtype=torch.float64)]
    for k in keys:
        flat += [torch.tensor(v, dtype=torch.float64) for v in result.stats[k]]
    vec = torch.stack([t.to(result.loss_sum.device) for t in flat])
    vals = all_reduce_sum(vec, info).tolist()
    return vals[0], vals[1], {k: (vals[2 + 2 * i], vals[3 + 2 * i]) for i, k in enumerate(keys)}


class Trainer:
    """One training run (see the module docstring). `fit()` returns the summary dict."""

    def __init__(
        self,
        model: torch.nn.Module,
        protocol: LMProtocol | SelectionProtocol,
        train_data: Batches,
        val_data: Batches,
        cfg: LoopConfig,
        paths: RunPaths,
        device: torch.device = torch.device("cpu"),
        dist: DistInfo = DistInfo(),
        summary_extra: dict[str, Any] | None = None,
    ) -> None:
        self.model, self.protocol, self.cfg, self.paths = model, protocol, cfg, paths
        self.train_data, self.val_data, self.device, self.dist = train_data, val_data, device, dist
        self.summary_extra = summary_extra or {}
        model.to(device)
        self.named_params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.optimizer = make_adamw([p for _, p in self.named_params], cfg.lr, cfg.weight_decay, device)
        self.stopper = EarlyStopping(cfg.patience)
        self.store = CheckpointStore(paths.checkpoints)
        self.epoch = 0  # epochs completed
        self.step = 0  # optimiser steps done in the current epoch
        self.global_step = 0
        self.history: list[dict[str, Any]] = []
        self.sums = _Sums()
        self.order: np.ndarray | None = None  # rows of the current epoch, in the order drawn
        self.seconds = 0.0
        self.finished = False
        self.last_checkpoint: Path | None = None

    # ---- checkpoints --------------------------------------------------------------------------
    def _payload(self) -> dict[str, Any]:
        return {
            "run_key": self.cfg.run_key,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "protocol": self.protocol.state_dict(),
            "early_stopping": self.stopper.state_dict(),
            "rng": capture_rng(),
            "epoch": self.epoch,
            "step": self.step,
            "order": None if self.order is None else torch.from_numpy(self.order.astype(np.int64)),
            "global_step": self.global_step,
            "sums": self.sums.state_dict(),
            "history": self.history,
            "seconds": self.seconds,
            "finished": self.finished,
            "world_size": self.dist.world_size,
        }

    def _save_checkpoint(self, started: float) -> None:
        self.seconds += time.perf_counter() - started
        if self.dist.is_main:
            self.last_checkpoint = self.store.save(self._payload())

    def _resume(self) -> None:
        """Load the newest good checkpoint of this run key, if any (rank 0 first: it renames corrupt files)."""
        found = self.store.load_latest() if self.dist.is_main else None
        barrier(self.dist)
        if not self.dist.is_main:
            found = self.store.load_latest()
        if found is None:
            broadcast_parameters(self.model, self.dist)
            return
        state, path = found
        if state["run_key"] != self.cfg.run_key:
            msg = (f"checkpoint {path} belongs to another run (parameters, data or base changed); "
                   "starting this run from the beginning")
            warnings.warn(msg, stacklevel=2)
            print(f"WARNING: {msg}", file=sys.stderr)
            barrier(self.dist)
            if self.dist.is_main:
                self.store.clear()
            broadcast_parameters(self.model, self.dist)
            return
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.protocol.load_state_dict(state["protocol"])
        self.stopper.load_state_dict(state["early_stopping"])
        restore_rng(state["rng"])
        self.epoch, self.step, self.global_step = state["epoch"], state["step"], state["global_step"]
        self.sums = _Sums(state["sums"])
        self.order = None if state["order"] is None else state["order"].numpy()
        self.history, self.seconds, self.finished = list(state["history"]), state["seconds"], state["finished"]
        self.last_checkpoint = path
        if self.dist.is_main:
            print(f"resumed from {path} (epoch {self.epoch + 1}, step {self.step})", file=sys.stderr)

    # ---- one optimiser step -------------------------------------------------------------------
    def _where(self) -> str:
        last = self.last_checkpoint or "none written yet"
        return (f"at epoch {self.epoch + 1}, step {self.step + 1} (global step {self.global_step + 1}); "
                f"last good checkpoint: {last}")

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def _sync_bank(self, batch: dict[str, torch.Tensor]) -> None:
        bank = getattr(self.protocol, "bank", None)
        if bank is not None:
            average_shared_bank(bank, next(iter(batch.values())).shape[0], self.dist)

    def _train_step(self, batch: dict[str, torch.Tensor]) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.cfg.precision):
            result = self.protocol.step(batch, training=True)
        if self.cfg.loss_reduction == "sum":  # v1: backward of the summed token loss (gradients summed over ranks)
            result.loss_sum.backward()
        else:
            tokens = all_reduce_sum(torch.tensor([float(result.tokens)], device=self.device), self.dist)
            (result.loss_sum / tokens[0]).backward()  # mean over the GLOBAL batch's tokens
        sum_gradients((p for _, p in self.named_params), self.dist)
        self._sync_bank(batch)
        loss_sum, n_tokens, stats = _global(result, self.dist)
        if not math.isfinite(loss_sum):
            raise NonFiniteError(f"non-finite training loss ({loss_sum}) {self._where()}")
        grads = [p.grad for _, p in self.named_params if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads)
        if not torch.isfinite(norm):
            bad = [n for n, p in self.named_params if p.grad is not None and not torch.isfinite(p.grad).all()]
            raise NonFiniteError(
                f"non-finite gradient of parameter(s) {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''} "
                f"{self._where()}"
            )
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grads_with_norm_(grads, self.cfg.grad_clip, norm)
        self.optimizer.step()
        self.sums.add(loss_sum, n_tokens, stats)

    # ---- validation ---------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> _Sums:
        self.model.eval()
        self.protocol.start_epoch()
        sums = _Sums()
        order = np.arange(len(self.val_data))
        for step in range(steps_per_epoch(len(self.val_data), self.cfg.batch_size, self.dist.shard)):
            batch = self._to_device(self.val_data.batch(batch_rows(order, step, self.cfg.batch_size, self.dist.shard)))
            with autocast(self.device, self.cfg.precision):
                result = self.protocol.step(batch, training=False)
            self._sync_bank(batch)
            sums.add(*_global(result, self.dist))
        self.model.train()
        return sums

    # ---- epochs -------------------------------------------------------------------------------
    def _end_epoch(self, started: float) -> None:
        val = self.validate()
        if not math.isfinite(val.loss):
            raise NonFiniteError(f"non-finite validation loss ({val.loss}) after epoch {self.epoch + 1}; "
                                 f"last good checkpoint: {self.last_checkpoint or 'none written yet'}")
        record: dict[str, Any] = {
            "epoch": self.epoch + 1,
            "steps": self.global_step,
            "lr": self.optimizer.param_groups[0]["lr"],
            "train/loss": self.sums.loss,
            "train/ppl": perplexity(self.sums.loss),
            "val/loss": val.loss,
            "val/ppl": perplexity(val.loss),
        }
        train_stats, val_stats = self.sums.means(), val.means()
        record.update({f"train/memory/{k}": v for k, v in train_stats.items() if k != "gate"})
        record.update({f"val/memory/{k}": v for k, v in val_stats.items() if k not in ("gate", "acc")})
        if "acc" in val_stats:  # accuracy of the scored tokens (recall: value accuracy)
            record["val/acc"] = val_stats["acc"]
        if "gate" in val_stats:
            record["memory/gate"] = val_stats["gate"]
        self.history.append(record)
        improved = self.stopper.step(self.epoch + 1, val.loss)
        if improved and self.dist.is_main:
            save_weights(self.model, self.paths.best, {"epoch": str(self.epoch + 1)})
        out_of_steps = self.cfg.max_steps > 0 and self.global_step >= self.cfg.max_steps
        self.epoch += 1
        self.step = 0
        self.sums = _Sums()
        self.finished = self.stopper.should_stop or self.epoch >= self.cfg.epochs or out_of_steps
        self._save_checkpoint(started)
        if self.dist.is_main:
            tqdm.write(
                f"epoch {record['epoch']}: train loss {record['train/loss']:.4f} "
                f"(ppl {ppl_text(record['train/ppl'])}), "
                f"val loss {record['val/loss']:.4f} (ppl {ppl_text(record['val/ppl'])}){' *' if improved else ''}"
            )

    def _run_epoch(self) -> None:
        started = time.perf_counter()
        n = steps_per_epoch(len(self.train_data), self.cfg.batch_size, self.dist.shard, self.cfg.max_steps_per_epoch)
        if self.cfg.max_steps > 0:
            n = min(n, self.step + self.cfg.max_steps - self.global_step)
        if self.step == 0 or self.order is None:
            self.order = epoch_order(len(self.train_data), self.cfg.seed, self.epoch)
        if self.step == 0:
            self.protocol.start_epoch()
        self.model.train()
        bar = tqdm(total=n, initial=self.step, desc=f"epoch {self.epoch + 1}", leave=False,
                   disable=None if self.dist.is_main else True)
        while self.step < n:
            rows = batch_rows(self.order, self.step, self.cfg.batch_size, self.dist.shard)
            self._train_step(self._to_device(self.train_data.batch(rows)))
            self.step += 1
            self.global_step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{self.sums.loss:.4f}")
            if self.step < n and self.global_step % self.cfg.checkpoint_every == 0:
                self._save_checkpoint(started)
                started = time.perf_counter()
        bar.close()
        self._end_epoch(started)

    def fit(self) -> dict[str, Any]:
        """Train (or resume) to the end; write the summary; return it."""
        self._resume()
        live = self._open_live()
        while not self.finished:
            self._run_epoch()
            if live is not None:
                self._log_epoch(live, self.history[-1])
        if live is not None:
            live.end()
        summary = self.summary()
        if self.dist.is_main:
            write_json_atomic(self.paths.summary, summary)
        barrier(self.dist)
        return summary

    # ---- outputs ------------------------------------------------------------------------------
    def _open_live(self):
        if not self.dist.is_main:
            return None
        from dvclive import Live

        live = Live(str(self.paths.live), dvcyaml=None, save_dvc_exp=False)
        for record in self.history:  # rebuild the curves of the epochs done before a resume
            self._log_epoch(live, record)
        return live

    @staticmethod
    def _log_epoch(live, record: dict[str, Any]) -> None:
        for key, value in record.items():
            if key != "epoch":
                live.log_metric(key, value)
        live.next_step()

    def summary(self) -> dict[str, Any]:
        best = self.stopper.best_epoch
        return {
            "best_epoch": best,
            "best_val_loss": self.stopper.best,
            "best_val_ppl": perplexity(self.stopper.best),
            "best_val_acc": next((r.get("val/acc") for r in self.history if r["epoch"] == best), None),
            "epochs_run": self.epoch,
            "stopped_early": self.stopper.should_stop,
            "steps": self.global_step,
            "params": sum(p.numel() for p in self.model.parameters()),
            "seconds": round(self.seconds, 3),
            "world_size": self.dist.world_size,
            "history": self.history,
            **self.summary_extra,
        }
