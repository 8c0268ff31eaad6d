"""bench/render.py runs end to end on the tiny preset and prints one line of JSON."""

import json
import os
import subprocess
import sys

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


def test_render_ab_benchmark_interleaves_two_configurations():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "render_ab.py"), "--preset", "tiny", "--pairs", "2", "--runs", "1",
         "--threads", "1", "--a", "--conv3x3 winograd", "--b", "--conv3x3 direct"],
        capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip())
    assert result["pairs"] == 2 and len(result["speedups"]) == 2 and len(result["runs"]) == 2
    for pair, ratio in zip(result["runs"], result["speedups"]):
        assert pair["a"]["conv3x3"] == "winograd" and pair["b"]["conv3x3"] == "direct"
        assert ratio == round(pair["b"]["median_s"] / pair["a"]["median_s"], 3)
    assert result["speedup_min"] <= result["speedup_median"] <= result["speedup_max"]
    same = subprocess.run([sys.executable, str(REPO / "bench" / "render_ab.py"), "--a", "", "--b", ""],
                          capture_output=True, text=True, timeout=60, env=env, cwd=REPO)
    assert same.returncode == 2 and "--a and --b are the same" in same.stderr
