"""Start the desktop app: QApplication, style, icon, the main window, shown before torch is imported.

`run_app()` is what `ddpm-gui` (no sub-command) and `python -m ddpm_gui` call. Importing this module
imports no torch and no datasets: the window appears in a "Loading engine…" state and the main window
imports the engine in a background Job right after it is shown.

Environment variables (for measurements and tests):
    DDPM_GUI_TIMING=1       print "window shown after X.XXX s" (process start -> first expose),
                            "torch imported at first paint: False" and "datasets imported at first
                            paint: False" (True would mean the window waited for a heavy import),
                            "engine ready after X.XXX s", and at the end "process ends X.XXX s after
                            the window closed"
    DDPM_GUI_STALL_PROBE=1  a 10 ms GUI timer records the longest gap between its ticks (the longest the
                            GUI thread was blocked); printed at exit as "stall probe: longest gap ..."
    DDPM_GUI_EXIT_AFTER=S   quit after S seconds (a clean close, as if the user closed the window)
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
from pathlib import Path

from PySide6.QtCore import QElapsedTimer, QEvent, QObject, QSettings, QTimer
from PySide6.QtGui import QGuiApplication, QIcon
from PySide6.QtWidgets import QApplication

APP_NAME = "DDPM Studio"
ICON_NAME = "ddpm-gui"

_IMPORT_TIME = time.perf_counter()


def process_age_s() -> float:
    """Seconds since this process started (Linux: from /proc; elsewhere: since this module's import)."""
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        start_ticks = int(fields[19])  # field 22 of stat: starttime, in clock ticks since boot
        with open("/proc/uptime", "rb") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return time.perf_counter() - _IMPORT_TIME


def resource_dirs() -> list[Path]:
    """Where the app's resources may live: a PyInstaller bundle, inside the installed package, or
    `resources/` beside the package in a source checkout."""
    here = Path(__file__).resolve().parent  # ddpm_gui/qt
    pkg = here.parent
    dirs = []
    meipass = getattr(sys, "_MEIPASS", None)
    if meipass:
        dirs += [Path(meipass) / "resources", Path(meipass) / "ddpm_gui" / "resources"]
    dirs += [pkg / "resources", pkg.parent / "resources", Path(sys.prefix) / "share" / "ddpm-gui"]
    return [d for d in dirs if d.is_dir()]


def resource_path(name: str) -> Path | None:
    for d in resource_dirs():
        p = d / name
        if p.exists():
            return p
    return None


def app_icon() -> QIcon:
    icon = QIcon()
    for name in (f"{ICON_NAME}.svg", f"{ICON_NAME}.png"):
        p = resource_path(name)
        if p is not None:
            icon.addFile(str(p))
    return icon


class StallProbe(QObject):
    """A 10 ms GUI timer; the longest gap between two ticks is the longest the GUI thread was busy."""

    def __init__(self, interval_ms: int = 10, parent: QObject | None = None):
        super().__init__(parent)
        self.interval_ms = interval_ms
        self.longest_ms = 0.0
        self.longest_at_s = 0.0
        self.ticks = 0
        self.gaps: list[tuple[float, float]] = []  # (gap ms, seconds after start when it ended), > 50 ms
        self._clock = QElapsedTimer()
        self._last = 0
        self._timer = QTimer(self)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self._tick)

    def start(self) -> None:
        self._clock.start()
        self._last = self._clock.nsecsElapsed()
        self._timer.start()

    def stop(self) -> None:
        self._timer.stop()

    def _tick(self) -> None:
        now = self._clock.nsecsElapsed()
        gap = (now - self._last) / 1e6
        self._last = now
        self.ticks += 1
        if gap > 50:
            self.gaps.append((gap, process_age_s()))
        if gap > self.longest_ms:
            self.longest_ms = gap
            self.longest_at_s = process_age_s()

    def report(self) -> str:
        worst = sorted(self.gaps, reverse=True)[:5]
        listed = ", ".join(f"{g:.0f} ms ending at {at:.2f} s" for g, at in sorted(worst, key=lambda x: x[1]))
        return (
            f"stall probe: longest gap between {self.interval_ms} ms ticks = {self.longest_ms:.1f} ms "
            f"(at {self.longest_at_s:.2f} s after start, {self.ticks} ticks)"
            + (f"; gaps over 50 ms: {listed}" if listed else "")
        )


class _ExposeWatcher(QObject):
    """Calls `callback` once, when the window is first exposed (really on screen, about to paint)."""

    def __init__(self, callback, parent: QObject | None = None):
        super().__init__(parent)
        self._callback = callback
        self._done = False

    def eventFilter(self, obj, event) -> bool:
        if not self._done and event.type() in (QEvent.Type.Expose, QEvent.Type.Paint):
            exposed = getattr(obj, "isExposed", lambda: True)()
            if exposed:
                self._done = True
                QTimer.singleShot(0, self._callback)  # after this paint has been handled
        return False


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def make_application(argv: list[str] | None = None) -> QApplication:
    app = QApplication.instance()
    if app is None:
        app = QApplication(list(argv) if argv else [sys.argv[0] if sys.argv else "ddpm-gui"])
    QApplication.setApplicationName(APP_NAME)
    QApplication.setApplicationDisplayName(APP_NAME)
    QApplication.setOrganizationName(APP_NAME)
    QGuiApplication.setDesktopFileName(ICON_NAME)
    from ddpm_gui import __version__
    from ddpm_gui.qt.style import apply_style

    QApplication.setApplicationVersion(__version__)
    apply_style(app)
    icon = app_icon()
    if not icon.isNull():
        app.setWindowIcon(icon)
    return app


def run_app(argv: list[str] | None = None, *, settings_path: str | None = None) -> int:
    """Open DDPM Studio and run the event loop. When the window has closed and nothing is left to save,
    the process ends here (see `end_process`); otherwise this returns the exit code."""
    timing = _env_flag("DDPM_GUI_TIMING")
    app = make_application(argv)

    probe = None
    if _env_flag("DDPM_GUI_STALL_PROBE"):
        probe = StallProbe(10, app)
        probe.start()

    from ddpm_gui.qt.main_window import MainWindow

    settings = QSettings(settings_path, QSettings.Format.IniFormat) if settings_path else None
    win = MainWindow(settings=settings)

    def on_shown() -> None:
        if timing:
            print(f"window shown after {process_age_s():.3f} s", flush=True)
            for mod in ("torch", "datasets"):  # checked before the engine job starts importing them
                print(f"{mod} imported at first paint: {mod in sys.modules}", flush=True)
        win.start_engine()

    watcher = _ExposeWatcher(on_shown, win)
    win.winId()  # create the native window now, so the watcher sees its very first expose
    handle = win.windowHandle()
    (handle if handle is not None else win).installEventFilter(watcher)
    win.show()
    if timing:
        win.engineReady.connect(lambda: print(f"engine ready after {process_age_s():.3f} s", flush=True))
    # a window that is never exposed (minimised at start) must still load the engine
    QTimer.singleShot(2000, win.start_engine)

    exit_after = os.environ.get("DDPM_GUI_EXIT_AFTER", "").strip()
    if exit_after:
        try:
            QTimer.singleShot(int(float(exit_after) * 1000), win.close_without_asking)
        except ValueError:
            print(f"DDPM_GUI_EXIT_AFTER: not a number of seconds: {exit_after!r}", file=sys.stderr)

    rc = app.exec()
    win.shutdown()  # again: a job started while the window was closing must end before Python exits
    if probe is not None:
        probe.stop()
        print(probe.report(), flush=True)
    end_process(win, rc, timing)
    return rc


def unfinished_work(win) -> list[str]:
    """What would still run after the event loop: jobs whose thread has not ended, and Python threads
    that the interpreter would wait for (non-daemon). Empty when everything is done."""
    from ddpm_gui.qt.workers import Job

    left = [f"job {type(j.parent()).__name__}" for j in win.findChildren(Job) if not j.wait(0)]
    main = threading.main_thread()
    left += [t.name for t in threading.enumerate() if t is not main and not t.daemon and t.is_alive()]
    return left


def end_process(win, rc: int, timing: bool = False) -> None:
    """End the process now, once the window is closed and everything is saved: the settings synced, the
    exit handlers run, the output flushed. A normal interpreter exit would then spend seconds tearing
    down torch, datasets and Qt (measured: 2-3 s of garbage collection and library destructors on a busy
    2-core machine) with nothing left to save. Returns (a normal exit follows) while work is unfinished."""
    left = unfinished_work(win)
    if left:
        if timing:
            print(f"a normal exit waits for: {', '.join(left)}", flush=True)
        return
    win.settings.sync()
    atexit._run_exitfuncs()  # the libraries' exit handlers (temporary files, logging) still run
    if timing and win.closed_at is not None:
        print(f"process ends {time.monotonic() - win.closed_at:.3f} s after the window closed", flush=True)
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said there
            pass
    os._exit(rc)
