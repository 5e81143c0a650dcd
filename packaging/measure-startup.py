#!/usr/bin/env python3
"""Time from launching the bundle to a visible window, cold and warm (standard library only).

    xvfb-run -a -s "-screen 0 1920x1080x24" python3 packaging/measure-startup.py --runs 5
    xvfb-run -a python3 packaging/measure-startup.py --exe /usr/bin/ddpm-gui --runs 5

Each run starts the app on the X display ($DISPLAY, platform xcb) with DDPM_GUI_TIMING=1 and
DDPM_GUI_EXIT_AFTER, as a brand-new user (an empty temporary HOME: no settings, no data cache) and
without HF_HUB_OFFLINE or any other offline switch in its environment. Two figures per run:

- launch -> window: wall time from just before the process is started here to the moment its
  "window shown after" line arrives (the first expose of the main window, i.e. it is on screen);
- the app's own figure: process start (from /proc) -> first expose, as printed by the app.

Cold runs first evict every file of the bundle from the page cache (posix_fadvise DONTNEED, file by
file: only the bundle's own pages, so other work on the machine is not disturbed; system libraries
such as libGL stay cached, as they would after a reboot of a desktop that is in use). Warm runs
follow a launch that was not timed. Prints each run and the medians; exits 1 if a run fails.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHOWN = re.compile(r"window shown after ([0-9.]+) s")
READY = re.compile(r"engine ready after ([0-9.]+) s")


def evict(folder: Path) -> int:
    """Drop the page-cache pages of every regular file under `folder`; returns the number of files."""
    n = 0
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            p = os.path.join(dirpath, name)
            if os.path.islink(p):
                continue
            try:
                fd = os.open(p, os.O_RDONLY)
            except OSError:
                continue
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                n += 1
            finally:
                os.close(fd)
    return n


def cached_mb(folder: Path) -> float | None:
    """MB of the bundle's files in the page cache, if util-linux's fincore is there."""
    if not shutil.which("fincore"):
        return None
    files = [str(p) for p in folder.rglob("*") if p.is_file() and not p.is_symlink()]
    total = 0
    for i in range(0, len(files), 500):
        out = subprocess.run(
            ["fincore", "--bytes", "--noheadings", "--output", "RES", *files[i : i + 500]],
            capture_output=True,
            text=True,
        ).stdout
        total += sum(int(x) for x in out.split() if x.isdigit())
    return total / 1e6


def launch(exe: str, exit_after: float, timeout: float) -> dict:
    home = tempfile.mkdtemp(prefix="ddpm-startup-home-")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "XDG_", "DDPM_GUI_", "QT_"))}
    env.update(
        HOME=home,
        QT_QPA_PLATFORM="xcb",
        DDPM_GUI_TIMING="1",
        DDPM_GUI_EXIT_AFTER=str(exit_after),
        PYTHONDONTWRITEBYTECODE="1",
    )
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [exe], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=home, bufsize=1
    )
    res: dict = {"out": []}
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            now = time.perf_counter() - t0
            res["out"].append(line.rstrip())
            if (m := SHOWN.search(line)) and "wall" not in res:
                res["wall"] = now
                res["app"] = float(m.group(1))
            if m := READY.search(line):
                res["ready"] = float(m.group(1))
            if now > timeout:
                proc.kill()
                break
        res["rc"] = proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(home, ignore_errors=True)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--exe", default="dist/ddpm-gui/ddpm-gui", help="the bundle's executable (or /usr/bin/ddpm-gui)"
    )
    ap.add_argument("--runs", type=int, default=5, help="cold runs and warm runs, each")
    ap.add_argument("--exit-after", type=float, default=6.0, help="DDPM_GUI_EXIT_AFTER for each run (s)")
    ap.add_argument("--no-cold", action="store_true", help="warm runs only")
    a = ap.parse_args()
    if not os.environ.get("DISPLAY"):
        sys.exit("no DISPLAY: run under xvfb-run -a (or on a desktop)")
    exe = os.path.abspath(shutil.which(a.exe) or a.exe)
    folder = Path(exe).resolve().parent
    print(f"{exe} (bundle folder {folder}), DISPLAY={os.environ['DISPLAY']}, {os.cpu_count()} CPUs")
    results: dict[str, list[dict]] = {"cold": [], "warm": []}
    modes = ["warm"] if a.no_cold else ["cold", "warm"]
    for mode in modes:
        if mode == "warm":
            launch(exe, a.exit_after, 120)  # fill the cache; not timed
        for i in range(a.runs):
            note = ""
            if mode == "cold":
                n = evict(folder)
                mb = cached_mb(folder)
                note = (
                    f" (evicted {n} files; {mb:.0f} MB of the bundle still cached)" if mb is not None else ""
                )
            r = launch(exe, a.exit_after, 120)
            if r.get("rc") != 0 or "wall" not in r:
                print(f"{mode} run {i + 1} FAILED: rc={r.get('rc')}\n  " + "\n  ".join(r["out"][-20:]))
                return 1
            results[mode].append(r)
            print(
                f"{mode} run {i + 1}: launch -> window {r['wall']:.3f} s (app's own: {r['app']:.3f} s), "
                f"engine ready {r.get('ready', float('nan')):.3f} s{note}",
                flush=True,
            )
    print(f"load average: {' '.join(open('/proc/loadavg').read().split()[:3])}")
    for mode in modes:
        rs = results[mode]
        med = statistics.median(r["wall"] for r in rs)
        print(
            f"{mode}: median launch -> window {med:.2f} s (min {min(r['wall'] for r in rs):.2f}, max "
            f"{max(r['wall'] for r in rs):.2f}; app's own {statistics.median(r['app'] for r in rs):.2f} s), "
            f"median engine ready {statistics.median(r.get('ready', float('nan')) for r in rs):.2f} s, {len(rs)} runs"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
