"""Training-step benchmark: the project's computation against v1's, side by side in one run.

    python -m multimem.bench [--quick] [--json out.json] [--configs op small-4 ...] [--device auto|cpu|cuda]
                             [--threads 2] [--steps 5] [--warmup 2] [--rounds 1] [--chunk-size 64]
                             [--compile] [--peak-tflops 989]

Configurations (`--configs`, default all):
    op           causal linear attention alone, B8 H8 S256 d64, forward+backward:
                 chunked (project) vs the materialised B×H×S×d×d running sum (v1)
    small-4      vocab 8192, hidden 128, 2 layers, 4 heads, FFN 512, B8 S256, 4 memories
    small-16     the same with 16 memories
    small-floor  the same model with a plain Pythia layer in place of the memory layer
    70m          v1's 70M configuration (ModelConfig() defaults), B8 S256, 4 memories
    70m-floor    the same with a plain Pythia layer
Paths: `project` (multimem_layer.MultiMemoryLayer), `reference` (reference_v1, v1's computation,
same weights), `floor` (memory_layer=None). Model configurations run v1's LM protocol: one bank
shared by the batch, update_memory=True (round-robin write after the read), AdamW lr 1e-4.
`--quick` is a smoke run: tiny shapes, 1 warm-up and 2 timed steps.

A step is forward + backward + AdamW step (the op: forward + backward). Reported: tokens/s and
step ms from the median of the timed steps after the warm-up steps; peak memory — CPU: the
high-water mark of resident memory (VmHWM) minus the resident memory before the model (or the op's
inputs) was built, after one step at a tiny shape has loaded the libraries, each configuration in a
fresh subprocess; CUDA: torch.cuda.max_memory_allocated.
CUDA runs use bf16 autocast, TF32 and fused AdamW (multimem.training.device); CPU runs float32,
deterministic algorithms, a fixed thread count.

Model FLOPs utilisation (CUDA, or CPU with --peak-tflops) = FLOPs per step / step time / peak, with

    FLOPs/step = 6·P·T                        P parameters except the input embedding (a lookup), T = B·S
               + 12·L_s·D·S·T                 softmax attention, L_s Pythia layers (QKᵀ and AV, full S×S)
               + 12·D·d·T + 6·N·D·d·T         memory layer: linear-attention state (write and read d×d per
                                              head and token) and N memory readouts, d = D/H

(forward 1/3, backward 2/3 of each term; the op alone counts 12·H·S·d²·B, its state term.)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any

import torch

SMALL = dict(vocab_size=8192, hidden=128, layers=2, heads=4, ffn=512)
QUICK_SMALL = dict(vocab_size=256, hidden=32, layers=2, heads=4, ffn=64)
QUICK_70M = dict(vocab_size=512, hidden=64, layers=6, heads=8, ffn=256)

# name -> (kind, shape, paths); model shapes: (ModelConfig kwargs, memories, B, S); op: (B, H, S, d)
CONFIGS: dict[str, tuple[str, Any, tuple[str, ...]]] = {
    "op": ("op", (8, 8, 256, 64), ("chunked", "running_sum")),
    "small-4": ("model", (SMALL, 4, 8, 256), ("project", "reference")),
    "small-16": ("model", (SMALL, 16, 8, 256), ("project", "reference")),
    "small-floor": ("model", (SMALL, 0, 8, 256), ("floor",)),
    "70m": ("model", ({}, 4, 8, 256), ("project", "reference")),
    "70m-floor": ("model", ({}, 0, 8, 256), ("floor",)),
}
QUICK_SHAPES = {"op": (2, 2, 64, 16), "small": (QUICK_SMALL, 2, 64), "70m": (QUICK_70M, 2, 64)}
REFERENCE_PATH = {"op": "running_sum", "model": "reference"}
H100_BF16_TFLOPS = 989.0


# ---- one measurement (runs in its own process) -----------------------------------------------
def _rss_mb() -> dict[str, float]:
    """VmRSS and VmHWM of this process in MB (Linux); {} elsewhere."""
    try:
        with open("/proc/self/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
    except OSError:
        return {}
    return {k: int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM") if k in fields}


def _reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0; harmless elsewhere)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def model_flops(cfg: Any, batch: int, seq: int) -> float:
    """FLOPs of one training step (the module docstring's formula)."""
    from multimem.model.transformer import TransformerLM

    with torch.device("meta"):
        model = TransformerLM(cfg)
    P = model.num_parameters() - model.embed_in.weight.numel()
    T, D, d = batch * seq, cfg.hidden, cfg.head_dim
    softmax_layers = cfg.layers - (cfg.memory_layer is not None)
    flops = 6 * P * T + 12 * softmax_layers * D * seq * T
    if cfg.memory_layer is not None:
        flops += 12 * D * d * T + 6 * cfg.memory.num_memories * D * d * T
    return float(flops)


def _build_step(spec: dict[str, Any], device: torch.device):
    """(step function, tokens per step, FLOPs per step, parameters) for one configuration."""
    from multimem.model.linear_attention import (
        causal_linear_attention,
        causal_linear_attention_running_sum,
        feature_map,
    )

    kind, path = spec["kind"], spec["path"]
    if kind == "op":
        B, H, S, d = spec["shape"]
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(B, H, S, d, generator=g).to(device).requires_grad_() for _ in range(3))
        grad = torch.randn(B, H, S, d, generator=g).to(device)
        if path == "chunked":
            def fn(a, b, c):
                return causal_linear_attention(a, b, c, chunk_size=spec["chunk_size"])
        else:
            fn = causal_linear_attention_running_sum

        def op_step() -> None:
            out = fn(feature_map(q), feature_map(k), v)
            out.backward(grad)
            for t in (q, k, v):
                t.grad = None

        return op_step, B * S, 12.0 * B * H * S * d * d, 0

    from multimem.model.config import MemoryConfig, ModelConfig
    from multimem.model.transformer import TransformerLM
    from multimem.model.reference_v1 import new_v1_memories, use_reference_layer
    from multimem.training.device import autocast, make_adamw
    from multimem.training.protocols import loss_sum

    model_kw, n, B, S = spec["shape"]
    cfg = ModelConfig(**model_kw, memory=MemoryConfig(num_memories=max(n, 1)),
                      **({"memory_layer": None} if path == "floor" else {}))
    torch.manual_seed(0)
    model = TransformerLM(cfg).to(device)
    bank: Any = None
    if path == "reference":
        bank = new_v1_memories(use_reference_layer(model))
    elif path == "project":
        bank = model.new_bank(None)
    if spec["chunk_size"] and path == "project":
        model.memory_layer.attention.chunk_size = spec["chunk_size"]
    forward = model
    if spec["compile"]:  # each write-pointer value is a new graph: allow one per memory slot
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 2 * n + 2)
        forward = torch.compile(model)
    opt = make_adamw(model.parameters(), lr=1e-4, weight_decay=0.0, device=device)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, cfg.vocab_size, (B, S + 1), generator=g).to(device)
    amp = autocast(device)

    full_logits = path == "reference"  # v1 kept the [B, S, V] logits; the project's loss is chunked

    def mean_loss() -> torch.Tensor:  # as training.protocols
        with amp:
            out = forward(ids[:, :-1], bank=bank, update_memory=bank is not None,
                          labels=None if full_logits else ids[:, 1:])
        return loss_sum(out, ids[:, 1:]) / (B * S)

    def model_step() -> None:
        mean_loss().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return model_step, B * S, model_flops(cfg, B, S), model.num_parameters()


def _warm_up_libraries(spec: dict[str, Any], device: torch.device) -> None:
    """One step of the same path at a tiny shape, so that lazily loaded kernels and thread pools
    are resident before the baseline RSS and count in no configuration's peak."""
    tiny = dict(spec, shape=QUICK_SHAPES["op"] if spec["kind"] == "op" else (QUICK_SMALL, spec["shape"][1], 2, 16),
                compile=False)
    _build_step(tiny, device)[0]()


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Time one configuration and path in this process (see module docstring)."""
    from multimem.training.device import configure_backend

    device = torch.device(spec["device"])
    configure_backend(device, spec["threads"])
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    _warm_up_libraries(spec, device)
    base = _rss_mb().get("VmRSS", 0.0)
    _reset_peak()
    step, tokens, flops, params = _build_step(spec, device)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    warmup = spec["warmup"]
    if spec["compile"] and spec["kind"] == "model":  # compile once per round-robin slot before timing
        warmup = max(warmup, spec["shape"][1] + 1)
    for i in range(warmup + spec["steps"]):
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    sec = statistics.median(times)
    mem = _rss_mb()
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else mem.get("VmHWM", 0.0) - base
    peak_tflops = spec["peak_tflops"] or (H100_BF16_TFLOPS if cuda else None)
    return {
        "config": spec["config"], "path": spec["path"], "params": params, "tokens_per_step": tokens,
        "tokens_per_s": tokens / sec, "step_ms": 1000 * sec, "step_ms_all": [1000 * t for t in times],
        "peak_mb": peak, "peak_rss_mb": mem.get("VmHWM"), "flops_per_step": flops,
        "mfu": flops / sec / (peak_tflops * 1e12) if peak_tflops else None,
    }


# ---- the run: one subprocess per configuration and path -------------------------------------
def _specs(args: argparse.Namespace, device: str) -> list[dict[str, Any]]:
    specs = []
    steps, warmup = (2, 1) if args.quick else (args.steps, args.warmup)
    for name in args.configs:
        kind, shape, paths = CONFIGS[name]
        if args.quick:
            if kind == "op":
                shape = QUICK_SHAPES["op"]
            else:
                kw, B, S = QUICK_SHAPES[name.split("-")[0]]
                shape = (kw, shape[1], B, S)
        for path in paths:
            specs.append(dict(config=name, kind=kind, path=path, shape=shape, device=device,
                              threads=args.threads, steps=steps, warmup=warmup, chunk_size=args.chunk_size,
                              compile=args.compile, peak_tflops=args.peak_tflops))
    return specs


def _run_child(spec: dict[str, Any]) -> dict[str, Any]:
    env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]))
    proc = subprocess.run([sys.executable, "-m", "multimem.bench", "--child", json.dumps(spec)],
                          capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(f"benchmark {spec['config']}/{spec['path']} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _pool(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from several rounds of the same measurement: median over all timed steps, largest peak."""
    r = dict(rounds[0])
    r["step_ms_all"] = [t for x in rounds for t in x["step_ms_all"]]
    r["step_ms"] = statistics.median(r["step_ms_all"])
    r["step_ms_min"] = min(r["step_ms_all"])
    r["tokens_per_s"] = 1000 * r["tokens_per_step"] / r["step_ms"]
    r["peak_mb"] = max(x["peak_mb"] for x in rounds)
    if r["mfu"] is not None:
        r["mfu"] = r["mfu"] * rounds[0]["step_ms"] / r["step_ms"]
    return r


def _ratios(results: list[dict[str, Any]]) -> None:
    """Add vs_reference (tokens/s ratio), peak_vs_reference and step_vs_floor to each result."""
    by = {(r["config"], r["path"]): r for r in results}
    for r in results:
        ref = by.get((r["config"], REFERENCE_PATH["op" if r["config"] == "op" else "model"]))
        floor = by.get((r["config"].split("-")[0] + "-floor", "floor"))
        r["vs_reference"] = r["tokens_per_s"] / ref["tokens_per_s"] if ref else None
        r["peak_vs_reference"] = r["peak_mb"] / ref["peak_mb"] if ref and ref["peak_mb"] > 0 else None
        r["step_vs_floor"] = r["step_ms"] / floor["step_ms"] if floor and r["config"] != "op" else None


def _targets(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The performance goals, where this run measured both sides."""
    by = {(r["config"], r["path"]): r for r in results}
    out = []

    def add(name: str, value: float, goal: str, met: bool) -> None:
        out.append({"target": name, "value": round(value, 3), "goal": goal, "met": bool(met)})

    if ("op", "chunked") in by and ("op", "running_sum") in by:
        c, r = by["op", "chunked"], by["op", "running_sum"]
        add("op speed-up vs running sum", r["step_ms"] / c["step_ms"], ">= 5", r["step_ms"] >= 5 * c["step_ms"])
        if c["peak_mb"] > 0:
            add("op extra memory, running sum / chunked", r["peak_mb"] / c["peak_mb"], ">= 8",
                r["peak_mb"] >= 8 * c["peak_mb"])
    for n in (4, 16):
        p, r = by.get((f"small-{n}", "project")), by.get((f"small-{n}", "reference"))
        if p and r:
            add(f"small-{n} tokens/s vs reference", p["vs_reference"], ">= 1.5", p["vs_reference"] >= 1.5)
        if p and p["step_vs_floor"]:
            add(f"small-{n} step time vs floor", p["step_vs_floor"], "<= 1.2", p["step_vs_floor"] <= 1.2)
    p4, p16 = by.get(("small-4", "project")), by.get(("small-16", "project"))
    if p4 and p16:
        add("small 16 vs 4 memories, step time", p16["step_ms"] / p4["step_ms"], "<= 1.1",
            p16["step_ms"] <= 1.1 * p4["step_ms"])
    p = by.get(("70m", "project"))
    if p and p["vs_reference"]:
        add("70m tokens/s vs reference", p["vs_reference"], ">= 1.25", p["vs_reference"] >= 1.25)
        if p["peak_vs_reference"]:
            add("70m peak memory vs reference", p["peak_vs_reference"], "<= 0.7", p["peak_vs_reference"] <= 0.7)
    return out


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        return f"{names[0]} ({os.cpu_count()} cores)" if names else platform.processor()
    except OSError:
        return platform.processor()


def _fmt(x: float | None, spec: str) -> str:
    return "" if x is None else format(x, spec)


def table(results: list[dict[str, Any]]) -> str:
    """Markdown table of the results (ratios from `_ratios`)."""
    lines = ["| config | path | tokens/s | step ms | min ms | peak MB | tokens/s vs ref | peak vs ref | step vs floor | MFU % |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(
            f"| {r['config']} | {r['path']} | {r['tokens_per_s']:,.0f} | {r['step_ms']:.1f} | {r['step_ms_min']:.1f} | "
            f"{r['peak_mb']:,.0f} | "
            f"{_fmt(r['vs_reference'], '.2f')} | {_fmt(r['peak_vs_reference'], '.2f')} | "
            f"{_fmt(r['step_vs_floor'], '.2f')} | {_fmt(r['mfu'] and 100 * r['mfu'], '.1f')} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m multimem.bench", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: tiny shapes, 1 warm-up + 2 timed steps")
    p.add_argument("--json", help="write the results to this JSON file")
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS), metavar="CONFIG",
                   help=f"configurations to run (default all: {' '.join(CONFIGS)})")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--threads", type=int, default=2, help="CPU intra-op threads (default 2)")
    p.add_argument("--steps", type=int, default=5, help="timed steps (median reported; default 5)")
    p.add_argument("--warmup", type=int, default=2, help="warm-up steps (default 2)")
    p.add_argument("--rounds", type=int, default=1,
                   help="run every configuration this many times, interleaved; steps pooled (default 1)")
    p.add_argument("--chunk-size", type=int, default=0,
                   help="linear-attention chunk size of the project path (power of 2; 0: the layer's default)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model (CUDA; warm-up covers one round-robin cycle of the memories)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help=f"device peak for MFU (default {H100_BF16_TFLOPS:g} bf16 dense on CUDA, none on CPU)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.rounds < 1:
        p.error("--steps and --rounds must be >= 1, --warmup >= 0")
    if args.chunk_size and args.chunk_size & (args.chunk_size - 1):
        p.error(f"--chunk-size={args.chunk_size}; allowed: a power of 2")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(measure(json.loads(args.child))))
        return 0
    from multimem.training.device import resolve_device

    device = str(resolve_device(args.device))
    specs = _specs(args, device)
    chunk = args.chunk_size or 64
    for s in specs:
        s["chunk_size"] = s["chunk_size"] or (chunk if s["kind"] == "op" else 0)
    runs: list[list[dict[str, Any]]] = [[] for _ in specs]
    for r in range(args.rounds):  # rounds interleave the paths, so a change in machine load hits all
        for spec, got in zip(specs, runs):
            print(f"round {r + 1}/{args.rounds}: {spec['config']} / {spec['path']} ...", file=sys.stderr, flush=True)
            got.append(_run_child(spec))
    results = [_pool(got) for got in runs]
    _ratios(results)
    targets = [] if args.quick else _targets(results)  # tiny shapes say nothing about the targets
    meta = {
        "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
        "device": device, "device_name": torch.cuda.get_device_name() if device.startswith("cuda") else _cpu_name(),
        "threads": args.threads, "quick": args.quick, "rounds": args.rounds, "steps": specs[0]["steps"] if specs else args.steps,
        "warmup": specs[0]["warmup"] if specs else args.warmup, "chunk_size": args.chunk_size or "default",
        "compile": args.compile, "dtype": "bf16 autocast" if device.startswith("cuda") else "float32",
        "peak_memory": "torch.cuda.max_memory_allocated" if device.startswith("cuda") else "VmHWM - RSS before build",
    }
    print(f"device {device} ({meta['device_name']}), torch {torch.__version__}, {args.threads} threads, "
          f"{meta['dtype']}, median of {meta['steps']} steps after {meta['warmup']} warm-up, "
          f"{args.rounds} round(s)\n")
    print(table(results))
    if targets:
        print("\n| target | value | goal | met |\n|---|---:|---|---|")
        for t in targets:
            print(f"| {t['target']} | {t['value']} | {t['goal']} | {'yes' if t['met'] else 'NO'} |")
    if args.json:
        from multimem.atomic import write_json_atomic

        write_json_atomic(args.json, {"meta": meta, "results": results, "targets": targets})
    return 0


if __name__ == "__main__":
    sys.exit(main())
