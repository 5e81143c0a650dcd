"""`ddpm-gui --self-test`: prove that this installation works, in under a minute, touching nothing.

It runs the same way from a pip install, from the PyInstaller bundle and from the installed `.deb`:
offscreen (unless the caller chose a Qt platform), it opens the main window, waits for the engine to
load in the background, loads the built-in data (and a parquet file through `datasets`, the library
the bundle must carry although the app imports it lazily; skipped, and said, where the optional `hub`
extra is not installed), trains the `tiny` preset a few steps,
samples from the checkpoint, grabs the window with that model in place of the demo model (which ships
with the app and is loaded at start), and prints one line per check:

    ok  window opened: 'DDPM Studio', 6 tabs (Data, Forward process, Train, Sample, Denoise, Runs)
    ...
    self-test passed: 11 checks in 14.2 s

and exits 0; the first failure prints `FAIL <check>: <reason>` and exits 1.

Everything the app could write goes to one `tempfile.TemporaryDirectory`, removed at the end: the
decoded-data cache (DDPM_GUI_CACHE), the Hugging Face caches (HF_HOME, offline), QSettings (an INI file),
the training run folder, and HOME/XDG_* themselves (so fonts caches and anything else that follows the
home folder lands there too). No bytecode is written. A last check compares the user's real cache,
settings and runs folders before and after.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ddpm_gui.qt.panels import PANELS  # the tab table only: imports no Qt

TAB_TITLES = [title for _module, _cls, title in PANELS]
ENGINE_TIMEOUT_S = 90.0  # a cold start from a slow disk; on this machine it takes 3-6 s
DATA_TIMEOUT_S = 60.0
N_IMAGES = 256
IMAGE_SIZE = 16  # the plumbing is the same at 32; 4x less work keeps a busy 2-core machine under a minute
TRAIN_STEPS = 5
BATCH = 8
SAMPLES = 2
DDIM_STEPS = 5


class CheckFailed(Exception):
    pass


class _Checks:
    def __init__(self, out=None):
        self.out = out or sys.stdout
        self.passed = 0
        self.t0 = time.perf_counter()

    def ok(self, name: str, detail: str) -> None:
        self.passed += 1
        print(f"ok  {name}: {detail}", file=self.out, flush=True)

    def run(self, name: str, fn: Callable[[], str]) -> None:
        """Run one check; `fn` returns the detail to print, or raises (CheckFailed or anything)."""
        try:
            detail = fn()
        except CheckFailed as exc:
            raise _Failure(name, str(exc)) from None
        except Exception as exc:
            if os.environ.get("DDPM_GUI_DEBUG"):
                traceback.print_exc()
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise _Failure(name, f"{type(exc).__name__}: {text}" if text else type(exc).__name__) from None
        self.ok(name, detail)


class _Failure(Exception):
    def __init__(self, check: str, reason: str):
        super().__init__(f"{check}: {reason}")
        self.check = check
        self.reason = reason


def _need(cond: bool, reason: str) -> None:
    if not cond:
        raise CheckFailed(reason)


# --------------------------------------------------------------------------- isolation


@contextmanager
def _isolated_environment(tmp: Path):
    """Point every place the app (or a library under it) writes to inside `tmp`; restore afterwards."""
    home = tmp / "home"
    paths = {
        "HOME": home,
        "XDG_CONFIG_HOME": home / ".config",
        "XDG_CACHE_HOME": home / ".cache",
        "XDG_DATA_HOME": home / ".local" / "share",
        "XDG_STATE_HOME": home / ".local" / "state",
        "DDPM_GUI_CACHE": tmp / "ddpm-cache",
        "HF_HOME": tmp / "hf",
        "HF_DATASETS_CACHE": tmp / "hf" / "datasets",
        "TORCH_HOME": tmp / "torch",
        "TORCHINDUCTOR_CACHE_DIR": tmp / "torchinductor",
        "MPLCONFIGDIR": tmp / "mpl",
    }
    flags = {
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    }
    for p in paths.values():
        p.mkdir(parents=True, exist_ok=True)
    new = {k: str(v) for k, v in paths.items()} | flags
    if not os.environ.get("QT_QPA_PLATFORM"):
        new["QT_QPA_PLATFORM"] = "offscreen"
    if os.name != "nt" and not os.environ.get("XDG_RUNTIME_DIR"):
        rt = tmp / "runtime"
        rt.mkdir(mode=0o700, exist_ok=True)
        new["XDG_RUNTIME_DIR"] = str(rt)  # Qt warns without one
    saved = {k: os.environ.get(k) for k in new}
    saved_bytecode = sys.dont_write_bytecode
    os.environ.update(new)
    sys.dont_write_bytecode = True
    try:
        yield
    finally:
        sys.dont_write_bytecode = saved_bytecode
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _watched_paths() -> list[Path]:
    """Where the app writes when it is not isolated: the data cache, the QSettings file, the runs folder."""
    home = Path(os.path.expanduser("~"))
    cache = Path(os.environ.get("XDG_CACHE_HOME") or home / ".cache")
    config = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config")
    paths = [cache / "ddpm_gui", config / "DDPM Studio", home / "DDPM Studio"]
    if os.environ.get("DDPM_GUI_CACHE"):
        paths.append(Path(os.environ["DDPM_GUI_CACHE"]).expanduser())
    if os.environ.get("HF_HOME"):
        paths.append(Path(os.environ["HF_HOME"]).expanduser())
    return paths


def _snapshot(paths: list[Path]) -> dict[str, tuple]:
    """(size, mtime) of every file under `paths` (they hold a few files; a data cache a few dozen)."""
    state: dict[str, tuple] = {}
    for root in paths:
        if not root.exists():
            continue
        if root.is_file():
            st = root.stat()
            state[str(root)] = (st.st_size, st.st_mtime_ns)
            continue
        for dirpath, _dirnames, filenames in os.walk(root):
            state[dirpath] = ("dir",)
            for f in filenames:
                p = os.path.join(dirpath, f)
                try:
                    st = os.stat(p)
                except OSError:
                    continue
                state[p] = (st.st_size, st.st_mtime_ns)
    return state


# --------------------------------------------------------------------------- the test


def wait_for(app, cond: Callable[[], bool], timeout_s: float) -> bool:
    end = time.perf_counter() + timeout_s
    while not cond():
        if time.perf_counter() > end:
            return False
        app.processEvents()
        time.sleep(0.01)
    return True


def _grab_stats(widget) -> tuple[int, int, float]:
    """(width, height, standard deviation of the grey levels) of the widget's real pixels."""
    import numpy as np
    from PySide6.QtGui import QImage

    img = widget.grab().toImage().convertToFormat(QImage.Format.Format_RGB888)
    w, h = img.width(), img.height()
    if w == 0 or h == 0:
        return w, h, 0.0
    arr = np.frombuffer(img.constBits(), np.uint8, count=img.sizeInBytes()).reshape(h, img.bytesPerLine())
    arr = arr[:, : w * 3].reshape(h, w, 3)
    return w, h, float(arr.std())


def _check_qt_platform() -> None:
    """Fail with a reason, instead of Qt's abort, when the chosen platform plugin is missing or has no display."""
    from PySide6.QtCore import QLibraryInfo
    from PySide6.QtWidgets import QApplication

    if QApplication.instance() is not None:
        return
    name = os.environ.get("QT_QPA_PLATFORM", "").split(";")[0].split(":")[0].strip()
    if not name:
        return
    dirs = [Path(QLibraryInfo.path(QLibraryInfo.LibraryPath.PluginsPath)) / "platforms"]
    dirs += [Path(p) for p in os.environ.get("QT_QPA_PLATFORM_PLUGIN_PATH", "").split(os.pathsep) if p]
    found = sorted({f.name for d in dirs if d.is_dir() for f in d.iterdir() if f.is_file()})
    stem = name.split("-")[0].lower()
    if not any(stem in f.lower() for f in found):
        raise CheckFailed(
            f"Qt has no '{name}' platform plugin (looked in {', '.join(str(d) for d in dirs)}; "
            f"found: {', '.join(found) or 'nothing'})"
        )
    if name == "xcb" and not os.environ.get("DISPLAY"):
        raise CheckFailed(
            "QT_QPA_PLATFORM is xcb but DISPLAY is not set: unset QT_QPA_PLATFORM to run offscreen"
        )


def _parquet_check(d, tmp: Path) -> str:
    """Write the first images of `d` (the built-in data) as parquet with `datasets` and read them back; said
    skipped where `datasets` (the optional `hub` extra) is not installed: the app works without it."""
    import numpy as np

    from ddpm_gui.data import HUB_EXTRA_INSTALL, datasets_available, load_data

    if not datasets_available():
        return f"skipped: datasets is not installed ({HUB_EXTRA_INSTALL} adds it)"
    t0 = time.perf_counter()
    import datasets
    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as HFImage
    from PIL import Image

    n = 16
    features = Features({"img": HFImage(), "label": ClassLabel(names=list(d.class_names))})
    rows = {"img": [Image.fromarray(a) for a in d.images[:n]], "label": [int(x) for x in d.labels[:n]]}
    path = tmp / "shapes.parquet"
    Dataset.from_dict(rows, features=features).to_parquet(str(path))
    back = load_data(str(path), image_size=IMAGE_SIZE)
    _need(back.images.shape == (n, IMAGE_SIZE, IMAGE_SIZE, 3), f"read back {back.images.shape}")
    _need(np.array_equal(back.images, d.images[:n]), "the images read back differ from those written")
    _need(back.labels.tolist() == d.labels[:n].tolist(), "the labels read back differ")
    return f"datasets {datasets.__version__}: wrote and read back {n} images as parquet in {time.perf_counter() - t0:.2f} s"


class _SelfTestRun:
    """The checks in order; each method is one check and keeps what later checks need on self."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.app: Any = None
        self.settings: Any = None
        self.win: Any = None
        self.data: Any = None
        self.run_dir: Path | None = None
        self.bundle: Any = None

    def steps(self) -> list:
        return [
            ("application", self.make_app),
            ("window opened", self.open_window),
            ("engine loaded", self.engine),
            ("data panel", self.panel_data),
            ("built-in data", self.builtin_data),
            ("parquet via datasets", lambda: _parquet_check(self.data, self.tmp)),
            ("training", self.train),
            ("sampling", self.sample),
            ("window grab", self.show_model),
        ]

    # --- Qt: the application, the resources, the window
    def make_app(self) -> str:
        from PySide6.QtCore import QSettings, qVersion

        from ddpm_gui.qt.app import make_application, resource_path

        _check_qt_platform()  # Qt aborts the process when its platform cannot start: say why first
        app = make_application([sys.argv[0] if sys.argv else "ddpm-gui"])
        ini = self.tmp / "settings.ini"
        settings = QSettings(str(ini), QSettings.Format.IniFormat)
        # the Data panel autoloads the built-in shapes at start: keep it small
        settings.setValue("data/kind", "builtin")
        settings.setValue("data/size", IMAGE_SIZE)
        settings.setValue("data/limit", N_IMAGES)
        settings.sync()
        self.app, self.settings = app, settings
        icons = [resource_path(n) for n in ("ddpm-gui.svg", "ddpm-gui.png")]
        _need(
            all(p is not None for p in icons), "the icons (ddpm-gui.svg/.png) are not in any resource folder"
        )
        _need(not app.windowIcon().isNull(), "the window icon did not load")
        return f"Qt {qVersion()}, icons from {icons[0].parent}"

    def open_window(self) -> str:
        from ddpm_gui.qt.main_window import MainWindow

        t0 = time.perf_counter()
        win = MainWindow(settings=self.settings)
        self.win = win
        self.win.resize(1280, 800)
        self.win.show()
        self.win.start_engine()
        self.app.processEvents()
        _need(self.win.isVisible(), "the window is not visible after show()")
        title = self.win.windowTitle()
        _need("DDPM Studio" in title, f"the title is {title!r}")
        tabs = [self.win.tabs.tabText(i) for i in range(self.win.tabs.count())]
        _need(tabs == TAB_TITLES, f"the tabs are {tabs}, expected {TAB_TITLES}")
        return f"{title!r}, {len(tabs)} tabs ({', '.join(tabs)}) in {time.perf_counter() - t0:.2f} s"

    def engine(self) -> str:
        t0 = time.perf_counter()
        if not wait_for(self.app, self.win.is_ready, ENGINE_TIMEOUT_S):
            msg = self.win.statusBar().currentMessage()
            raise CheckFailed(f"not ready after {ENGINE_TIMEOUT_S:.0f} s (status bar: {msg!r})")
        missing = [t for (_m, cls, t) in _panels() if self.win.panel(cls) is None]
        _need(not missing, f"these tabs have no panel: {', '.join(missing)}")
        import torch

        return (
            f"PyTorch {torch.__version__} loaded in the background and {len(_panels())} panels built in "
            f"{time.perf_counter() - t0:.2f} s"
        )

    def panel_data(self) -> str:
        t0 = time.perf_counter()
        ok = wait_for(
            self.app, lambda: self.win.state.data is not None and not self.win.is_busy(), DATA_TIMEOUT_S
        )
        _need(ok, f"the Data panel loaded nothing in {DATA_TIMEOUT_S:.0f} s")
        d = self.win.state.data
        _need(len(d) == N_IMAGES, f"the Data panel loaded {len(d)} images, expected {N_IMAGES}")
        return f"the Data panel autoloaded {d.name}: {len(d)} images in {time.perf_counter() - t0:.2f} s"

    # --- the engine, headless (what the panels run in their threads)
    def builtin_data(self) -> str:
        import numpy as np

        from ddpm_gui.data import default_cache_dir, load_data

        t0 = time.perf_counter()
        d = load_data(f"builtin:{N_IMAGES}", image_size=IMAGE_SIZE)
        _need(d.images.shape == (N_IMAGES, IMAGE_SIZE, IMAGE_SIZE, 3), f"images are {d.images.shape}")
        _need(d.images.dtype == np.uint8, f"images are {d.images.dtype}")
        _need(d.num_classes == 10, f"{d.num_classes} classes, expected 10")
        _need(Path(default_cache_dir()).is_relative_to(self.tmp), f"the data cache is {default_cache_dir()}")
        self.data = d
        return (
            f"builtin:{N_IMAGES} -> {d.images.shape} uint8, {d.num_classes} classes, no download, "
            f"{time.perf_counter() - t0:.2f} s"
        )

    def train(self) -> str:
        import math

        from ddpm_gui.engine import events as ev
        from ddpm_gui.engine.config import TrainConfig
        from ddpm_gui.engine.trainer import Trainer

        t0 = time.perf_counter()
        run_dir = self.tmp / "run"
        cfg = TrainConfig(
            data=f"builtin:{N_IMAGES}",
            image_size=IMAGE_SIZE,
            preset="tiny",
            steps=TRAIN_STEPS,
            batch_size=BATCH,
            warmup_steps=0,
            device="cpu",
            log_every=1,
            preview_every=0,
            checkpoint_every=0,
            checkpoint_minutes=0.0,
        )
        trainer = Trainer(cfg, run_dir, data=self.data)
        losses: list[float] = []
        finished = None
        for e in trainer.run():
            if isinstance(e, ev.Failed):
                raise CheckFailed(e.message)
            if isinstance(e, ev.Progress):
                losses.append(float(e.loss))
            if isinstance(e, ev.Finished):
                finished = e
            self.app.processEvents()  # keep the window alive while training runs in this thread
        _need(finished is not None, "training ended without a Finished event")
        _need(finished.step == TRAIN_STEPS, f"stopped at step {finished.step}, expected {TRAIN_STEPS}")
        _need(losses and all(math.isfinite(x) for x in losses), f"losses {losses}")
        ckpt = Path(finished.checkpoint) if finished.checkpoint else None
        _need(ckpt is not None and ckpt.exists(), f"no checkpoint written (got {finished.checkpoint})")
        _need(ckpt.resolve().is_relative_to(self.tmp.resolve()), f"the checkpoint went to {ckpt}")
        self.run_dir = run_dir
        return (
            f"tiny preset, {TRAIN_STEPS} steps of batch {BATCH} at {IMAGE_SIZE}x{IMAGE_SIZE}, loss "
            f"{losses[0]:.3f} -> {losses[-1]:.3f}, checkpoint {ckpt.name}, {time.perf_counter() - t0:.2f} s"
        )

    def sample(self) -> str:
        import numpy as np

        from ddpm_gui.engine.sampler import SampleConfig, load_bundle, sample_frames

        t0 = time.perf_counter()
        bundle = load_bundle(self.run_dir, device="cpu")
        _need(bundle.step == TRAIN_STEPS, f"the checkpoint is at step {bundle.step}, expected {TRAIN_STEPS}")
        cfg = SampleConfig(n=SAMPLES, sampler="ddim", steps=DDIM_STEPS, seed=0)
        frames = list(sample_frames(bundle, cfg))
        _need(frames and frames[-1].final, "the sampler yielded no final frame")
        x = frames[-1].xt
        _need(
            isinstance(x, np.ndarray) and x.dtype == np.uint8,
            f"samples are {type(x).__name__} {getattr(x, 'dtype', '')}",
        )
        _need(x.shape == (SAMPLES, IMAGE_SIZE, IMAGE_SIZE, 3), f"samples have shape {x.shape}")
        _need(all(int(im.max()) > int(im.min()) for im in x), "a sample is a constant image")
        self.bundle = bundle
        return (
            f"{SAMPLES} images {x.shape[1]}x{x.shape[2]} uint8 by DDIM in {DDIM_STEPS} steps from "
            f"{Path(bundle.source).name}, {time.perf_counter() - t0:.2f} s"
        )

    def show_model(self) -> str:
        state = self.win.state
        # the demo model that ships with the app (package data) was loaded at start, there being no model
        wait_for(self.app, lambda: state.bundle is not None, DATA_TIMEOUT_S)
        _need(
            state.bundle_is_demo,
            f"the demo model was not loaded at start (status bar: {self.win.statusBar().currentMessage()!r})",
        )
        demo = Path(state.bundle.source).name
        state.set_bundle(self.bundle)
        _need(
            state.bundle is self.bundle and not state.bundle_is_demo,
            "the trained model did not replace the demo",
        )
        self.app.processEvents()
        w, h, std = _grab_stats(self.win)
        _need(w > 0 and h > 0, f"the grab is {w}x{h}")
        _need(std > 1.0, f"the window grab is blank (grey-level standard deviation {std:.2f})")
        return (
            f"{w}x{h} pixels, grey-level standard deviation {std:.1f}, with the trained model set as current "
            f"(it replaced the demo model {demo}, loaded at start)"
        )


def _run_checks(tmp: Path, checks: _Checks) -> None:
    import platform

    from ddpm_gui import __version__

    frozen = getattr(sys, "frozen", False)
    where = "PyInstaller bundle" if frozen else "Python package"
    checks.ok(
        "environment",
        f"DDPM Studio {__version__} ({where} at {Path(sys.executable if frozen else __file__).resolve().parent}), "
        f"Python {platform.python_version()}, Qt platform '{os.environ['QT_QPA_PLATFORM']}', temporary folder {tmp}",
    )
    run = _SelfTestRun(tmp)
    for name, fn in run.steps():
        checks.run(name, fn)


def _panels():
    from ddpm_gui.qt.panels import PANELS

    return PANELS


def _close() -> None:
    """Close every window and wait for every worker thread to end (a running QThread aborts Python)."""
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance()
    if app is None:
        return
    for w in list(QApplication.topLevelWidgets()):
        close = getattr(w, "close_without_asking", None)
        if close is not None:
            close()
            w.shutdown()
        else:
            w.close()
        w.deleteLater()
    app.processEvents()


def self_test() -> int:
    """Run every check; print one line each; 0 if all passed, 1 at the first failure."""
    t0 = time.perf_counter()
    checks = _Checks()
    watched = _watched_paths()
    before = _snapshot(watched)
    try:
        with tempfile.TemporaryDirectory(prefix="ddpm-gui-selftest-") as name:
            tmp = Path(name).resolve()
            with _isolated_environment(tmp):
                try:
                    _run_checks(tmp, checks)
                finally:
                    try:
                        _close()
                    except Exception as exc:
                        print(f"warning: closing the window: {exc}", file=sys.stderr)
        after = _snapshot(watched)
        changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        if changed:
            raise _Failure(
                "nothing written outside the temporary folder", f"changed: {', '.join(changed[:5])}"
            )
        checks.ok(
            "nothing written outside the temporary folder",
            f"{len(after)} entries under {', '.join(str(p) for p in watched[:3])} unchanged; temporary folder removed",
        )
    except _Failure as f:
        print(f"FAIL {f.check}: {f.reason}", flush=True)
        print(
            f"self-test FAILED after {checks.passed} checks passed, {time.perf_counter() - t0:.1f} s",
            flush=True,
        )
        return 1
    except Exception as exc:
        traceback.print_exc()
        print(f"FAIL self-test: {type(exc).__name__}: {exc}", flush=True)
        return 1
    print(f"self-test passed: {checks.passed} checks in {time.perf_counter() - t0:.1f} s", flush=True)
    return 0
