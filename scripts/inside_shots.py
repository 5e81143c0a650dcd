#!/usr/bin/env python3
"""Take the screenshots of docs/inside.md from the real window, with the demo model that ships with the app.

    xvfb-run -a -s "-screen 0 1280x800x24" python scripts/inside_shots.py
    QT_QPA_PLATFORM=offscreen python scripts/inside_shots.py --size 1024x768      # no X server needed

Writes sample-terms, ab, denoise-inpaint, train-schedule, train-step and toy2d (.png, or -<size>.png at a
size other than 1280x800) into --out. Settings, caches and the short training run live in a temporary
folder.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="docs/img", help="folder for the PNGs")
    ap.add_argument("--size", default="1280x800", help="window size WIDTHxHEIGHT")
    ap.add_argument("--toy-steps", type=int, default=2000, help="training steps of the 2D tab")
    args = ap.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    suffix = "" if args.size == "1280x800" else f"-{args.size}"
    tmp = Path(tempfile.mkdtemp(prefix="ddpm-gui-inside-"))
    os.environ.setdefault("DDPM_GUI_CACHE", str(tmp / "cache"))
    os.environ["HOME"] = str(tmp / "home")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from PySide6.QtCore import QSettings, Qt
    from PySide6.QtTest import QTest

    from ddpm_gui.qt.app import make_application
    from ddpm_gui.qt.main_window import MainWindow
    from ddpm_gui.qt.state import DEMO_SETTING

    app = make_application(sys.argv[:1])
    settings = QSettings(str(tmp / "settings.ini"), QSettings.Format.IniFormat)
    settings.setValue("data/limit", 300)
    settings.setValue(DEMO_SETTING, True)
    win = MainWindow(settings=settings)
    win.resize(width, height)
    win.show()
    win.start_engine()

    def wait(cond, timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > end:
                raise SystemExit(f"timed out waiting for {what}")
            app.processEvents()
            time.sleep(0.01)

    def settle(seconds: float = 0.7) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            app.processEvents()
            time.sleep(0.01)

    def shot(panel, name: str) -> None:
        win.tabs.setCurrentWidget(panel)
        settle()
        path = out / f"{name}{suffix}.png"
        win.grab().save(str(path))
        print(f"wrote {path}")

    wait(win.is_ready, 120, "the engine")
    wait(
        lambda: win.state.bundle_is_demo and win.state.data is not None and not win.is_busy(), 180, "the demo"
    )

    # every term of a step: class 1 (square), guidance 3, image 4, mid-chain
    sample = win.panel("SamplePanel")
    win.tabs.setCurrentWidget(sample)
    sample.class_combo.setCurrentIndex(2)
    sample.guidance_spin.setValue(3.0)
    sample.n_spin.setValue(16)
    if not sample.generate():
        raise SystemExit("the Sample tab could not generate")
    wait(lambda: not sample.is_busy(), 900, "sampling")
    sample.view_tabs.setCurrentWidget(sample.terms_view)
    sample.terms_view.set_image(3)
    sample.player.set_current(sample.player.count() // 2)
    shot(sample, "sample-terms")

    # A/B: DDIM 50 steps at guidance 3 against DPM-Solver++ 10 steps at guidance 1, on the same noise
    ab = win.panel("ABPanel")
    win.tabs.setCurrentWidget(ab)
    settle()
    ab.a_form.class_combo.setCurrentIndex(3)
    ab.a_form.sampler_form.set_key("ddim")
    ab.a_form.guidance_spin.setValue(3.0)
    ab.b_form.copy_from(ab.a_form)
    ab.b_form.sampler_form.set_key("dpm++2m")
    ab.b_form.sampler_form.steps_spin.setValue(10)
    ab.b_form.guidance_spin.setValue(1.0)
    ab.compare()
    wait(lambda: not ab.is_busy(), 900, "the A/B chains")
    ab.player.set_current(ab.session.result.count() // 3)
    shot(ab, "ab")

    # inpainting: one arm of the plus painted over and redrawn 8 ways
    den = win.panel("DenoisePanel")
    win.tabs.setCurrentWidget(den)
    settle()
    den.form.inpaint_check.setChecked(True)
    den.form.k_spin.setValue(8)
    den.form.resample_spin.setValue(2)
    painter = den.mask_editor.painter
    den.mask_editor.brush_spin.setValue(5)
    settle()
    at = [painter.to_widget(x, y).toPoint() for x, y in [(3, 4), (8, 8), (12, 12)]]
    QTest.mousePress(painter, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, at[0])
    for q in at[1:]:
        QTest.mouseMove(painter, q)
    QTest.mouseRelease(painter, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, at[-1])
    if not den.run():
        raise SystemExit("the Denoise tab could not inpaint: " + den.error_label.text())
    wait(lambda: not den.is_busy(), 900, "inpainting")
    shot(den, "denoise-inpaint")

    # a schedule from the Forward tab, shown on the Train form; then one step of a paused run
    from ddpm_gui.core.spec import ScheduleConfig

    fwd = win.panel("ForwardPanel")
    win.tabs.setCurrentWidget(fwd)
    fwd.set_schedule(ScheduleConfig(kind="linear", T=200, beta_start=1e-4, beta_end=0.03))
    settle()
    fwd.train_btn.click()
    train = win.panel("TrainPanel")
    shot(train, "train-schedule")
    train.preset_combo.setCurrentIndex(train.preset_combo.findData("tiny"))
    train.batch_spin.setValue(16)
    train.steps_spin.setValue(100000)
    train.preview_spin.setValue(0)
    train.set_run_dir(tmp / "run")
    train.set_overrides(log_every=1, checkpoint_minutes=0, checkpoint_every=0)
    if not train.start():
        raise SystemExit("the Train tab could not start: " + train.form.config_error.text())
    wait(lambda: train.last_step >= 3, 600, "training steps")
    train.pause()
    wait(lambda: "Paused" in train.stats_label.text(), 300, "the pause")
    train.step_once()
    wait(lambda: train.view.step_view.last is not None, 300, "one step")
    shot(train, "train-step")
    train.stop()
    wait(lambda: not train.is_busy(), 300, "the run to stop")

    # 2D: two moons, the default training, the reverse process at its end with the arrows
    toy = win.panel("Toy2DPanel")
    win.tabs.setCurrentWidget(toy)
    toy.steps_spin.setValue(args.toy_steps)
    sampled: list[int] = []
    toy.sampled.connect(lambda *a: sampled.append(1))
    toy.start_training()
    wait(lambda: bool(sampled) and not toy.is_busy(), 1800, "the 2D model")
    toy.player.pause()
    toy.player.set_current(toy.player.count() - 1)
    wait(lambda: not toy.is_busy(), 300, "the arrows")
    shot(toy, "toy2d")

    win.close_without_asking()
    settle(0.5)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
