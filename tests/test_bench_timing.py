"""The compare section's timing: every chunk between two syncs (counted through the injectable sync, the
CUDA synchronize on a GPU), the peak probed between rounds, each loop's CUDA memory less what was resident
before it, and the intervals behind every ratio. No timed assertions."""

import pytest
import torch

from ddpm_gui import bench
from ddpm_gui.bench import BenchConfig, PeakProbe, interleave
from ddpm_gui.bench_busy import mean_ci, ratio_ci


class Recorder:
    """The test double of the device sync: records each call among the other events."""

    def __init__(self):
        self.events: list[str] = []

    def sync(self) -> None:
        self.events.append("sync")

    def mark(self, what: str) -> None:
        self.events.append(what)


def _assert_fenced(events: list[str], names: set[str]) -> None:
    """Every run of a chunk's events has a sync right before and right after it."""
    for i, e in enumerate(events):
        if e in names:
            before, after = events[i - 1], events[i + 1]
            assert before in ("sync", e) and after in ("sync", e), events[max(0, i - 3) : i + 4]


def test_interleave_fences_every_chunk_with_syncs_and_alternates_order():
    rec = Recorder()
    ticks = iter(range(1000))

    def chunk(name: str, images: int):
        def run() -> int:
            rec.mark(name)
            return images

        return run

    def probe() -> dict[str, float]:
        rec.mark("probe")
        return {"float32": 1.0}

    out = interleave({"a": chunk("a", 4), "b": chunk("b", 8)}, 4, rec.sync, probe, clock=lambda: next(ticks))
    body = [e for e in rec.events if e != "sync"]
    assert body == ["a", "b", "probe", "b", "a", "probe", "a", "b", "probe", "b", "a", "probe"]  # ABBA
    assert rec.events.count("sync") == 2 * 2 * 4  # before and after each of the 8 chunks
    _assert_fenced(rec.events, {"a", "b"})
    # the clock is read between the two syncs of a chunk: 1 tick per chunk, per image
    assert out["s_per_image"]["a"] == [1 / 4] * 4 and out["s_per_image"]["b"] == [1 / 8] * 4
    assert out["peak_tflops"] == {"float32": [1.0] * 4}


def test_compare_section_syncs_at_every_chunk_boundary(monkeypatch, one_thread):
    """The real loops: no step of the tutorial loop is followed by one of DDPM Studio's (or the reverse)
    without a sync between them, in the warm-up and in the timed rounds, and the peak is probed in every
    round between syncs."""
    from ddpm_gui.data import load_data

    rec = Recorder()
    step, steps, flush = bench.TutorialLoop.step, bench.StudioStepper.steps, bench.StudioStepper.flush
    probe_call = PeakProbe.__call__
    monkeypatch.setattr(bench.TutorialLoop, "step", lambda self: (rec.mark("tut"), step(self))[1])
    monkeypatch.setattr(bench.StudioStepper, "steps", lambda self, k: (rec.mark("studio"), steps(self, k))[1])
    monkeypatch.setattr(bench.StudioStepper, "flush", lambda self: (rec.mark("flush"), flush(self))[1])
    monkeypatch.setattr(PeakProbe, "__call__", lambda self: (rec.mark("probe"), probe_call(self))[1])
    cfg = BenchConfig.quick_config()
    cfg.iters, cfg.warmup, cfg.peak_size, cfg.batch_size = 3, 1, 64, 8
    res: dict = {"flops_per_image_train": 1e9}
    data = load_data(cfg.data, image_size=cfg.image_size)
    bench._time_training(cfg, data, torch.device("cpu"), res, lambda line: None, bench._no_progress, rec.sync)
    ev = rec.events
    switches = [
        (a, b) for a, b in zip(ev, ev[1:], strict=False) if {a, b} in ({"tut", "studio"}, {"tut", "flush"})
    ]
    assert switches == []  # a sync between the two loops, always
    assert ev.count("tut") == cfg.warmup + cfg.iters and ev.count("probe") == cfg.iters
    timed = ev[ev.index("probe") - 8 :]  # from the first round on: tut/studio chunks, each fenced
    _assert_fenced([e for e in timed if e != "flush"], {"tut", "studio"})
    assert len(res["matmul_peaks_all"]["float32"]) == cfg.iters
    assert len(res["tutorial_img_per_s_all"]) == cfg.iters
    lo, hi = res["speedup_ci95"]
    assert lo <= res["speedup"] <= hi
    fr = res["peak_fractions"]["float32"]["studio"]
    assert len(fr["all"]) == cfg.iters and fr["ci95"][0] <= fr["mean"] <= fr["ci95"][1]


def test_cuda_peak_memory_is_each_loops_own(monkeypatch):
    """On CUDA a loop's peak is the allocator's peak since the reset less what was allocated at the reset
    (the other loop's resident model, optimizer, data): a fake allocator stands in for the GPU."""
    state = {"allocated": 0.0, "peak": 0.0}
    mib = 2**20
    monkeypatch.setattr(
        torch.cuda, "reset_peak_memory_stats", lambda dev=None: state.update(peak=state["allocated"])
    )
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda dev=None: state["allocated"] * mib)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda dev=None: state["peak"] * mib)
    dev = torch.device("cuda")

    def run(resident_after: float, transient: float) -> None:
        state["peak"] = max(state["peak"], state["allocated"] + transient)
        state["allocated"] = resident_after

    base = bench._reset_peak(dev)
    run(1000.0, 3000.0)  # the first loop: 1 GiB stays resident, 3 GiB at its peak
    assert bench._peak_mb(dev, base) == 3000.0
    base = bench._reset_peak(dev)
    assert base == 1000.0
    run(1500.0, 800.0)  # the second: 500 MiB of its own stays, 800 MiB at its peak above the first's
    assert bench._peak_mb(dev, base) == 800.0


def test_intervals():
    m = mean_ci([1.0, 2.0, 3.0])
    assert m["mean"] == 2.0 and m["ci95"] == pytest.approx([2 - 4.303 / 3**0.5, 2 + 4.303 / 3**0.5])
    clear = ratio_ci([2.0, 2.2, 1.8, 2.0], [1.0, 1.1, 0.9, 1.0])  # paired: the drift cancels
    assert clear["ratio"] == pytest.approx(2.0) and clear["ci95"] == pytest.approx([2.0, 2.0])
    assert clear["verdict"] == "2.00x faster"
    noisy = ratio_ci([1.05, 0.95, 1.10, 0.98], [1.0, 1.0, 1.0, 1.0])
    assert noisy["ci95"][0] < 1 < noisy["ci95"][1] and noisy["verdict"] == "no measurable difference"
    slow = ratio_ci([0.5, 0.52, 0.49], [1.0, 1.0, 1.0])
    assert slow["ci95"][1] < 1 and slow["verdict"].endswith("x slower")
    assert ratio_ci([1.2], [1.0])["verdict"].startswith("one round")


def test_peak_probe_reports_each_dtype_and_syncs():
    rec = Recorder()
    probe = PeakProbe(torch.device("cpu"), size=32, sync=rec.sync, reps=2)
    rec.events.clear()
    out = probe()
    assert set(out) == {"float32"} and out["float32"] > 0 and probe.primary == "float32"
    assert rec.events == ["sync"] * 4  # around each timed product
