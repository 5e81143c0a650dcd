#!/usr/bin/env python3
"""Take the screenshots of docs/inside.md from the real window, with the demo model that ships with the app.

    xvfb-run -a -s "-screen 0 1280x800x24" python scripts/inside_shots.py
    QT_QPA_PLATFORM=offscreen python scripts/inside_shots.py --size 1024x768      # no X server needed

Writes sample-terms, ab, denoise-inpaint, train-schedule, train-step and toy2d (.png, or -<size>.png at a
size other than 1280x800) into --out; `--only ab,toy2d` takes some of them (train-step takes
train-schedule too). Settings, caches and the short training run live in a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path


class Window:
    """The app's main window with the demo model, and the ways a script waits for it and shoots it."""

    def __init__(self, size: str, out: Path, toy_steps: int):
        from PySide6.QtCore import QSettings

        from ddpm_gui.qt.app import make_application
        from ddpm_gui.qt.main_window import MainWindow
        from ddpm_gui.qt.state import DEMO_SETTING

        width, height = (int(v) for v in size.lower().split("x"))
        self.suffix = "" if size == "1280x800" else f"-{size}"
        self.out, self.toy_steps = out, toy_steps
        self.tmp = Path(tempfile.mkdtemp(prefix="ddpm-gui-inside-"))
        os.environ.setdefault("DDPM_GUI_CACHE", str(self.tmp / "cache"))
        os.environ["HOME"] = str(self.tmp / "home")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.app = make_application(sys.argv[:1])
        settings = QSettings(str(self.tmp / "settings.ini"), QSettings.Format.IniFormat)
        settings.setValue("data/limit", 300)
        settings.setValue(DEMO_SETTING, True)
        self.win = MainWindow(settings=settings)
        self.win.resize(width, height)
        self.win.show()
        self.win.start_engine()
        self.wait(self.win.is_ready, 120, "the engine")
        state = self.win.state
        self.wait(
            lambda: state.bundle_is_demo and state.data is not None and not self.win.is_busy(),
            180,
            "the demo",
        )

    def wait(self, cond, timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > end:
                raise SystemExit(f"timed out waiting for {what}")
            self.app.processEvents()
            time.sleep(0.01)

    def settle(self, seconds: float = 0.7) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.app.processEvents()
            time.sleep(0.01)

    def shot(self, panel, name: str) -> None:
        self.win.tabs.setCurrentWidget(panel)
        self.settle()
        path = self.out / f"{name}{self.suffix}.png"
        self.win.grab().save(str(path))
        print(f"wrote {path}")

    def close(self) -> None:
        self.win.close_without_asking()
        self.settle(0.5)
        shutil.rmtree(self.tmp, ignore_errors=True)


def shot_sample_terms(w: Window) -> None:
    """Every term of a step: class 1 (square), guidance 3, image 4, mid-chain."""
    sample = w.win.panel("SamplePanel")
    w.win.tabs.setCurrentWidget(sample)
    sample.class_combo.setCurrentIndex(2)
    sample.guidance_spin.setValue(3.0)
    sample.n_spin.setValue(16)
    if not sample.generate():
        raise SystemExit("the Sample tab could not generate")
    w.wait(lambda: not sample.is_busy(), 900, "sampling")
    sample.view_tabs.setCurrentWidget(sample.terms_view)
    sample.terms_view.set_image(3)
    sample.player.set_current(sample.player.count() // 2)
    w.shot(sample, "sample-terms")


def shot_ab(w: Window) -> None:
    """A/B: DDIM 50 steps at guidance 3 against DPM-Solver++ 10 steps at guidance 1, on the same noise."""
    ab = w.win.panel("ABPanel")
    w.win.tabs.setCurrentWidget(ab)
    w.settle()
    ab.a_form.class_combo.setCurrentIndex(3)
    ab.a_form.sampler_form.set_key("ddim")
    ab.a_form.guidance_spin.setValue(3.0)
    ab.b_form.copy_from(ab.a_form)
    ab.b_form.sampler_form.set_key("dpm++2m")
    ab.b_form.sampler_form.steps_spin.setValue(10)
    ab.b_form.guidance_spin.setValue(1.0)
    ab.compare()
    w.wait(lambda: not ab.is_busy(), 900, "the A/B chains")
    ab.player.set_current(ab.session.result.count() * 2 // 3)
    w.shot(ab, "ab")


def shot_denoise_inpaint(w: Window) -> None:
    """Inpainting: one arm of the plus painted over and redrawn 8 ways."""
    from PySide6.QtCore import Qt
    from PySide6.QtTest import QTest

    den = w.win.panel("DenoisePanel")
    w.win.tabs.setCurrentWidget(den)
    w.settle()
    den.form.inpaint_check.setChecked(True)
    den.form.k_spin.setValue(8)
    den.form.resample_spin.setValue(2)
    painter = den.mask_editor.painter
    den.mask_editor.brush_spin.setValue(5)
    w.settle()
    at = [painter.to_widget(x, y).toPoint() for x, y in [(3, 4), (8, 8), (12, 12)]]
    QTest.mousePress(painter, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, at[0])
    for q in at[1:]:
        QTest.mouseMove(painter, q)
    QTest.mouseRelease(painter, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, at[-1])
    if not den.run():
        raise SystemExit("the Denoise tab could not inpaint: " + den.error_label.text())
    w.wait(lambda: not den.is_busy(), 900, "inpainting")
    w.shot(den, "denoise-inpaint")


def shot_train_step(w: Window) -> None:
    """A schedule from the Forward tab, shown on the Train form; then one step of a paused run."""
    from ddpm_gui.core.spec import ScheduleConfig

    fwd = w.win.panel("ForwardPanel")
    w.win.tabs.setCurrentWidget(fwd)
    fwd.set_schedule(ScheduleConfig(kind="linear", T=200, beta_start=1e-4, beta_end=0.03))
    w.settle()
    fwd.train_btn.click()
    train = w.win.panel("TrainPanel")
    w.shot(train, "train-schedule")
    train.preset_combo.setCurrentIndex(train.preset_combo.findData("tiny"))
    train.batch_spin.setValue(16)
    train.steps_spin.setValue(100000)
    train.preview_spin.setValue(0)
    train.set_run_dir(w.tmp / "run")
    train.set_overrides(log_every=1, checkpoint_minutes=0, checkpoint_every=0)
    if not train.start():
        raise SystemExit("the Train tab could not start: " + train.form.config_error.text())
    w.wait(lambda: train.last_step >= 3, 600, "training steps")
    train.pause()
    w.wait(lambda: "Paused" in train.stats_label.text(), 300, "the pause")
    train.step_once()
    w.wait(lambda: train.view.step_view.last is not None, 300, "one step")
    w.shot(train, "train-step")
    train.stop()
    w.wait(lambda: not train.is_busy(), 300, "the run to stop")


def shot_toy2d(w: Window) -> None:
    """2D: two moons, the default training, the reverse process at its end with the arrows."""
    toy = w.win.panel("Toy2DPanel")
    w.win.tabs.setCurrentWidget(toy)
    toy.steps_spin.setValue(w.toy_steps)
    sampled: list[int] = []
    toy.sampled.connect(lambda *a: sampled.append(1))
    toy.start_training()
    w.wait(lambda: bool(sampled), 1800, "the 2D model")
    toy.player.pause()  # the reverse process plays on its own once sampled
    toy.player.set_current(toy.player.count() - 1)
    w.wait(lambda: not toy.is_busy(), 300, "the arrows")
    w.shot(toy, "toy2d")


SHOTS = {
    "sample-terms": shot_sample_terms,
    "ab": shot_ab,
    "denoise-inpaint": shot_denoise_inpaint,
    "train-step": shot_train_step,
    "toy2d": shot_toy2d,
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="docs/img", help="folder for the PNGs")
    ap.add_argument("--size", default="1280x800", help="window size WIDTHxHEIGHT")
    ap.add_argument("--toy-steps", type=int, default=2000, help="training steps of the 2D tab")
    ap.add_argument("--only", default="", help=f"some of the shots, comma-separated: {', '.join(SHOTS)}")
    args = ap.parse_args(argv)
    only = [n.strip() for n in args.only.split(",") if n.strip()] or list(SHOTS)
    unknown = [n for n in only if n not in SHOTS]
    if unknown:
        ap.error(f"unknown shot {', '.join(unknown)}: choose from {', '.join(SHOTS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    w = Window(args.size, out, args.toy_steps)
    for name in only:
        SHOTS[name](w)
    w.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
