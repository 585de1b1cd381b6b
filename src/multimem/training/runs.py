"""The pretrain and train stages, from validated params to their outputs.

pretrain (params `pretrain`; optimiser settings weight_decay, grad_clip, threads, device, precision from `train`)
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

from multimem.atomic import lock_folder, write_json_atomic
from multimem.model.config import ModelConfig
from multimem.integrity import IntegrityError, record_manifest, sha256_file, verify_manifest
from multimem.params import UserError
from multimem.model.transformer import TransformerLM
from multimem.training.base_init import init_from_base
from multimem.training.batches import DataFormatError, LMChunks, SelectionExamples, steps_per_epoch
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
    configure_backend(device, train["threads"], train["precision"])
    init_process_group(dist, device)
    seed_everything(seed)
    return device, dist


def _input_digests(folder: Path, names: list[str], built_with: tuple[str, dict] | None = None) -> dict[str, str]:
    """Check `folder` against its manifest.json (and, if given, that it was built with the params section
    `built_with` = (name, values) now in params.yaml); the sha256 of `names` as recorded there."""
    manifest = verify_manifest(folder)
    recorded = manifest.get("params", {}).get(built_with[0]) if built_with else None
    if recorded is not None and recorded != built_with[1]:
        changed = sorted(k for k in {**recorded, **built_with[1]} if recorded.get(k) != built_with[1].get(k))
        raise IntegrityError(f"{folder} was built with other `{built_with[0]}` parameters than params.yaml has "
                             f"({', '.join(changed)}); rerun stage {manifest.get('stage', 'that writes it')} first")
    return {f"{folder.name}/{n}": manifest["files"][n] for n in names}


def _nonempty(*datasets: LMChunks | SelectionExamples) -> None:
    """DataFormatError unless every dataset has a row (an empty split would score as loss 0, perplexity 1)."""
    for d in datasets:
        if len(d) == 0:
            raise DataFormatError(f"{d.path} holds no examples; training needs at least 1 in each split "
                                  "(rerun the stage that writes it with more data)")


def damaged_run_hint(out: Path) -> str:
    """What to do about a finished run folder whose files no longer match its manifest.json."""
    return f"restore it (`dvc checkout --force {out}`) or delete {out}/ and rerun its train stage"


def _finished(out: Path, key: str) -> dict[str, Any] | None:
    """train_summary.json of the run in `out` if it already finished with run key `key` and its files still
    match its manifest.json; None if it did not (a new run, or one to resume). IntegrityError if damaged."""
    path, fix = out / "manifest.json", damaged_run_hint(out)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise IntegrityError(f"{path} is unreadable ({e}); {fix}") from None
    if not isinstance(manifest, dict) or manifest.get("run_key") != key:
        return None
    verify_manifest(out, hint=fix)
    return json.loads((out / "train_summary.json").read_text(encoding="utf-8"))


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
    lock = None
    try:
        init = p["init"]
        if init.startswith("hf:"):
            model = _load_hf(init)
        else:
            model = TransformerLM(ModelConfig.from_params(params["model"]).replace(memory_layer=None))
        metrics: dict[str, Any] = {"init": init, "params": model.num_parameters(), "trained": False}
        if init != "scratch" and p["epochs"] > 0:
            names = ["lm_train.npy", "lm_val.npy"]
            settings = {"stage": "pretrain", "pretrain": p, "model": model.cfg.to_dict(),
                        "weight_decay": t["weight_decay"], "grad_clip": t["grad_clip"], "precision": t["precision"]}
            cfg = LoopConfig(
                epochs=p["epochs"], batch_size=p["batch_size"], lr=p["lr"], weight_decay=t["weight_decay"],
                grad_clip=t["grad_clip"], patience=0, seed=p["seed"], max_steps=p["max_steps"],
                checkpoint_every=checkpoint_every, run_key=run_key(settings, _input_digests(prepared, names)),
                precision=t["precision"],  # loss_reduction: mean (train.loss_reduction is the train stage's)
            )
            lm_train, lm_val = (LMChunks.load(prepared / n) for n in names)
            _nonempty(lm_train, lm_val)
            lock = lock_folder(out) if dist.is_main else None
            model.to(device)
            trainer = Trainer(model, LMProtocol(model), lm_train, lm_val, cfg, RunPaths.under(out, best_name=WEIGHTS),
                              device, dist, {"init": init})
            summary = trainer.fit()
            metrics.update({k: summary[k] for k in ("best_epoch", "best_val_loss", "best_val_ppl", "epochs_run",
                                                    "steps", "seconds")}, trained=True)
        elif dist.is_main:
            save_weights(model, out / WEIGHTS)
        if dist.is_main:
            write_json_atomic(out / CONFIG, {"model": model.cfg.to_dict(), "init": init, "seed": p["seed"]})
            write_json_atomic(out / "metrics.json", metrics)
            record_manifest(out, [WEIGHTS, CONFIG, "metrics.json"], {"stage": "pretrain"})
        return metrics
    finally:
        if lock is not None:
            lock.close()
        destroy_process_group(dist)


def _load_hf(init: str) -> TransformerLM:
    """pretrain.init hf:<ref> loaded; a UserError naming it if transformers or safetensors cannot load it."""
    from multimem.model.hf_import import load_gpt_neox

    try:
        return load_gpt_neox(init[3:])
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - transformers and safetensors raise many kinds for a bad checkpoint
        first = " ".join(str(e).split())[:300]
        raise UserError(f"pretrain.init: {init!r} cannot be loaded ({type(e).__name__}: {first}); allowed: a GPT-NeoX "
                        "checkpoint (config.json and complete *.safetensors weights) or a hub id") from None


START = "start.json"


def _task_data(params: dict[str, Any], data: Path) -> tuple[dict[str, str], Any, Any]:
    """(input digests, train data, val data) of train.protocol: the files are checked against their manifest
    (and the params they were built with) before they are loaded, and neither split may be empty."""
    if params["train"]["protocol"] == "lm":
        folder, names, kind, section = data / "prepared", ["lm_train.npy", "lm_val.npy"], LMChunks, "data"
    else:
        folder, names = data / "memories", ["selection_train.npz", "selection_val.npz"]
        kind, section = SelectionExamples, "memories"
    digests = _input_digests(folder, names, (section, params[section]))
    train_data, val_data = (kind.load(folder / n) for n in names)
    _nonempty(train_data, val_data)
    return digests, train_data, val_data


def _fit(params: dict[str, Any], variant: str, seed: int, data: Path, init: Path, init_weights: str,
         out: Path, checkpoint_every: int, start_run: bool = False) -> dict[str, Any]:
    """Train `variant` for `seed` from the model in `init` (the base, or the oracle start) into `out`."""
    t = params["train"]
    device, dist = _start(t, seed)
    lock = None
    try:
        cfg = ModelConfig.from_params(params["model"], landmark=variant)
        model = TransformerLM(cfg)  # variant-only parameters (gate, landmark) drawn from the run's seed
        init_digests = _input_digests(init, [init_weights, CONFIG])
        init_state, init_cfg, init_info = load_model_files(init, init_weights)
        done = init_from_base(model, init_state, init_cfg)
        model.to(device)
        digests, train_data, val_data = _task_data(params, data)
        inputs = {**digests, **init_digests}
        protocol = make_protocol(t["protocol"], model, t["eval_memory"], t["write_grad"])
        # threads and device are left out: a run may resume on another machine
        settings = {"stage": "start" if start_run else "train",
                    "train": {k: v for k, v in t.items() if k not in RUN_INDEPENDENT},
                    "model": cfg.to_dict(), "variant": variant, "seed": seed}
        steps = t["start_steps"] if start_run else 0
        per_epoch = t["max_steps_per_epoch"] or steps_per_epoch(len(train_data), t["batch_size"])
        loop = LoopConfig(
            epochs=-(-steps // per_epoch) if start_run else t["epochs"], batch_size=t["batch_size"], lr=t["lr"],
            weight_decay=t["weight_decay"], grad_clip=t["grad_clip"], patience=0 if start_run else t["patience"],
            seed=seed, max_steps_per_epoch=t["max_steps_per_epoch"], max_steps=steps,
            checkpoint_every=checkpoint_every, run_key=run_key(settings, inputs),
            loss_reduction=t["loss_reduction"], precision=t["precision"],  # v1: sum, float32
        )
        # every input check is done: from here on the run folder is this process's, and is written
        lock = lock_folder(out) if dist.is_main else None
        done_before = _finished(out, loop.run_key)
        if done_before is not None:  # finished with these settings and inputs, files intact: nothing to do
            return done_before
        if dist.is_main:
            (out / "manifest.json").unlink(missing_ok=True)  # another run's record; this one is not finished
            write_json_atomic(out / CONFIG, {
                "model": cfg.to_dict(), "variant": variant, "seed": seed, "protocol": t["protocol"],
                "init": {"from": str(init), **init_info},
                "from_init": {"copied": len(done.copied), "from_attention": done.from_attention, "kept": done.kept},
            })
        extra = {"variant": variant, "seed": seed, "protocol": t["protocol"]}
        summary = Trainer(model, protocol, train_data, val_data, loop, RunPaths.under(out), device, dist, extra).fit()
        if dist.is_main:  # written last: the run folder is finished (checked by evaluate and by a rerun)
            record_manifest(out, [RunPaths.under(out).best.name, CONFIG, RunPaths.under(out).summary.name],
                            {"stage": "start" if start_run else "train", "run_key": loop.run_key})
        return summary
    finally:
        if lock is not None:
            lock.close()
        destroy_process_group(dist)


def start(
    params: dict[str, Any],
    seed: int,
    data: Path | str = "data",
    base: Path | str = "models/base",
    models: Path | str = "models",
    checkpoint_every: int = CHECKPOINT_EVERY,
) -> dict[str, Any]:
    """Stage start: where every variant of `seed` begins (train.init_from) -> models/start/seed<k>/start.json.

    base    nothing to train: the variants start from models/base.
    oracle  the oracle variant (true-slot routing) trained from the base for train.start_steps steps, so
            the memory layer learns to store and read before a landmark has to learn to route; its best
            validation accuracy on the scored tokens must reach train.oracle_gate ("converged"), else
            every variant of this seed is reported as failed instead of trained."""
    t = params["train"]
    out = Path(models) / "start" / f"seed{seed}"
    info: dict[str, Any] = {"init_from": t["init_from"], "seed": seed}
    if t["init_from"] == "oracle":
        summary = _fit(params, "oracle", seed, Path(data), Path(base), WEIGHTS, out, checkpoint_every, start_run=True)
        acc = summary.get("best_val_acc")
        info.update(converged=acc is not None and acc >= t["oracle_gate"], best_val_acc=acc,
                    gate=t["oracle_gate"], steps=summary["steps"], best_epoch=summary["best_epoch"])
    else:
        info["converged"] = True
    write_json_atomic(out / START, info)
    fields: dict[str, Any] = {"stage": "start"}
    names = [START]
    if t["init_from"] == "oracle":  # keep the run key of the oracle run, so a rerun finds it finished
        fields["run_key"] = json.loads((out / "manifest.json").read_text(encoding="utf-8")).get("run_key")
        names += ["best.safetensors", CONFIG, "train_summary.json"]
    record_manifest(out, names, fields)
    return info


def start_failure(start_dir: Path) -> str | None:
    """Why the start in `start_dir` cannot be used (None when it can)."""
    path = start_dir / START
    if not path.is_file():
        return f"{path} is missing; run stage start first (`python pipeline/start.py --seed K`)"
    info = json.loads(path.read_text(encoding="utf-8"))
    if not info.get("converged"):
        return (f"the oracle start of seed {info.get('seed')} did not converge: best validation accuracy "
                f"{info.get('best_val_acc')} < train.oracle_gate {info.get('gate')} ({path})")
    return None


def train(
    params: dict[str, Any],
    variant: str,
    seed: int,
    data: Path | str = "data",
    base: Path | str = "models/base",
    models: Path | str = "models",
    checkpoint_every: int = CHECKPOINT_EVERY,
) -> dict[str, Any]:
    """One train run (variant, seed) from train.init_from; returns train_summary.json's content. A seed whose
    oracle start failed its gate gets a summary {"failed": reason} and no weights."""
    out = Path(models) / variant / f"seed{seed}"
    if params["train"]["init_from"] == "oracle":
        start_dir = Path(models) / "start" / f"seed{seed}"
        reason = start_failure(start_dir)
        if reason is not None:
            summary = {"variant": variant, "seed": seed, "failed": reason}
            write_json_atomic(out / "train_summary.json", summary)
            record_manifest(out, ["train_summary.json"], {"stage": "train", "failed": reason})
            print(f"not trained: {reason}")
            return summary
        return _fit(params, variant, seed, Path(data), start_dir, "best.safetensors", out, checkpoint_every)
    return _fit(params, variant, seed, Path(data), Path(base), WEIGHTS, out, checkpoint_every)
