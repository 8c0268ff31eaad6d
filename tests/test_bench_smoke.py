"""bench/render.py runs end to end on the tiny preset and prints one line of JSON; bench/render_ab.py runs one real
pair and pairs/summarises correctly (checked in process, so the smoke test stays at three processes)."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO


def test_render_benchmark_tiny_prints_one_json_line():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "render.py"), "--preset", "tiny", "--batch", "1", "--runs", "1",
         "--threads", "1"],
        capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stdout
    result = json.loads(lines[0])
    assert result["impl"] == "adapt3d" and result["preset"] == "tiny" and result["batch"] == 1
    assert result["runs"] == 1 and len(result["times_s"]) == 1
    assert result["median_s"] > 0 and result["renders_per_s"] > 0 and result["peak_rss_gb"] > 0
    assert result["gflop_per_render"] > 0 and 0 < result["pct_of_peak"]
    assert result["threads"] == 1 and result["allocator"] in ("glibc", "tcmalloc", "jemalloc", "default")


def _load_render_ab():
    spec = importlib.util.spec_from_file_location("bench_render_ab", REPO / "bench" / "render_ab.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_render_ab_benchmark_runs_both_configurations():
    """One real pair (two bench/render.py processes): --a / --b reach their side, results come back per pair.
    (--cpu-kernels off: a smoke test must not wait for the once-per-machine C++ build; test_cpu_kernels does it.)"""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "render_ab.py"), "--preset", "tiny", "--pairs", "1", "--runs", "1",
         "--threads", "1", "--a", "--conv3x3 winograd --cpu-kernels off", "--b", "--conv3x3 direct"],
        capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip())
    (pair,) = result["runs"]
    assert pair["a"]["conv3x3"] == "winograd" and pair["b"]["conv3x3"] == "direct"
    assert pair["a"]["preset"] == pair["b"]["preset"] == "tiny" and pair["a"]["threads"] == 1
    assert result["speedups"] == [round(pair["b"]["median_s"] / pair["a"]["median_s"], 3)]


def test_render_ab_interleaves_pairs_and_summarises(monkeypatch, capsys):
    """The pairing and statistics, in process with stand-in runs: A B A B ..., per-pair B/A, median and range."""
    mod = _load_render_ab()
    calls, times = [], {"A": [1.0, 2.0, 1.0], "B": [2.0, 3.0, 4.0]}

    def fake_run_once(args, extra):
        calls.append(extra)
        side = "A" if extra == "--x a" else "B"
        t = times[side][sum(c == extra for c in calls) - 1]
        return {"median_s": t, "peak_rss_gb": t / 10, "allocator": "glibc", "side": side}
    monkeypatch.setattr(mod, "run_once", fake_run_once)
    mod.main(["--pairs", "3", "--a", "--x a", "--b", "--x b"])
    result = json.loads(capsys.readouterr().out)
    assert calls == ["--x a", "--x b"] * 3
    assert result["speedups"] == [2.0, 1.5, 4.0]
    assert (result["speedup_min"], result["speedup_median"], result["speedup_max"]) == (1.5, 2.0, 4.0)
    assert result["a_peak_rss_gb"] == 0.2 and result["b_peak_rss_gb"] == 0.4
    assert [(r["a"]["side"], r["b"]["side"]) for r in result["runs"]] == [("A", "B")] * 3


def test_render_ab_refuses_identical_sides(capsys):
    with pytest.raises(SystemExit) as e:
        _load_render_ab().parse_args(["--a", "", "--b", ""])
    assert e.value.code == 2 and "--a and --b are the same" in capsys.readouterr().err
