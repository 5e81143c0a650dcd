"""Widgets and helpers shared by the Sample, Forward and Denoise tabs.

SamplerForm            the sampler choice (DDPM with either variance, DDIM, DPM-Solver++, Euler ancestral)
                       of Sample and Denoise
describe_bundle(b)     a model in two lines; NO_MODEL_TEXT when there is none
frames_every(...)      which reverse-process frames to keep for the player and the animation
Messages               a panel's status line, busy bar and error box
ModelLoader            loads a checkpoint or run folder in a worker; the model enters the app through
                       AppState.set_bundle, as every model does
dropped_paths, drop_kind, accept_file_drags   what a drag-and-drop carries, for the panels' drop events
button, laid_out, side_column                  a push button, a bare container, a tab's controls column
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

from PySide6.QtCore import QObject, Qt, Signal, Slot
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLayout,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ddpm_gui.qt.state import AppState
from ddpm_gui.qt.style import ERROR_STYLE
from ddpm_gui.qt.workers import JobSlot, show_warning

L = TypeVar("L", bound=QLayout)

NO_MODEL_TEXT = "No model yet. Train a model in the Train tab or load a checkpoint (File ▸ Open checkpoint…)."

# The form's rows: (key, label, tooltip, core.spec.SAMPLERS name, DDPM variance). A new sampler in core/ needs
# one row here; the steps and eta fields follow its `strided` flag.
SAMPLERS: tuple[tuple[str, str, str, str, str], ...] = (
    ("ddpm-beta", "DDPM, σ² = β_t (tutorial)", "Ancestral sampling with the variance the tutorial uses.",
     "ddpm", "beta"),
    ("ddpm-posterior", "DDPM, σ² = β̃_t (posterior)",
     "Ancestral sampling with the posterior variance (DDPM eq. 7).", "ddpm", "posterior"),
    ("ddim", "DDIM", "Deterministic with eta = 0; needs far fewer steps.", "ddim", "beta"),
    ("dpm++2m", "DPM-Solver++(2M)",
     "Deterministic second-order multistep solver (Lu et al. 2022): good images in 10–20 steps.",
     "dpm++2m", "beta"),
    ("euler_a", "Euler ancestral",
     "k-diffusion's Euler ancestral: fresh noise at every step (the same step as DDIM with eta = 1).",
     "euler_a", "beta"),
)  # fmt: skip
_ROWS = {row[0]: row for row in SAMPLERS}

MAX_FRAMES = 100  # reverse-process frames kept for the player (and the animation)
FRAME_BUDGET_BYTES = 256 * 2**20  # ... and at most this much memory for them

CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".ckpt", ".bin")
CHECKPOINT_FILTER = "Checkpoints (*.safetensors);;All files (*)"
CHECKPOINT_DIR_KEY = "last_checkpoint_dir"  # QSettings: where the File menu's open dialogs start too


def describe_bundle(b) -> str:
    cond = f"class-conditional ({b.num_classes} classes)" if b.num_classes else "unconditional"
    return (
        f"{b.preset} · step {b.step:,} · {b.image_size}×{b.image_size} · {cond} · T = {b.schedule.T}, "
        f"{b.prediction}-prediction\nfrom {b.source}"
    )


def guidance_spin() -> QDoubleSpinBox:
    """The classifier-free guidance control of the Sample, A/B and Denoise tabs: 0-20, default 3."""
    spin = QDoubleSpinBox()
    spin.setRange(0.0, 20.0)
    spin.setSingleStep(0.5)
    spin.setValue(3.0)
    spin.setToolTip("Classifier-free guidance scale w: 1 = plain conditional, higher = stronger")
    return spin


def class_items(bundle) -> list[tuple[str, int | None]]:
    """The choices of a class control for `bundle`: "any (unconditional)", then each of its classes."""
    items: list[tuple[str, int | None]] = [("any (unconditional)", None)]
    if bundle is not None and bundle.num_classes:
        names = bundle.class_names or [str(i) for i in range(bundle.num_classes)]
        items += [(f"{i}: {names[i] if i < len(names) else i}", i) for i in range(bundle.num_classes)]
    return items


def fill_class_combo(combo, bundle) -> None:
    """`combo` offers `bundle`'s classes (class_items), keeping the class chosen where it still exists;
    no change signal is emitted."""
    keep = combo.currentData()
    combo.blockSignals(True)
    combo.clear()
    for text, data in class_items(bundle):
        combo.addItem(text, data)
    combo.setCurrentIndex(max(combo.findData(keep), 0))
    combo.blockSignals(False)


def frames_every(chain: int, n: int, size: int) -> int:
    """Keep every k-th frame of a `chain`-step reverse process of n images of size x size, so that at most
    MAX_FRAMES (and FRAME_BUDGET_BYTES: each frame holds x_t and the predicted x_0) are held."""
    per_frame = 2 * n * size * size * 3
    keep = max(2, min(MAX_FRAMES, FRAME_BUDGET_BYTES // max(per_frame, 1)))
    return max(1, math.ceil(chain / keep))


def kept_frames(chain: int, every: int) -> int:
    """How many frames sample_frames yields for a chain kept every `every` steps (the last always)."""
    return math.ceil(chain / every) + (0 if (chain - 1) % every == 0 else 1)


class SamplerForm(QWidget):
    """Sampler choice shared by the Sample and Denoise panels: DDPM (two variances) or a strided sampler."""

    changed = Signal()

    def __init__(self, parent: QWidget | None = None, default: str = "ddpm-beta", ddim_steps: int = 50):
        super().__init__(parent)
        self.combo = QComboBox()
        for key, label, tip, _name, _variance in SAMPLERS:
            self.combo.addItem(label, key)
            self.combo.setItemData(self.combo.count() - 1, tip, Qt.ItemDataRole.ToolTipRole)
        self.combo.setCurrentIndex(max(self.combo.findData(default), 0))
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(1, 10000)
        self.steps_spin.setValue(ddim_steps)
        self.steps_spin.setToolTip("Steps of a strided sampler: evenly spaced timesteps from T-1 down to 0.")
        self.eta_spin = QDoubleSpinBox()
        self.eta_spin.setRange(0.0, 1.0)
        self.eta_spin.setSingleStep(0.1)
        self.eta_spin.setDecimals(2)
        self.eta_spin.setToolTip("DDIM eta: 0 is deterministic, 1 adds noise like DDPM.")
        self.clip_check = QCheckBox("&Clip predicted x₀ to [-1, 1]")
        self.clip_check.setChecked(True)
        self.clip_check.setToolTip("Clip the model's x₀ estimate at every step: keeps colours in range.")
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("Sa&mpler:", self.combo)
        self._steps_label = QLabel("Ste&ps:")
        self._steps_label.setBuddy(self.steps_spin)
        form.addRow(self._steps_label, self.steps_spin)
        self._eta_label = QLabel("DDIM &eta:")
        self._eta_label.setBuddy(self.eta_spin)
        form.addRow(self._eta_label, self.eta_spin)
        form.addRow("", self.clip_check)
        self.combo.currentIndexChanged.connect(self._update)
        for w in (self.steps_spin, self.eta_spin):
            w.valueChanged.connect(self.changed)
        self.clip_check.toggled.connect(self.changed)
        self._update()

    def key(self) -> str:
        return self.combo.currentData()

    def set_key(self, key: str) -> None:
        self.combo.setCurrentIndex(max(self.combo.findData(key), 0))

    def set_T(self, T: int) -> None:
        self.steps_spin.setMaximum(max(T, 1))

    def use_model_defaults(self, bundle) -> None:
        """A model's own sampling choices (a diffusers model's variance_type and clip_sample; ours: the
        tutorial's β and clipping): the DDPM row with its variance, and its clipping. DDIM stays DDIM."""
        if bundle is None:
            return
        name = _ROWS[self.key()][3]
        if name == "ddpm":
            for key, _label, _tip, row_name, variance in SAMPLERS:
                if row_name == "ddpm" and variance == getattr(bundle, "variance", "beta"):
                    self.set_key(key)
        self.clip_check.setChecked(bool(getattr(bundle, "clip_x0", True)))

    def kwargs(self) -> dict:
        _key, _label, _tip, name, variance = _ROWS[self.key()]
        return {
            "sampler": name,
            "variance": variance,
            "steps": self.steps_spin.value(),
            "eta": self.eta_spin.value(),
            "clip_x0": self.clip_check.isChecked(),
        }

    def chain_length(self, t_start: int) -> int:
        """Number of reverse steps from timestep t_start (T-1 for pure noise) down to 0."""
        if self.strided():
            from ddpm_gui.core.diffusion import ddim_timesteps

            return len(ddim_timesteps(t_start + 1, self.steps_spin.value()))
        return t_start + 1

    def strided(self) -> bool:
        """Whether the chosen sampler visits a chosen number of steps (DDIM) rather than every timestep."""
        return self._spec().strided

    def _spec(self):
        from ddpm_gui.core.spec import SAMPLERS as SPECS

        return SPECS[_ROWS[self.key()][3]]

    @Slot()
    def _update(self, *_args) -> None:
        spec = self._spec()
        for w in (self.steps_spin, self._steps_label):
            w.setEnabled(spec.strided)
        for w in (self.eta_spin, self._eta_label):
            w.setEnabled(spec.takes_eta)
        self.changed.emit()


class Messages(QWidget):
    """A panel's status line, a busy bar (exports) and an error box. `error` also puts the message in the
    window's status bar and, with a title and when `dialogs()` allows (panels pass their SHOW_DIALOGS),
    in a window-modal box."""

    def __init__(self, state: AppState, dialogs: Callable[[], bool], parent: QWidget | None = None):
        super().__init__(parent)
        self._state = state
        self._dialogs = dialogs
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        self.busy_bar = QProgressBar()
        self.busy_bar.setRange(0, 0)  # busy, no known length, until a progress report says otherwise
        self.busy_bar.setTextVisible(False)
        self.busy_bar.hide()
        self.error_label = QLabel()
        self.error_label.setWordWrap(True)
        self.error_label.setStyleSheet(ERROR_STYLE)
        self.error_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.error_label.hide()
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        for w in (self.busy_bar, self.status_label, self.error_label):
            lay.addWidget(w)

    def status(self, text: str) -> None:
        self.status_label.setText(text)

    def error(self, message: str, title: str | None = None) -> None:
        self.error_label.setText(message)
        self.error_label.show()
        self._state.show_status(message)
        if title and self._dialogs():
            show_warning(self.parentWidget() or self, title, message)

    def clear_error(self) -> None:
        self.error_label.hide()

    def has_error(self) -> bool:
        return not self.error_label.isHidden()

    def set_busy(self, busy: bool) -> None:
        self.busy_bar.setRange(0, 0)
        self.busy_bar.setVisible(busy)

    def set_progress(self, done: int, total: int) -> None:
        self.busy_bar.setRange(0, max(total, 1))
        self.busy_bar.setValue(done)


class ModelLoader(QObject):
    """Opens a .safetensors checkpoint or a run folder (its newest checkpoint) in a worker and makes it the
    app's current model through AppState.set_bundle; the failure is the panel's error message."""

    busyChanged = Signal(bool)

    def __init__(self, panel: QWidget, state: AppState, messages: Messages, dialogs: Callable[[], bool]):
        super().__init__(panel)
        self._panel, self._state, self._messages = panel, state, messages
        self._path = ""
        self._slot = JobSlot(
            panel, self._loaded, self._failed, error_title="Cannot open the checkpoint", dialogs=dialogs
        )
        self._slot.busyChanged.connect(self.busyChanged)

    def is_busy(self) -> bool:
        return self._slot.is_busy()

    def load(self, path: str | Path | None = None, folder: bool = False) -> bool:
        """Load `path` (None: ask for a file, or a run folder with folder=True); False when nothing
        starts (a load is running, or the dialog was cancelled)."""
        if self._slot.is_busy():
            return False
        if path is None:
            path = self._ask(folder)
            if not path:
                return False
        self._path = str(path)
        self._messages.clear_error()
        self._messages.status(f"Loading {path}…")
        return self._slot.start(lambda p=self._path: _load(p))

    def _ask(self, folder: bool) -> str:
        from ddpm_gui.engine.runs import default_runs_root  # the engine loads after the window shows

        settings = self._state.settings
        start = str(settings.value(CHECKPOINT_DIR_KEY, "") or default_runs_root())
        if folder:
            path = QFileDialog.getExistingDirectory(self._panel, "Open run folder", start)
        else:
            path, _ = QFileDialog.getOpenFileName(self._panel, "Open checkpoint", start, CHECKPOINT_FILTER)
        if path:
            settings.setValue(CHECKPOINT_DIR_KEY, str(Path(path).parent))
        return path

    def _loaded(self, bundle) -> None:
        name = Path(self._path).name
        self._messages.status(f"Loaded {name}.")
        self._state.add_recent(self._path)
        self._state.set_bundle(bundle, name)

    def _failed(self, message: str) -> None:
        self._messages.status("")
        self._messages.error(message)  # the JobSlot shows the dialog


def _load(path: str) -> Iterator:
    """Worker: load a bundle (imports torch and builds the model off the GUI thread)."""
    from ddpm_gui.engine.sampler import load_bundle

    yield load_bundle(path)


# ----------------------------------------------------------------------------- drag and drop


def dropped_paths(event) -> list[Path]:
    """The local files and folders a drag or drop event carries."""
    mime = event.mimeData()
    if not mime.hasUrls():
        return []
    return [Path(u.toLocalFile()) for u in mime.urls() if u.isLocalFile()]


def accept_file_drags(event) -> None:
    """dragEnterEvent of a panel: take any local file or folder (the drop says what it does with it)."""
    if dropped_paths(event):
        event.acceptProposedAction()


def drop_kind(path: Path) -> str:
    """ "checkpoint" (a model: a model file or a diffusers model folder), "run" (a DDPM Studio run folder),
    "folder" (any other) or "image"."""
    if path.is_dir():
        from ddpm_gui.engine.diffusers_io import is_diffusers_model
        from ddpm_gui.engine.runfolder import is_run_dir

        if is_run_dir(path):
            return "run"
        return "checkpoint" if is_diffusers_model(path) else "folder"
    return "checkpoint" if path.suffix.lower() in CHECKPOINT_SUFFIXES else "image"


# ----------------------------------------------------------------------------- layout


def button(text: str, slot: Callable, tip: str = "", parent: QWidget | None = None) -> QPushButton:
    """A push button that calls slot() (without clicked's `checked`) when clicked, with the tooltip `tip`."""
    b = QPushButton(text, parent)
    if tip:
        b.setToolTip(tip)
    b.clicked.connect(lambda: slot())
    return b


def laid_out(
    layout_type: type[L], parent: QWidget | None = None, margins: tuple[int, int, int, int] = (0, 0, 0, 0)
) -> tuple[QWidget, L]:
    """A plain widget and its new `layout_type` layout with these margins (none by default): a container
    that adds no space of its own around what it holds."""
    widget = QWidget(parent)
    layout = layout_type(widget)
    layout.setContentsMargins(*margins)
    return widget, layout


def side_column(items: Sequence[QWidget | Sequence[QWidget]], min_width: int, max_width: int) -> QScrollArea:
    """A tab's controls column: `items` top to bottom (a sequence of widgets is one row of them), then
    space; it scrolls vertically when the window is short, and is min_width to max_width pixels wide."""
    left, lv = laid_out(QVBoxLayout, margins=(0, 0, 4, 0))
    for item in items:
        if isinstance(item, QWidget):
            lv.addWidget(item)
            continue
        row = QHBoxLayout()
        for w in item:
            row.addWidget(w)
        lv.addLayout(row)
    lv.addStretch(1)
    scroll = QScrollArea()
    scroll.setWidgetResizable(True)
    scroll.setWidget(left)
    scroll.setFrameShape(QScrollArea.Shape.NoFrame)
    scroll.setMinimumWidth(min_width)
    scroll.setMaximumWidth(max_width)
    scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    return scroll
