#!/usr/bin/env python3
"""Take the README's screenshots (docs/img/*.png) from the real app, driven the way a person would.

    xvfb-run -a -s "-screen 0 1280x800x24" python scripts/screenshots.py --run runs/quick
    xvfb-run -a -s "-screen 0 1024x768x24" python scripts/screenshots.py --run runs/quick --size 1024x768
    QT_QPA_PLATFORM=offscreen python scripts/screenshots.py --run runs/quick      # no X server needed

At a --size other than the default 1280x800 the PNGs are named `<tab>-<size>.png`.

`--run` is a finished run folder (e.g. from `ddpm-gui train --recipe quick-cpu --out runs/quick`): the Train
tab resumes a copy of it for `--extra-steps` more steps (so the loss curve and the previews of a trained
model are on screen), then the Sample and Denoise tabs use its weights. Everything else (settings, data
cache, the copy of the run) lives in a temporary folder; only the PNGs in --out are written.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path


def wait_for(app, win, cond, timeout: float, what: str, detail=None) -> None:
    """Process events until `cond()`; every 30 s say what it still waits for (with `detail()` and the
    status bar), so that a stall shows where it is; on timeout, print every thread's stack and stop."""
    start = time.monotonic()
    end, next_note = start + timeout, start + 30
    while not cond():
        now = time.monotonic()
        if now > end or now > next_note:
            extra = f"; {detail()}" if detail is not None else ""
            status = win.statusBar().currentMessage()
            print(f"  waiting for {what}: {now - start:.0f} s{extra}; status bar: {status!r}", flush=True)
            next_note = now + 30
        if now > end:
            import faulthandler

            faulthandler.dump_traceback(all_threads=True)
            raise SystemExit(f"timed out waiting for {what} after {timeout:.0f} s")
        app.processEvents()
        time.sleep(0.01)


def wait_for_run(wait, train, steps: int) -> None:
    """Wait for the Train tab's run to end; stop with its error unless it reached `steps`."""
    error = train.view.error_label
    wait(
        lambda: not train.is_busy(),
        900,
        "the training run",
        lambda: f"step {train.last_step:,} of {steps:,}; error: {error.text()!r}",
    )
    done = train.last_finished
    if done is None or train.last_step < steps:
        why = done.reason if done is not None else "no Finished event"
        raise SystemExit(
            f"the resumed run ended at step {train.last_step:,} of {steps:,} ({why}): {error.text()}"
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a finished run folder whose weights the tabs use")
    ap.add_argument("--out", default="docs/img", help="folder for the PNGs")
    ap.add_argument("--extra-steps", type=int, default=60, help="steps the Train tab runs on the copy")
    ap.add_argument("--size", default="1280x800", help="window size WIDTHxHEIGHT")
    ap.add_argument("--runs", help="a runs folder: the Runs tab compares its runs (runs.png)")
    ap.add_argument(
        "--diffusers", help="a diffusers model folder: the Denoise tab runs on it (diffusers-denoise.png)"
    )
    args = ap.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    suffix = "" if args.size == "1280x800" else f"-{args.size}"

    tmp = Path(tempfile.mkdtemp(prefix="ddpm-gui-shots-"))
    os.environ.setdefault("DDPM_GUI_CACHE", str(tmp / "cache"))
    os.environ["HOME"] = str(tmp / "home")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    # the Train tab resumes a copy for a few more steps (a finished run has nothing left to do)
    run = tmp / "run"
    shutil.copytree(args.run, run)
    from ddpm_gui.engine.config import RUN_CONFIG, config_toml, load_run_config

    cfg = load_run_config(run)
    cfg = replace(cfg, steps=cfg.steps + args.extra_steps, preview_every=max(10, args.extra_steps // 2))
    (run / RUN_CONFIG).write_text(config_toml(cfg))

    from PySide6.QtCore import QSettings

    from ddpm_gui.qt.app import make_application
    from ddpm_gui.qt.main_window import MainWindow

    app = make_application(sys.argv[:1])  # the app's own style, palette and icon, as `ddpm-gui` has them
    settings = QSettings(str(tmp / "settings.ini"), QSettings.Format.IniFormat)
    win = MainWindow(settings=settings)
    win.resize(width, height)
    win.show()
    win.start_engine()

    def wait(cond, timeout: float, what: str, detail=None) -> None:
        wait_for(app, win, cond, timeout, what, detail)

    def settle(seconds: float = 0.5) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            app.processEvents()
            time.sleep(0.01)

    def tab(panel: str) -> int:
        """The tab index of a panel, by its class name (the tab order may change)."""
        from ddpm_gui.qt.panels import PANELS

        return next(i for i, (_m, cls, _t) in enumerate(PANELS) if cls == panel)

    def shot(panel: str, name: str) -> None:
        win.tabs.setCurrentIndex(tab(panel))
        settle()
        path = out / f"{name}{suffix}.png"
        win.grab().save(str(path))
        print(f"wrote {path}")

    def sample_shot(name: str, what: str, at: float) -> None:
        """Generate 16 images on the Sample tab and shoot the frame at `at` (0..1) of the chain."""
        win.tabs.setCurrentIndex(tab("SamplePanel"))
        settle()
        sample.n_spin.setValue(16)
        if not sample.generate():
            raise SystemExit(f"the Sample tab could not generate from {what}")
        wait(lambda: not sample.is_busy(), 900, f"sampling {what}")
        sample.player.set_current(min(int(sample.player.count() * at), sample.player.count() - 1))
        shot("SamplePanel", name)

    def denoise_shot(name: str, what: str) -> None:
        win.tabs.setCurrentIndex(tab("DenoisePanel"))
        settle()
        if not den.run():
            raise SystemExit("the Denoise tab could not run: " + den.error_label.text())
        wait(lambda: not den.is_busy(), 900, f"denoising with {what}")
        shot("DenoisePanel", name)

    wait(win.is_ready, 120, "the engine")
    sample, den = win.panel("SamplePanel"), win.panel("DenoisePanel")  # built once the engine has loaded
    wait(lambda: win.state.data is not None and not win.is_busy(), 120, "the built-in data")
    shot("DataPanel", "data")

    # first launch: before anything is trained, the Sample tab samples from the demo model
    wait(lambda: win.state.bundle_is_demo, 120, "the demo model")
    sample_shot("first-launch-sample", "the demo model", at=1.0)

    fwd = win.panel("ForwardPanel")
    fwd.index_spin.setValue(3)
    wait(lambda: not fwd.is_busy() and fwd.frame_count() > 30, 60, "the forward frames")
    fwd.player.set_current(30)
    shot("ForwardPanel", "forward")

    train = win.panel("TrainPanel")
    win.tabs.setCurrentIndex(tab("TrainPanel"))
    if not train.resume_run(run):
        raise SystemExit("the Train tab could not resume the run: " + train.error_label.text())
    wait_for_run(wait, train, cfg.steps)
    shot("TrainPanel", "train")

    sample_shot("sample", "the trained run", at=0.7)
    denoise_shot("denoise", "the trained run")

    if args.diffusers:
        win.open_checkpoint(args.diffusers)
        wait(
            lambda: win.state.bundle is not None and "diffusers" in win.state.bundle.preset, 300, "the model"
        )
        denoise_shot("diffusers-denoise", "the diffusers model")

    if args.runs:
        runs_panel = win.panel("RunsPanel")
        win.tabs.setCurrentIndex(tab("RunsPanel"))
        runs_panel.choose_folder(args.runs)
        settle(1.0)
        runs_panel.select(sorted(p for p in Path(args.runs).iterdir() if p.is_dir()))
        settle(2.0)
        shot("RunsPanel", "runs")

    win.close_without_asking()
    settle(0.5)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
