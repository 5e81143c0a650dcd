"""`ddpm-gui bench`: the smoke run works and reports every figure. No timing assertions: a benchmark is
a command that prints numbers."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm_gui.bench import TutorialLoop, img_to_tensor, tutorial_dataset
from ddpm_gui.cli import main


def test_bench_quick_writes_every_figure(tmp_path, capsys):
    out = tmp_path / "out.json"
    assert main(["bench", "--quick", "--device", "cpu", "--json", str(out)]) == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert "speedup" in printed and "tutorial loop" in printed
    # progress bars on stderr, one per phase; stdout holds the report only
    assert "%|" in captured.err and "training" in captured.err and "sampling" in captured.err
    assert "matmul peak probed after every round" in printed and "95% CI" in printed
    assert "%|" not in printed and "busy" not in printed
    res = json.loads(out.read_text())
    for key in (
        "tutorial_img_per_s",
        "studio_img_per_s",
        "speedup",
        "flops_per_image_train",
        "tutorial_tflops",
        "studio_tflops",
        "matmul_peak_tflops",
        "peak_fraction",
    ):
        assert res[key] > 0, key
    lo, hi = res["speedup_ci95"]
    assert lo <= res["speedup"] <= hi and res["speedup_verdict"]
    assert len(res["matmul_peaks_all"]["float32"]) == res["config"]["iters"] == 3  # one probe per round
    assert set(res["sampling_s"]) == {"1", "2", "ddim5_batch16"}
    assert all(v > 0 for v in res["sampling_s"].values())
    assert res["sampling_steps"] == 100
    assert all(v > 0 for v in res["peak_memory_mb"].values())
    assert res["device_type"] == "cpu" and res["config"]["quick"]
    assert "busy" not in res  # the busy section only when asked for


def test_bench_skip_sampling_threads_and_bad_batches(tmp_path, capsys):
    """--threads N: the bench runs with exactly N torch threads, and the caller's count comes back after."""
    old = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        args = ["bench", "--quick", "--device", "cpu", "--skip-sampling", "--threads", "2"]
        assert main([*args, "--json", str(tmp_path / "b.json")]) == 0
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(old)
    res = json.loads((tmp_path / "b.json").read_text())
    assert res["threads"] == 2 and "cpu (2 threads)" in res["device"]
    assert "sampling_s" not in res and res["peak_memory_mb"]["sampling"] is None
    capsys.readouterr()
    assert main(["bench", "--device", "cpu", "--sample-batches", "1,x"]) == 2
    assert "--sample-batches" in capsys.readouterr().err


def test_tutorial_conversion_is_the_articles():
    """img_to_tensor: float64, (1, 3, H, W), [-1, 1]; the loop's noising runs in float64 as in the article."""
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(4, 8, 8, 3), dtype=np.uint8)
    ds = tutorial_dataset(imgs)
    x = img_to_tensor(ds[1]["img"])
    assert x.dtype == torch.float64 and x.shape == (1, 3, 8, 8)
    np.testing.assert_allclose(x[0].permute(1, 2, 0).numpy(), imgs[1] / 255 * 2 - 1)
    loop = TutorialLoop(torch.nn.Conv2d(3, 3, 3, padding=1), ds, torch.device("cpu"), batch_size=2)
    x0 = torch.cat([img_to_tensor(d["img"]) for d in ds[:2]])
    xt, eps = loop.q_xt_x0(x0, torch.tensor([0, 99]))
    assert xt.dtype == torch.float64 and eps.dtype == torch.float64
    loop.unet = _Net()
    loop.optim = torch.optim.AdamW(loop.unet.parameters(), lr=3e-4)
    for _ in range(3):  # wraps around the 4-image list
        loop.step()
    assert len(loop.losses) == 3 and all(np.isfinite(loop.losses))


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x, t):
        return self.conv(x)


@pytest.mark.parametrize("mode", ["eager", "auto", "cuda-graph"])
def test_accelerate_falls_back_cleanly_on_cpu(mode):
    """On the CPU these modes sample the same numbers as the plain model (graphs need CUDA)."""
    from ddpm_gui.engine.accel import accelerate
    from ddpm_gui.models.presets import build_model

    torch.manual_seed(0)
    model = build_model("tiny").eval()
    fast = accelerate(model, mode)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([5, 50])
    with torch.inference_mode():
        want = model(x, t)
        got = fast(x, t)
    torch.testing.assert_close(got, want)
    assert getattr(fast, "fallback_reason", None) is None
    assert fast.image_channels == 3  # attribute reads reach the wrapped model


@pytest.mark.slow
def test_compiled_model_matches_eager():
    """The compile mode runs the torch.compile'd model (not the eager one) and gives eager's numbers within
    float tolerance. Where torch.compile cannot build here (no C++ compiler, an unsupported platform), the
    wrapper falls back to eager and says why: then there is nothing to compare."""
    from ddpm_gui.engine.accel import CompiledDenoiser, accelerate
    from ddpm_gui.models.presets import build_model

    torch.manual_seed(0)
    model = build_model("tiny").eval()
    fast = accelerate(model, "compile")
    assert isinstance(fast, CompiledDenoiser)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([5, 50])
    with torch.inference_mode():
        want = model(x, t)
        got = fast(x, t)
    if fast.fallback_reason:
        pytest.skip(f"torch.compile cannot run here: {fast.fallback_reason}")
    assert fast._compiled is not None  # no fallback: the output is the compiled code's
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert fast.image_channels == 3


# ----------------------------------------------------------------------------- the busy-machine section


def _spinners() -> list[int]:
    """Competing processes of engine/load.py that this test process started and that are still there
    (running, or ended but not reaped: a leak too)."""
    from ddpm_gui.engine.load import _SPIN

    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (proc / "cmdline").read_bytes().decode(errors="replace")
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if _SPIN in cmd and ppid == os.getpid():
            found.append(int(proc.name))
    return found


def _running(pid: int) -> bool:
    """Whether process `pid` exists and has not ended (a zombie has ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")


@pytest.fixture
def one_default_thread():
    """torch's count at the call is the busy section's default: 1 keeps the smoke run short on a busy
    machine (two threads against competing processes are what makes a CPU crawl)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@needs_proc
def test_bench_busy_section_reports_every_load(tmp_path, capsys, monkeypatch, one_default_thread):
    """--sections busy: 0, 1 and 2 competing processes run while it measures (and none after), the
    app's count comes from the trainer's ThreadChooser, every figure is in the JSON, progress on stderr."""
    from ddpm_gui.engine import device

    seen = []

    class Watched(device.ThreadChooser):
        def check(self) -> int:
            n = super().check()
            running = _spinners()
            seen.append((self.requested, self.cap, len(running), n))
            return n

    monkeypatch.setattr(device, "ThreadChooser", Watched)
    out = tmp_path / "busy.json"
    assert main(["bench", "--quick", "--device", "cpu", "--sections", "busy", "--json", str(out)]) == 0
    assert _spinners() == []
    reps = 2  # BusyConfig.quick_config
    # per load: the chooser is asked before every timed app run (training, then sampling), as the trainer
    # asks it: auto (requested 0), capped at torch's count (1 here), with the load running
    assert seen == [(0, 1, n, 1) for n in (0, 1, 2) for _ in range(2 * reps)]
    res = json.loads(out.read_text())
    busy = res["busy"]
    assert busy["default_threads"] == 1 and busy["usable_cpus"] >= 1
    assert [e["competing"] for e in busy["loads"]] == [0, 1, 2]
    for e in busy["loads"]:
        for task in ("training", "sampling"):
            d = e[task]
            assert d["threads_app"] == [1] * reps and d["unit"] == "img/s"
            assert len(d["app_all"]) == len(d["default_all"]) == reps
            assert all(v > 0 for v in d["app_all"] + d["default_all"])
            assert d["app"] > 0 and d["default"] > 0 and d["ratio"] > 0
            lo, hi = d["ratio_ci95"]
            assert lo <= d["ratio"] <= hi
            assert d["verdict"] == "ok" or d["verdict"].startswith("slower by ")
    assert "tutorial_img_per_s" not in res  # the compare section was not asked for
    captured = capsys.readouterr()
    assert "busy, 2 competing" in captured.err and "%|" in captured.err
    assert "%|" not in captured.out
    assert "2 competing processes" in captured.out and "speed app/default" in captured.out


@needs_proc
@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_busy_section_ends_competing_processes_when_measuring_fails(monkeypatch, exc):
    """The measured function raises (a bug, or Ctrl+C) while two competing processes run: both end, and
    torch's thread count comes back."""
    from ddpm_gui.bench_busy import BusyConfig, run_busy
    from ddpm_gui.engine import sampler

    running = []

    def failing(*args, **kwargs):
        running.extend(_spinners())
        raise exc("measuring failed")

    monkeypatch.setattr(sampler, "sample_frames", failing)
    cfg = BusyConfig.quick_config()
    cfg.loads = (2,)
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(exc):
            run_busy(cfg, default_threads=1, log=lambda line: None)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(old)
    assert len(running) == 2  # the load was on when it failed
    assert _spinners() == []


@needs_proc
def test_competing_processes_end_when_their_parent_is_killed():
    """A bench killed outright (no Python cleanup) leaves no spinner behind: each notices its parent is
    gone and ends."""
    code = (
        "import time; from ddpm_gui.engine.load import CompetingLoad\n"
        "load = CompetingLoad(1).start(); print(load.pids[0], flush=True); time.sleep(600)"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(parent.stdout.readline())
        assert _running(pid)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 120  # generous: the spinner looks at its parent about once a second
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _running(pid)


def test_compare_reports_the_paired_ratio_and_an_honest_verdict():
    from ddpm_gui.bench_busy import compare, verdict

    slow = compare([90.0, 88.0, 91.0, 89.0, 90.0], [100.0, 100.0, 100.0, 100.0, 100.0])
    assert slow["ratio"] == pytest.approx(0.90) and slow["verdict"] == "slower by 10%"
    assert slow["app"] == 90.0 and slow["default"] == 100.0 and slow["app_iqr"] == [89.0, 90.0]
    lo, hi = slow["ratio_ci95"]
    assert 0.88 <= lo <= 0.90 <= hi <= 0.91
    # paired: a drift that hits both variants alike leaves the ratio alone
    drift = compare([50.0, 100.0, 200.0], [52.0, 104.0, 208.0])
    assert drift["ratio"] == pytest.approx(50 / 52) and drift["verdict"] == "ok"
    assert verdict(0.95) == "ok" and verdict(0.94) == "slower by 6%" and verdict(1.3) == "ok"


def test_unknown_bench_section_is_a_one_line_error(capsys):
    assert main(["bench", "--quick", "--device", "cpu", "--sections", "compare,bussy"]) == 2
    err = capsys.readouterr().err
    assert "'bussy'" in err and "compare, busy, scaling, profile" in err and "Traceback" not in err
