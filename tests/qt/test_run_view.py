"""What the Train tab's run view shows, without training: the loss plots (the trainer's smoothed loss, fast
past 100k points) and the stats line (the threads used, what is true before, while and after a pause)."""

from __future__ import annotations

import time

import numpy as np
import pytest

pytest.importorskip("pytestqt")

from ddpm_gui.engine import events as ev
from ddpm_gui.qt import lossplot

pytestmark = pytest.mark.qt


def test_lossplot_smoothing_growth_and_log(qtbot):
    w = lossplot.LossPlot()
    qtbot.addWidget(w)
    rng = np.random.default_rng(0)
    y = rng.random(10_000) + 0.1
    # appended in uneven chunks, past the initial capacity (4096): the buffer doubles
    for s in np.split(np.arange(10_000), [3, 100, 5000, 9999]):
        w.append(s, y[s])
    assert w.n_points == 10_000
    np.testing.assert_allclose(w.losses(), y)
    # the smoothed curve is the trainer's loss_smooth, computed point by point as the trainer does
    ref, e = [], None
    for v in y[:500]:
        e = float(v) if e is None else 0.98 * e + 0.02 * float(v)
        ref.append(e)
    np.testing.assert_allclose(w.smoothed()[:500], ref, rtol=1e-9)
    w.append(np.array([10_000, 10_001]), np.array([np.nan, 0.5]))  # non-finite points are left out
    assert w.n_points == 10_001
    w.set_log(True)
    assert w.log_box.isChecked() and w.plot.getPlotItem().ctrl.logYCheck.isChecked()
    w.redraw()
    w.clear()
    assert w.n_points == 0


def test_lossplot_takes_the_trainers_smoothed_value_at_each_event(qtbot):
    """A resumed run's average comes from its checkpoint, not from the points the plot holds: the plot
    shows the trainer's value at each event's last point and carries on from it."""
    w = lossplot.LossPlot()
    qtbot.addWidget(w)
    w.append(np.array([1, 2]), np.array([1.0, 0.8]), smooth_last=0.5)
    assert w.smoothed()[-1] == 0.5 and "smoothed 0.5000" in w.header()
    w.append(np.array([3]), np.array([0.7]))
    assert w.smoothed()[-1] == pytest.approx(0.98 * 0.5 + 0.02 * 0.7)


def test_a_logged_history_is_smoothed_per_step_not_per_point(qtbot):
    """A resumed run's history holds every 10th step's loss: its smoothed curve decays per step, as the
    trainer's average did through every step's loss, not per logged point (which lags 10x)."""
    w = lossplot.LossPlot()
    qtbot.addWidget(w)
    blocks = np.linspace(1.0, 0.1, 50)  # the loss of steps 10k-9 .. 10k, one value per logged point
    every_step, e = [], None
    for v in np.repeat(blocks, 10):
        e = float(v) if e is None else 0.98 * e + 0.02 * float(v)
        every_step.append(e)
    w.append(np.arange(10, 501, 10), blocks)
    np.testing.assert_allclose(w.smoothed(), every_step[9::10], rtol=1e-9)


def test_lossplot_200k_points_redraw_time(qtbot):
    """Not a timing assertion: prints how long pushing and painting 200k points takes."""
    w = lossplot.LossPlot()
    qtbot.addWidget(w)
    w.resize(900, 500)
    w.show()
    n = 200_000
    steps = np.arange(1, n + 1)
    losses = 0.05 + np.exp(-steps / 20_000) + 0.02 * np.random.default_rng(1).random(n)
    t0 = time.perf_counter()
    for chunk in np.array_split(np.arange(n), 200):  # as a live run delivers them
        w.append(steps[chunk], losses[chunk])
    append_ms = (time.perf_counter() - t0) * 1000
    assert w.n_points == n
    t0 = time.perf_counter()
    w.redraw()
    w.grab()  # paint: downsampling and clipping happen here
    first = (time.perf_counter() - t0) * 1000
    w.append(np.array([n + 1]), np.array([0.06]))
    t0 = time.perf_counter()
    w.redraw()
    w.grab()
    again = (time.perf_counter() - t0) * 1000
    w.set_log(True)
    t0 = time.perf_counter()
    w.redraw()
    w.grab()
    log_ms = (time.perf_counter() - t0) * 1000
    print(
        f"\nLossPlot 200k points: append (200 chunks) {append_ms:.1f} ms, redraw+paint {first:.1f} ms, "
        f"after one more point {again:.1f} ms, log y {log_ms:.1f} ms"
    )


def test_timestep_loss_plot(qtbot):
    w = lossplot.TimestepLossPlot()
    qtbot.addWidget(w)
    v = np.linspace(1.0, 0.1, 100).astype(np.float32)
    v[3] = np.nan
    w.set_values(v)
    assert len(w.values) == 100
    w.clear()
    assert len(w.values) == 0


def _started(device: str = "cpu (2 threads)", step: int = 0, resumed: bool = False) -> ev.Started:
    return ev.Started(step, 100, device, 1000, None, "builtin", 64, "/tmp/run", resumed, 4)


def _progress(step: int, smooth: float) -> ev.Progress:
    return ev.Progress(
        step, 100, 0.5, smooth, 10.0, 9.0, 1.0, 4, 1e-4, np.array([step]), np.array([0.5], np.float32)
    )


def test_run_view_names_the_cpu_threads_really_used(qtbot):
    from ddpm_gui.engine.config import TrainConfig
    from ddpm_gui.engine.device import usable_cpus
    from ddpm_gui.qt.train.run_view import RunView, ThreadsUsed

    view = RunView()
    qtbot.addWidget(view)
    cores = usable_cpus()
    of = f"of {cores} thread{'s' if cores != 1 else ''}"
    view.start(TrainConfig(threads=0), "/tmp/run", resumed=False)
    view.show_event(ThreadsUsed(1))  # read in the training thread
    view.show_event(_started("cpu (2 threads)"))  # the GUI-side count, which may differ
    assert f"cpu (1 {of}, auto)" in view.stats_label.text()
    assert "2 threads" not in view.run_label.text() and view.run_label.text().startswith("cpu · ")
    view.show_event(_progress(10, 0.4))
    assert view.stats_label.text().endswith(f"· cpu (1 {of}, auto)")
    view.start(TrainConfig(threads=1), "/tmp/run", resumed=False)  # a count the user chose
    view.show_event(ThreadsUsed(1))
    view.show_event(_started())
    view.show_event(_progress(10, 0.4))
    assert view.stats_label.text().endswith(f"· cpu (1 {of})")
    view.start(TrainConfig(threads=0), "/tmp/run", resumed=False)  # the trainer's Started says it all
    view.show_event(
        ev.Started(0, 100, "cpu", 1000, None, "builtin", 64, "/r", False, 4, threads=1, threads_auto=True)
    )
    assert f"cpu (1 {of}, auto)" in view.stats_label.text()
    view.start(TrainConfig(), "/tmp/run", resumed=False)
    view.show_event(_started("cuda:0 (Some GPU)"))
    view.show_event(_progress(10, 0.4))
    assert view.stats_label.text().endswith("· cuda:0 (Some GPU)")


def test_run_view_says_what_is_true_now(qtbot):
    from ddpm_gui.engine.config import TrainConfig
    from ddpm_gui.qt.train.run_view import RunView

    view = RunView()
    qtbot.addWidget(view)
    view.show()
    assert not view.progress.isTextVisible()  # no "step 0 / 1" before any run
    assert view.stats_label.text() == "No run yet."
    view.start(TrainConfig(steps=100), "/tmp/run", resumed=False)
    view.show_event(_started())
    view.show_event(_progress(31, 0.4))
    assert view.progress.isTextVisible() and view.progress.text() == "step 31 / 100"
    assert view.estimate_label.isVisible()
    training = view.stats_label.text()
    view.pausing()  # asked for; the run pauses after the step it is in
    assert view.stats_label.text() == "Pausing after the current step…"
    view.unpausing()  # resumed before it paused: it never stopped
    assert view.stats_label.text() == training
    view.pausing()
    view.show_event(ev.Paused(31))
    assert view.stats_label.text() == "Paused at step 31."
    assert not view.estimate_label.isVisible()  # its "done around" would go stale while paused
    view.show_event(ev.Resumed(31))
    assert "Paused" not in view.stats_label.text() and "Resumed at step 31" in view.stats_label.text()
    view.show_event(_progress(32, 0.4))
    assert view.stats_label.text().startswith("loss 0.5000 (smoothed 0.4000)")
