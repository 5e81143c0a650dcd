"""`ddpm-gui --self-test` from the Python package: every check passes, nothing is left behind.

The same command is run from the PyInstaller bundle and the installed .deb by packaging/build.sh and
packaging/smoke.sh; here it runs in a subprocess exactly as a user would type it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ddpm_gui.qt.panels import PANELS

pytestmark = pytest.mark.slow

CHECKS = [
    "environment",
    "application",
    "window opened",
    "engine loaded",
    "data panel",
    "built-in data",
    "parquet via datasets",
    "training",
    "sampling",
    "window grab",
    "nothing written outside the temporary folder",
]


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["QT_QPA_PLATFORM"] = "offscreen"
    # a private home: the self-test's own before/after check then watches folders no other test touches
    env["HOME"] = str(tmp_path / "home")
    for k in ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "DDPM_GUI_CACHE", "HF_HOME", "HF_DATASETS_CACHE"):
        env.pop(k, None)
    (tmp_path / "home").mkdir()
    return env


def _self_test(tmp_path, timeout: int, **env) -> subprocess.CompletedProcess:
    """`python -m ddpm_gui --self-test` in tmp_path with a private home (and `env` on top)."""
    return subprocess.run(
        [sys.executable, "-m", "ddpm_gui", "--self-test"],
        cwd=tmp_path, env={**_env(tmp_path), **env}, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def test_self_test_passes_and_writes_nothing(tmp_path):
    proc = _self_test(tmp_path, timeout=300)
    out = proc.stdout
    assert proc.returncode == 0, f"rc={proc.returncode}\nstdout:\n{out}\nstderr:\n{proc.stderr[-3000:]}"
    for name in CHECKS:
        assert f"ok  {name}: " in out, f"missing check line {name!r} in:\n{out}"
    assert "FAIL" not in out
    assert "self-test passed: 11 checks" in out
    titles = [title for _m, _c, title in PANELS]
    assert f"'DDPM Studio', {len(titles)} tabs ({', '.join(titles)})" in out and "A/B" in titles
    # nothing in the (private) home, nothing in the working folder
    assert list((tmp_path / "home").iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"]


def test_self_test_reports_a_failure_in_one_line(tmp_path):
    """A failed check prints `FAIL <check>: <reason>` and exits 1 (here: no Qt platform plugin of that name)."""
    proc = _self_test(tmp_path, timeout=120, QT_QPA_PLATFORM="no-such-platform")
    assert proc.returncode == 1, f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}"
    assert "FAIL application: Qt has no 'no-such-platform' platform plugin" in proc.stdout
    assert "ok  window opened" not in proc.stdout
    assert list((tmp_path / "home").iterdir()) == []
