"""CPU threads chosen from what other programs leave free, and a short run's first plots come early."""

from __future__ import annotations

import pytest
import torch

from ddpm_gui.data import load_data
from ddpm_gui.engine import device
from ddpm_gui.engine import events as ev
from ddpm_gui.engine.config import TrainConfig
from ddpm_gui.engine.trainer import Trainer


class FakeClock:
    """/proc's CPU counters as the chooser reads them: all cores' busy seconds, this process's seconds."""

    def __init__(self, monkeypatch):
        self.busy = self.own = self.t = 0.0
        monkeypatch.setattr(device, "_cpu_times", lambda: (self.busy, self.own))
        monkeypatch.setattr(device.time, "monotonic", lambda: self.t)
        monkeypatch.setattr(device, "usable_cpus", lambda: 4)

    def advance(self, seconds: float, others: float, mine: float) -> None:
        """`seconds` pass while other programs keep `others` cores busy and this process `mine`."""
        self.t += seconds
        self.busy += seconds * (others + mine)
        self.own += seconds * mine


def test_auto_threads_follow_the_cores_others_leave_free(monkeypatch):
    clock = FakeClock(monkeypatch)
    chooser = device.ThreadChooser()
    clock.advance(10, others=0.0, mine=4.0)  # only this process: every core is ours
    assert chooser.check() == 4
    clock.advance(10, others=2.0, mine=2.0)  # two CPU-bound programs start
    assert chooser.check() == 2
    clock.advance(10, others=3.0, mine=1.0)
    assert chooser.check() == 1
    clock.advance(10, others=4.0, mine=1.0)  # even a fully busy machine leaves one thread
    assert chooser.check() == 1
    clock.advance(10, others=0.2, mine=1.0)  # they stopped
    assert chooser.check() == 4


def test_a_fixed_count_and_the_cap_win(monkeypatch):
    clock = FakeClock(monkeypatch)
    fixed, capped = device.ThreadChooser(requested=3), device.ThreadChooser(cap=2)
    clock.advance(10, others=0.0, mine=1.0)
    assert fixed.check() == 3 and capped.check() == 2  # an idle machine: never above torch's own count


def test_measure_free_threads_is_within_the_usable_cores():
    assert 1 <= device.measure_free_threads(0.1) <= device.usable_cpus()


@pytest.fixture(scope="module")
def data():
    return load_data("builtin:96", image_size=16)


def _cfg(**kw) -> TrainConfig:
    base = dict(data="builtin:96", image_size=16, preset="tiny", batch_size=8, steps=4, warmup_steps=0,
                device="cpu", log_every=2, preview_every=0, checkpoint_every=0, checkpoint_minutes=0.0)  # fmt: skip
    return TrainConfig(**{**base, **kw})


def test_the_run_uses_the_threads_it_reports_and_gives_them_back(tmp_path, data):
    before = torch.get_num_threads()
    seen = []
    tr = Trainer(_cfg(threads=1), tmp_path / "fixed", data=data)
    for e in tr.run():
        if isinstance(e, ev.Progress):
            seen.append(torch.get_num_threads())
        if isinstance(e, ev.Started):
            started = e
    assert started.threads == 1 and not started.threads_auto and "1 thread)" in started.device
    assert seen and set(seen) == {1}
    assert torch.get_num_threads() == before  # process-wide: restored when the run ends
    events = list(Trainer(_cfg(), tmp_path / "auto", data=data).run())
    auto = next(e for e in events if isinstance(e, ev.Started))
    assert auto.threads_auto and 1 <= auto.threads <= before


def test_a_short_run_draws_its_first_preview_and_timestep_losses_early(tmp_path, data):
    """34 steps with a preview every 250 and the loss by timestep every 5 reads: both appear anyway."""
    events = list(Trainer(_cfg(steps=34, log_every=10, preview_every=250, preview_steps=2), tmp_path / "r",
                          data=data).run())  # fmt: skip
    previews = [e.step for e in events if isinstance(e, ev.Preview)]
    by_t = [e.step for e in events if isinstance(e, ev.TimestepLoss)]
    assert isinstance(events[-1], ev.Finished), events[-1]
    assert previews and previews[0] <= 20, previews
    assert by_t and by_t[0] == 10, by_t


# ----------------------------------------------------------------------------- sampling


def test_sampling_uses_the_chosen_thread_count_and_gives_it_back(monkeypatch):
    """The Sample and Denoise tabs, the CLI's sample/denoise/eval and previews all sample through one chain:
    on the CPU it runs with the count the app chooses (as training does), re-checked while it runs, and
    torch's count is what it was afterwards."""
    from ddpm_gui.core.schedule import NoiseSchedule, ScheduleConfig
    from ddpm_gui.engine import threads
    from ddpm_gui.engine.sampler import ModelBundle, SampleConfig, sample_frames
    from ddpm_gui.models.presets import build_model

    torch.manual_seed(0)
    model = build_model("tiny").eval()
    seen = []
    model.register_forward_pre_hook(lambda *_: seen.append(torch.get_num_threads()))
    bundle = ModelBundle(
        model,
        NoiseSchedule(ScheduleConfig(T=6)),
        "eps",
        16,
        None,
        None,
        0,
        "tiny",
        "test",
        torch.device("cpu"),
    )
    choices = iter([1, 3, 3, 3, 3, 3, 3])
    monkeypatch.setattr(threads, "_chooser", None)
    monkeypatch.setattr(threads, "RECHECK_SECONDS", 0.0)
    monkeypatch.setattr(device.ThreadChooser, "check", lambda self: next(choices))
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        frames = list(sample_frames(bundle, SampleConfig(n=2, sampler="ddpm")))
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(old)
    assert len(frames) >= 1 and len(seen) == 6
    assert seen[0] == 1  # the first step already runs with the chosen count, not torch's 2
    assert seen[-1] == 3  # a re-check while the chain runs takes effect
    assert after == 2


def test_a_fixed_count_wins_over_the_chosen_one(monkeypatch):
    """The bench times sampling at torch's default count against the chosen one: a fixed count holds for
    the whole chain."""
    from ddpm_gui.engine import threads

    monkeypatch.setattr(threads, "RECHECK_SECONDS", 0.0)
    monkeypatch.setattr(device.ThreadChooser, "check", lambda self: 1)
    old = torch.get_num_threads()
    try:
        with threads.fixed_sampling_threads(2), threads.sampling_threads(torch.device("cpu")) as recheck:
            inside = torch.get_num_threads()
            recheck()
            assert (inside, torch.get_num_threads()) == (2, 2)
        with threads.sampling_threads(torch.device("cpu")):
            assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(old)
