"""bench/full_size.py (bad input, JSON lines, out-of-memory and killed stages) and bench/device_check.py (dry run)."""

from __future__ import annotations

import importlib.util
import io
import json
import sys
from contextlib import redirect_stdout

import pytest
import torch

from conftest import REPO


def _script(name: str):
    sys.path.insert(0, str(REPO / "bench"))
    spec = importlib.util.spec_from_file_location(f"bench_{name.replace('-', '_')}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fs():
    return _script("full_size")


def _run(fs, argv) -> list[dict]:
    buf = io.StringIO()
    with redirect_stdout(buf):
        fs.main(argv)
    return [json.loads(t) for t in buf.getvalue().splitlines() if t.startswith("{")]


@pytest.mark.parametrize("argv,message", [
    (["--stages", "render,paint"], "--stages: unknown stage(s) ['paint']; choose from render, make-dataset"),
    (["--device", "cuda"] if not torch.cuda.is_available() else ["--device", "cuda:99"],
     "CUDA is not available here" if not torch.cuda.is_available() else "CUDA device(s) here"),
    (["--dtype", "fp16"], "--dtype fp16: the CPU has no float16 kernels"),
    (["--dtype", "int8"], "--dtype: 'int8' is not one of auto, fp32, fp16, bf16"),
    (["--preset", "huge"], "--preset: 'huge' is not one of full-size-random, tiny"),
    (["--profile", "medium"], "--profile: 'medium' is not one of quick, device, full"),
    (["--max-mem-gb", "4", "--in-process"], "--max-mem-gb 4.0: needs a positive size, --device cpu"),
])
def test_bad_input_is_refused_before_any_model_is_built(fs, monkeypatch, argv, message):
    def no_models(*a, **k):
        raise AssertionError("a model was requested")

    monkeypatch.setattr(fs.Context, "model", no_models)
    with pytest.raises(SystemExit) as e:
        fs.main(argv)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_tiny_stages_print_one_complete_json_line_each(fs):
    lines = _run(fs, ["--preset", "tiny", "--in-process", "--quick", "--stages", "render,eval", "--threads", "1"])
    stages = [x["stage"] for x in lines]
    assert stages == ["render", "render", "eval", "suite"]
    for x in lines[:-1]:
        assert {"stage", "device", "dtype", "batch", "params", "seconds_per_item", "items_per_s", "peak_mem_mb",
                "notes", "status"} <= set(x)
        assert x["status"] == "ok" and x["device"] == "cpu" and x["dtype"] == "float32"
        assert x["params"] > 0 and x["peak_mem_mb"] > 0
        assert x["items_per_s"] == pytest.approx(x["items"] / x["seconds"], rel=1e-3)
        assert x["seconds_per_item"] == pytest.approx(x["seconds"] / x["items"], rel=1e-3)
    assert [x["batch"] for x in lines[:2]] == [1, 4]
    assert lines[-1]["statuses"] == ["ok", "ok", "ok"] and lines[-1]["profile"] == "quick"


def test_out_of_memory_is_reported_with_the_failed_batch_and_the_suite_goes_on(fs, monkeypatch):
    def oom(ctx):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setitem(fs.STAGE_FUNCTIONS, "finetune", oom)
    monkeypatch.setitem(fs.STAGE_MODELS, "finetune", ())
    lines = _run(fs, ["--preset", "tiny", "--in-process", "--quick", "--stages", "finetune,render", "--threads",
                      "1"])
    assert [x["stage"] for x in lines] == ["finetune", "render", "render", "suite"]
    bad = lines[0]
    assert bad["status"] == "oom" and bad["failed_batch"] == 2 and "out of memory" in bad["notes"][0]
    assert bad["seconds_per_item"] is None and lines[1]["status"] == "ok"
    assert lines[-1]["statuses"] == ["oom", "ok", "ok"]


def test_a_killed_stage_process_is_reported_and_the_suite_goes_on(fs, monkeypatch):
    calls = []

    def child(args, stage):
        calls.append(stage)
        if stage == "invert":
            return [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"]
        return [sys.executable, "-c", "import json; print(json.dumps({'stage': 'eval', 'status': 'ok', "
                "'notes': []}))"]

    monkeypatch.setattr(fs, "_child_command", child)
    lines = _run(fs, ["--preset", "tiny", "--quick", "--stages", "invert,eval"])
    assert calls == ["invert", "eval"]
    killed = lines[0]
    assert killed["stage"] == "invert" and killed["status"] == "oom" and killed["failed_batch"] is None
    assert "SIGKILL" in killed["notes"][0]
    assert lines[1]["stage"] == "eval" and lines[1]["status"] == "ok"


def test_device_check_without_cuda_says_what_it_could_not_run(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    dc = _script("device_check")
    rc = dc.main(["--out", str(tmp_path), "--device", "cuda"])
    report = json.loads((tmp_path / "device_check.json").read_text())
    assert rc == 1 and report["steps"]["environment"]["status"] == "failed"
    for step in ("full_size_models", "gpu_tests", "parity", "full_size", "official"):
        assert report["steps"][step]["status"] == "not run"
        assert "CUDA is not available" in report["steps"][step]["reason"]
    assert len(report["could_not_run"]) == 6


def test_device_check_dry_run_on_cpu_writes_a_complete_report(tmp_path):
    dc = _script("device_check")
    dc.main(["--out", str(tmp_path), "--device", "cpu", "--dry-run", "--stages", "render", "--budget-s", "400"])
    report = json.loads((tmp_path / "device_check.json").read_text())
    steps = report["steps"]
    assert list(steps) == ["environment", "full_size_models", "gpu_tests", "parity", "full_size", "official"]
    assert steps["environment"]["torch"] == torch.__version__
    assert steps["parity"]["status"] == "ok" and steps["parity"]["fp32"]["image_max"] == 0.0
    assert [x["stage"] for x in steps["full_size"]["lines"]] == ["render", "render"]
    assert steps["full_size"]["status"] == "ok" and (tmp_path / "full_size.jsonl").is_file()
    assert steps["official"]["status"] == "not run" and "--official-root" in steps["official"]["reason"]
    if not torch.cuda.is_available():  # every gpu-marked test is skipped here: said so, not hidden
        assert steps["gpu_tests"]["status"] == "not run" and steps["gpu_tests"]["counts"].get("skipped", 0) > 0
        assert any(s.startswith("gpu_tests:") for s in report["could_not_run"])
    assert (tmp_path / "gpu_tests.log").is_file()


def test_device_check_shell_entry_point_writes_the_report(tmp_path):
    """bench/device_check.sh: wheel handling, environment and exit; without CUDA it stops after the environment."""
    import os
    import subprocess
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA (the full check takes minutes)")
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    proc = subprocess.run(["bash", "bench/device_check.sh", str(tmp_path / "out")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    report = json.loads((tmp_path / "out" / "device_check.json").read_text())
    assert proc.returncode == 1 and report["budget_s"] == 450
    assert report["steps"]["environment"]["status"] == "failed"
    assert "CUDA is not available" in proc.stdout  # the summary table, printed last
