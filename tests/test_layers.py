"""The math, models, data and engine run headless: importing them must not import Qt."""

import subprocess
import sys

import pytest

LAYERS = ["ddpm_gui.core", "ddpm_gui.models", "ddpm_gui.data", "ddpm_gui.engine"]
MODULES = [
    "ddpm_gui.core.schedule",
    "ddpm_gui.core.diffusion",
    "ddpm_gui.models.unet",
    "ddpm_gui.models.presets",
    "ddpm_gui.data",
    "ddpm_gui.engine.trainer",
    "ddpm_gui.engine.sampler",
    "ddpm_gui.engine.checkpoint",
    "ddpm_gui.cli",
]


@pytest.mark.parametrize("module", MODULES)
def test_no_qt_below_the_qt_layer(module):
    code = (
        f"import sys, {module}\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('PySide6', 'shiboken6', 'pyqtgraph', 'PyQt5', 'PyQt6')"
        " or m.startswith('ddpm_gui.qt'))\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, f"{module} imports Qt: {r.stdout} {r.stderr[-500:]}"


def test_source_has_no_qt_imports():
    """A static check too, so a lazy import inside a function is caught as well."""
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parents[1] / "ddpm_gui"
    pat = re.compile(r"^\s*(from|import)\s+(PySide6|pyqtgraph|shiboken6|ddpm_gui\.qt)\b", re.M)
    for layer in ("core", "models", "data", "engine"):
        for f in (root / layer).rglob("*.py"):
            assert not pat.search(f.read_text()), f"{f} imports Qt"
