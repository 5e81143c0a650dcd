#!/usr/bin/env python3
"""The GUI thread's longest stall while the app trains: what a user feels as a frozen window.

    xvfb-run -a python scripts/measure_gui_stall.py --seconds 60            # a real X window
    QT_QPA_PLATFORM=offscreen python scripts/measure_gui_stall.py --seconds 60

Opens the main window exactly as `ddpm-gui` does (window first, engine imported in the background),
waits until the engine is ready, then presses Start in the Train tab with the tab's defaults (the built-in
data; a fresh run folder in a temporary directory), keeps the Train tab on screen while the loss curve,
the statistics, the timestep plot and the preview grid update, and measures for `--seconds` with a 10 ms
QTimer (the app's DDPM_GUI_STALL_PROBE): the longest gap between two ticks is the longest the GUI thread
was blocked. Then it presses Stop, waits for the checkpoint, and prints the figures:

    training stall: longest 23.4 ms, 99th percentile 12.1 ms over 5821 ticks (60 s, 1,234 steps, ...)

Nothing is written outside the temporary folder (settings, runs and the data cache all live there).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="how long to measure while training")
    ap.add_argument("--preset", default=None, help="model preset (default: the Train tab's default)")
    ap.add_argument("--preview-every", type=int, default=None, help="preview grid every N steps")
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="ddpm-gui-stall-"))
    os.environ.setdefault("DDPM_GUI_CACHE", str(tmp / "cache"))
    os.environ["HOME"] = str(tmp / "home")  # the default run folder and any other per-user file

    from PySide6.QtCore import QElapsedTimer, QSettings, QTimer

    from ddpm_gui.qt.app import make_application
    from ddpm_gui.qt.main_window import MainWindow
    from ddpm_gui.selftest import wait_for

    app = make_application(sys.argv[:1])
    settings = QSettings(str(tmp / "settings.ini"), QSettings.Format.IniFormat)
    win = MainWindow(settings=settings)
    win.resize(1400, 900)
    win.show()
    win.start_engine()
    clock = QElapsedTimer()
    clock.start()

    def wait_until(cond, timeout_s: float) -> bool:
        return wait_for(app, cond, timeout_s)

    if not wait_until(win.is_ready, 120):
        print("the engine did not load within 120 s", file=sys.stderr)
        return 1
    panel = win.panel("TrainPanel")
    data_panel = win.panel("DataPanel")
    # the Data tab loads the built-in data at start-up; train on it as a user would
    wait_until(lambda: data_panel is None or data_panel.state.data is not None, 120)
    win.tabs.setCurrentWidget(panel)
    panel.set_run_dir(tmp / "runs" / "stall")
    if args.preset:
        panel.preset_combo.setCurrentIndex(panel.preset_combo.findData(args.preset))
    if args.preview_every is not None:
        panel.preview_spin.setValue(args.preview_every)
    if not panel.start():
        print(f"Start refused: {panel.config_error.text()}", file=sys.stderr)
        return 1
    # measure from the first Progress on (the trainer's own start-up, data to the device and model
    # building, runs in the worker too, but the first seconds are excluded so that the figure is the
    # steady state a user watches)
    wait_until(lambda: panel.loss_plot.n_points > 0 or not panel.is_busy(), 300)
    gaps: list[float] = []
    last = [clock.nsecsElapsed()]

    def tick() -> None:
        now = clock.nsecsElapsed()
        gaps.append((now - last[0]) / 1e6)
        last[0] = now

    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(tick)
    step0 = panel.last_step
    last[0] = clock.nsecsElapsed()
    timer.start()
    t0 = time.monotonic()
    end = t0 + args.seconds
    while time.monotonic() < end and panel.is_busy():
        app.processEvents()
        time.sleep(0.001)
    timer.stop()
    steps = panel.last_step - step0
    points = panel.loss_plot.n_points
    panel.stop()
    wait_until(lambda: not panel.is_busy(), 120)
    win.close_without_asking()
    win.shutdown()
    gaps.sort()
    if not gaps:
        print("no ticks recorded", file=sys.stderr)
        return 1
    p99 = gaps[min(len(gaps) - 1, int(0.99 * len(gaps)))]
    print(
        f"training stall: longest {gaps[-1]:.1f} ms, 99th percentile {p99:.1f} ms, median {gaps[len(gaps) // 2]:.1f} ms "
        f"over {len(gaps)} ticks of 10 ms ({time.monotonic() - t0:.0f} s, {steps:,} steps, {points:,} loss points, "
        f"platform {app.platformName()}, preset {panel.build_config().preset})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
