"""The demo model that ships with the app: a small class-conditional model of the built-in shapes, so that
the Sample and Denoise tabs (and `ddpm-gui sample --model demo`) work before anything was trained.
scripts/train_demo_model.py rebuilds it; its manifest (demo.json, next to it) records how. No Qt."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ddpm_gui.errors import CheckpointError

if TYPE_CHECKING:  # importing this module stays cheap (no torch): the GUI reads DEMO_NOTE before the engine
    from ddpm_gui.engine.sampler import ModelBundle

DEMO_NAME = "demo"  # what `--model demo` and the GUI call it
DEMO_FILE = "demo.safetensors"
MANIFEST_FILE = "demo.json"
# said wherever the demo model is in use (the Sample and Denoise tabs, the CLI's notes)
DEMO_NOTE = "Demo model (built-in shapes, shipped with the app) — train your own in the Train tab"


def demo_dir() -> Path:
    """The package folder that holds the shipped demo files (ddpm_gui/demo)."""
    return Path(__file__).resolve().parent.parent / "demo"


def demo_path() -> Path:
    """The shipped demo checkpoint (a DDPM Studio .safetensors file inside the package)."""
    return demo_dir() / DEMO_FILE


def manifest_path() -> Path:
    """The demo's manifest: the command, seed and settings that trained it, its quality figure, its sha256."""
    return demo_dir() / MANIFEST_FILE


def load_demo_bundle(device: str = "auto") -> ModelBundle:
    """The shipped demo model, ready to sample from, its notes saying it is the demo model."""
    from ddpm_gui.engine.sampler import load_bundle

    path = demo_path()
    if not path.is_file():
        raise CheckpointError(
            f"The demo model is missing from this installation ({path.name}): reinstall DDPM Studio, or "
            "train a model in the Train tab."
        )
    bundle = load_bundle(path, device=device)
    bundle.notes = [DEMO_NOTE, *bundle.notes]
    return bundle
