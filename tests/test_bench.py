"""The benchmark's smoke mode runs end to end (one subprocess per configuration and path) and
writes the JSON it promises; the ratio and target bookkeeping on made-up numbers. No timing
assertions: wall-clock depends on the machine."""

import json
import math

import pytest

from multimem.bench import _ratios, _targets, main, table

RESULT_KEYS = {"config", "path", "params", "tokens_per_step", "tokens_per_s", "step_ms", "step_ms_all",
               "step_ms_min", "peak_mb", "peak_rss_mb", "flops_per_step", "mfu", "vs_reference", "peak_vs_reference",
               "step_vs_floor"}


def test_quick_run_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["--quick", "--device", "cpu", "--threads", "1", "--rounds", "2", "--json", str(out),
                 "--configs", "op", "small-4", "small-floor"]) == 0
    data = json.loads(out.read_text())
    assert data["meta"]["quick"] is True and data["meta"]["threads"] == 1 and data["meta"]["device"] == "cpu"
    got = {(r["config"], r["path"]) for r in data["results"]}
    assert got == {("op", "chunked"), ("op", "running_sum"), ("small-4", "project"), ("small-4", "reference"),
                   ("small-floor", "floor")}
    for r in data["results"]:
        assert RESULT_KEYS <= r.keys()
        assert r["tokens_per_s"] > 0 and len(r["step_ms_all"]) == 2 * data["meta"]["steps"]
        assert math.isfinite(r["peak_mb"])
    by = {(r["config"], r["path"]): r for r in data["results"]}
    assert by["small-4", "reference"]["vs_reference"] == 1.0
    assert by["small-floor", "floor"]["step_vs_floor"] == 1.0
    assert by["small-4", "project"]["params"] == by["small-4", "reference"]["params"]
    assert data["targets"] == []
    assert "| small-4 | project |" in capsys.readouterr().out


def _result(config, path, step_ms, peak_mb):
    return dict(config=config, path=path, step_ms=step_ms, step_ms_min=step_ms, tokens_per_s=1000 / step_ms,
                peak_mb=peak_mb, mfu=None)


def test_ratios_and_targets():
    results = [_result("op", "chunked", 10, 10), _result("op", "running_sum", 100, 100),
               _result("small-4", "project", 110, 5), _result("small-4", "reference", 200, 6),
               _result("small-16", "project", 130, 5), _result("small-16", "reference", 150, 6),
               _result("small-floor", "floor", 100, 4)]
    _ratios(results)
    assert results[2]["vs_reference"] == pytest.approx(200 / 110)
    assert results[2]["step_vs_floor"] == pytest.approx(1.1)
    targets = {t["target"]: t["met"] for t in _targets(results)}
    assert targets == {
        "op speed-up vs running sum": True, "op extra memory, running sum / chunked": True,
        "small-4 tokens/s vs reference": True, "small-4 step time vs floor": True,
        "small-16 tokens/s vs reference": False, "small-16 step time vs floor": False,
        "small 16 vs 4 memories, step time": False,
    }
    assert table(results).count("\n") == len(results) + 1
