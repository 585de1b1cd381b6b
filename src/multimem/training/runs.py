"""The pretrain and train stages, from validated params to their outputs.

pretrain (params `pretrain`; optimiser settings weight_decay, grad_clip, threads, device from `train`)
    init scratch       a seeded random all-Pythia TransformerLM (memory_layer None), not trained (v1)
    init pretrain      the same, trained on data/prepared/lm_train.npy (val: lm_val.npy)
    init hf:<ref>      multimem.model.hf_import.load_gpt_neox(ref), fine-tuned when pretrain.epochs > 0
    -> models/base/ model.safetensors (best val epoch), config.json, metrics.json, manifest.json
       (+ checkpoints/, live/, train_summary.json when trained)
train (params `train`, one run per --variant and --seed)
    the variant (ModelConfig.from_params(model, landmark=variant)) initialised from models/base
    (base_init.py), trained by protocol lm or selection (protocols.py)
    -> models/<variant>/seed<k>/ best.safetensors, config.json, checkpoints/, live/, train_summary.json
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from multimem.atomic import write_json_atomic
from multimem.model.config import ModelConfig
from multimem.integrity import sha256_file, verify_manifest
from multimem.model.transformer import TransformerLM
from multimem.training.base_init import init_from_base
from multimem.training.batches import LMChunks, SelectionExamples
from multimem.training.ddp import DistInfo, destroy_process_group, env_dist_info, init_process_group
from multimem.training.device import configure_backend, resolve_device, seed_everything
from multimem.training.loop import LoopConfig, RunPaths, Trainer
from multimem.training.protocols import LMProtocol, make_protocol
from multimem.training.weights import CONFIG, WEIGHTS, load_model_files, save_weights

CHECKPOINT_EVERY = 50  # optimiser steps between mid-epoch checkpoints
RUN_INDEPENDENT = ("variants", "seeds", "threads", "device")  # train.* keys that do not define a run


def run_key(settings: dict[str, Any], inputs: dict[str, str]) -> str:
    """sha256 of the settings and the input files' digests: a checkpoint resumes only the same run."""
    blob = json.dumps({"settings": settings, "inputs": inputs}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _start(train: dict[str, Any], seed: int) -> tuple[torch.device, DistInfo]:
    """Device, backend settings, process group (under torchrun) and seeds of a run."""
    dist = env_dist_info()
    device = resolve_device(train["device"], dist.local_rank)
    configure_backend(device, train["threads"])
    init_process_group(dist, device)
    seed_everything(seed)
    return device, dist


def _input_digests(folder: Path, names: list[str]) -> dict[str, str]:
    """Check `folder` against its manifest.json; the sha256 of `names` as recorded there."""
    files = verify_manifest(folder)["files"]
    return {f"{folder.name}/{n}": files[n] for n in names}


def pretrain(
    params: dict[str, Any],
    prepared: Path | str = "data/prepared",
    out: Path | str = "models/base",
    checkpoint_every: int = CHECKPOINT_EVERY,
) -> dict[str, Any]:
    """The pretrain stage; returns the metrics written to out/metrics.json."""
    p, t = params["pretrain"], params["train"]
    prepared, out = Path(prepared), Path(out)
    device, dist = _start(t, p["seed"])
    try:
        init = p["init"]
        if init.startswith("hf:"):
            from multimem.model.hf_import import load_gpt_neox

            model = load_gpt_neox(init[3:])
        else:
            model = TransformerLM(ModelConfig.from_params(params["model"]).replace(memory_layer=None))
        metrics: dict[str, Any] = {"init": init, "params": model.num_parameters(), "trained": False}
        if init != "scratch" and p["epochs"] > 0:
            names = ["lm_train.npy", "lm_val.npy"]
            settings = {"stage": "pretrain", "pretrain": p, "model": model.cfg.to_dict(),
                        "weight_decay": t["weight_decay"], "grad_clip": t["grad_clip"]}
            cfg = LoopConfig(
                epochs=p["epochs"], batch_size=p["batch_size"], lr=p["lr"], weight_decay=t["weight_decay"],
                grad_clip=t["grad_clip"], patience=0, seed=p["seed"], max_steps=p["max_steps"],
                checkpoint_every=checkpoint_every, run_key=run_key(settings, _input_digests(prepared, names)),
            )
            model.to(device)
            trainer = Trainer(
                model, LMProtocol(model), LMChunks.load(prepared / names[0]), LMChunks.load(prepared / names[1]),
                cfg, RunPaths.under(out, best_name=WEIGHTS), device, dist, {"init": init},
            )
            summary = trainer.fit()
            metrics.update({k: summary[k] for k in ("best_epoch", "best_val_loss", "best_val_ppl", "epochs_run",
                                                    "steps", "seconds")}, trained=True)
        elif dist.is_main:
            save_weights(model, out / WEIGHTS)
        if dist.is_main:
            write_json_atomic(out / CONFIG, {"model": model.cfg.to_dict(), "init": init, "seed": p["seed"]})
            write_json_atomic(out / "metrics.json", metrics)
            files = {n: sha256_file(out / n) for n in (WEIGHTS, CONFIG, "metrics.json")}
            write_json_atomic(out / "manifest.json", {"stage": "pretrain", "files": files})
        return metrics
    finally:
        destroy_process_group(dist)


def train(
    params: dict[str, Any],
    variant: str,
    seed: int,
    data: Path | str = "data",
    base: Path | str = "models/base",
    models: Path | str = "models",
    checkpoint_every: int = CHECKPOINT_EVERY,
) -> dict[str, Any]:
    """One train run (variant, seed); returns train_summary.json's content."""
    t = params["train"]
    data, base = Path(data), Path(base)
    out = Path(models) / variant / f"seed{seed}"
    device, dist = _start(t, seed)
    try:
        cfg = ModelConfig.from_params(params["model"], landmark=variant)
        model = TransformerLM(cfg)  # variant-only parameters (gate, landmark) drawn from the run's seed
        base_digests = _input_digests(base, [WEIGHTS, CONFIG])
        base_state, base_cfg, base_info = load_model_files(base)
        done = init_from_base(model, base_state, base_cfg)
        model.to(device)
        if t["protocol"] == "lm":
            folder, names = data / "prepared", ["lm_train.npy", "lm_val.npy"]
            train_data, val_data = (LMChunks.load(folder / n) for n in names)
        else:
            folder, names = data / "memories", ["selection_train.npz", "selection_val.npz"]
            train_data, val_data = (SelectionExamples.load(folder / n) for n in names)
        inputs = {**_input_digests(folder, names), **base_digests}
        protocol = make_protocol(t["protocol"], model, t["eval_memory"], t["write_grad"])
        # threads and device are left out: a run may resume on another machine
        settings = {"stage": "train", "train": {k: v for k, v in t.items() if k not in RUN_INDEPENDENT},
                    "model": cfg.to_dict(), "variant": variant, "seed": seed}
        loop = LoopConfig(
            epochs=t["epochs"], batch_size=t["batch_size"], lr=t["lr"], weight_decay=t["weight_decay"],
            grad_clip=t["grad_clip"], patience=t["patience"], seed=seed,
            max_steps_per_epoch=t["max_steps_per_epoch"], checkpoint_every=checkpoint_every,
            run_key=run_key(settings, inputs),
        )
        if dist.is_main:
            write_json_atomic(out / CONFIG, {
                "model": cfg.to_dict(), "variant": variant, "seed": seed, "protocol": t["protocol"],
                "base": base_info, "from_base": {"copied": len(done.copied), "from_attention": done.from_attention,
                                                 "kept": done.kept},
            })
        extra = {"variant": variant, "seed": seed, "protocol": t["protocol"]}
        return Trainer(model, protocol, train_data, val_data, loop, RunPaths.under(out), device, dist, extra).fit()
    finally:
        destroy_process_group(dist)
