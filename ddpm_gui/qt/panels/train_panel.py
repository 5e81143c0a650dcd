"""Train panel: settings, start/pause/stop, live loss curve, throughput, ETA and preview samples.

The Trainer (Qt-free, ddpm_gui.engine.trainer) runs in a `Job` thread; its events arrive here in the
GUI thread, at most ~20 per second (consecutive Progress events are merged, their loss points
concatenated). Pause/resume/stop are direct method calls on the Trainer (thread-safe Events): a
queued signal would never reach a worker busy in its loop. Stop makes the Trainer save a checkpoint
and end with Finished(reason="stopped").
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
from PySide6.QtCore import Qt, Slot
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from ddpm_gui.core.schedule import SCHEDULE_PRESETS
from ddpm_gui.engine import events as ev
from ddpm_gui.engine.config import TrainConfig
from ddpm_gui.engine.recipes import RECIPES
from ddpm_gui.errors import DDPMError
from ddpm_gui.models.presets import PRESET_NOTES
from ddpm_gui.qt.imageview import ImageGrid
from ddpm_gui.qt.lossplot import LossPlot, TimestepLossPlot
from ddpm_gui.qt.state import AppState
from ddpm_gui.qt.style import ERROR_STYLE, INFO_STYLE, WARNING_STYLE
from ddpm_gui.qt.workers import Job, refuse_new_jobs

# Tests set this to False: failures are then shown in the panel only, never in a modal dialog.
SHOW_DIALOGS = True

PRESET_NAMES = ("tutorial", "small", "tiny")
DEFAULT_RECIPE = "quick-cpu"  # what a new user gets; a GPU user picks "tutorial" (one click)
PRESET_HINTS = {
    "tutorial": "the article's UNet (n_channels=32, labml.ai): slow on a CPU",
    "small": "a smaller UNet: minutes per thousand steps on a CPU",
    "tiny": "the smallest UNet: learns the built-in shapes on a CPU",
}
LOG_LIMIT = 300  # entries kept in the log list
RECIPE_NOTES = {name: r.note for name, r in RECIPES.items()}


# ----------------------------------------------------------------------------- helpers (no widgets)


def coalesce_progress(a: object, b: object) -> object | None:
    """Merge two consecutive Progress events: concatenate their loss points, keep b's scalars.
    Returns None for any other pair, so those events pass through unchanged (in order)."""
    if isinstance(a, ev.Progress) and isinstance(b, ev.Progress):
        return dataclasses.replace(
            b,
            steps=np.concatenate([np.asarray(a.steps), np.asarray(b.steps)]),
            losses=np.concatenate([np.asarray(a.losses), np.asarray(b.losses)]),
        )
    return None


@dataclasses.dataclass
class BundleReady:
    """Yielded by the worker after the Trainer ended: the final (EMA) model, built off the GUI thread."""

    bundle: object


def default_runs_root() -> Path:
    return Path.home() / "DDPM Studio" / "runs"


def timestamp_dir(root: Path | None = None) -> Path:
    return (root or default_runs_root()) / time.strftime("%Y-%m-%d_%H-%M-%S")


def fmt_duration(s: float | None) -> str:
    if s is None or not math.isfinite(s) or s < 0:
        return "–"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    if h:
        return f"{h}h {m:02d}m"
    if m:
        return f"{m}m {sec:02d}s"
    return f"{sec}s"


def fmt_count(n: float | None) -> str:
    if n is None:
        return "?"
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.1f}{unit}"
    return f"{n:.0f}"


def model_info(preset: str, image_size: int, num_classes: int | None) -> tuple[int, float | None]:
    """(parameter count, training FLOPs per image): runs in a worker (the tutorial's count takes seconds)."""
    from ddpm_gui.models.presets import build_model, count_parameters, flops_per_image, get_preset

    cfg = get_preset(preset)
    n_params = int(count_parameters(build_model(cfg, num_classes=num_classes)))
    try:
        flops = flops_per_image(cfg, image_size)
        flops = flops.get("train") if isinstance(flops, dict) else flops
    except Exception:  # noqa: BLE001 - a figure for display only
        flops = None
    return n_params, (float(flops) if flops else None)


def _data_summary(data) -> tuple[str, int, int, bool, int | None]:
    """(source spec, n images, image size, has labels, n classes) of an ImageData."""
    has_labels = data.labels is not None
    k = int(data.num_classes) if has_labels and data.num_classes else None
    return str(data.source or data.name), len(data), int(data.images.shape[1]), has_labels, k


# ----------------------------------------------------------------------------- the panel


class TrainPanel(QWidget):
    def __init__(self, state: AppState, parent: QWidget | None = None):
        super().__init__(parent)
        self.state = state
        self._trainer = None
        self._job: Job | None = None
        self._info_job: Job | None = None
        self._info_pending: tuple | None = None
        self._info_cache: dict[tuple, tuple[int, float | None]] = {}
        self._device_job: Job | None = None
        self._snapshot_job: Job | None = None
        self._eval_job: Job | None = None
        self.last_quality: dict | None = None
        self._run_dir_auto = True
        self._failed = False
        self._last_checkpoint: str | None = None
        self._last_step = 0
        self.last_finished: ev.Finished | None = None
        self._devices: list[tuple[str, str]] = [("auto", "auto (detecting…)"), ("cpu", "cpu")]
        self._build_ui()
        self._load_settings()
        self._mark_custom()
        self.state.dataChanged.connect(self._on_data_changed)
        self._on_data_changed(self.state.data)
        self._detect_devices()
        self._request_model_info()
        self._validate()

    # ------------------------------------------------------------------ UI
    def _build_ui(self) -> None:
        # --- settings (left column, scrollable)
        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)

        self.recipe_combo = QComboBox()
        for name, note in RECIPE_NOTES.items():
            self.recipe_combo.addItem(name, name)
            self.recipe_combo.setItemData(self.recipe_combo.count() - 1, note, Qt.ItemDataRole.ToolTipRole)
        self.recipe_combo.addItem("custom", "custom")
        self.recipe_combo.setItemData(
            self.recipe_combo.count() - 1, "your own settings below", Qt.ItemDataRole.ToolTipRole
        )
        self.recipe_combo.setToolTip(
            "Fill in the settings below at once:\n"
            + "\n".join(f"{k}: {v}" for k, v in RECIPE_NOTES.items())
            + "\nChanging a setting below makes it 'custom'."
        )
        self.recipe_note = QLabel()
        self.recipe_note.setWordWrap(True)
        self.recipe_note.setStyleSheet(INFO_STYLE)
        form.addRow("Re&cipe:", self.recipe_combo)
        form.addRow("", self.recipe_note)

        self.data_edit = QLineEdit("builtin")
        self.data_edit.setToolTip(
            "Used when the Data tab has nothing loaded: builtin, builtin:N, a folder, a .parquet file or a Hub id."
        )
        self.data_note = QLabel()
        self.data_note.setWordWrap(True)
        self.data_note.setStyleSheet(INFO_STYLE)
        form.addRow("&Data:", self.data_edit)
        form.addRow("", self.data_note)

        self.size_spin = QSpinBox()
        self.size_spin.setRange(8, 256)
        self.size_spin.setSingleStep(8)
        self.size_spin.setValue(32)
        self.size_spin.setSuffix(" px")
        self.size_spin.setToolTip(
            "Images are resized to this size (square). Data loaded in the Data tab keeps the size it was loaded at."
        )
        form.addRow("Image si&ze:", self.size_spin)

        self.preset_combo = QComboBox()
        for name in PRESET_NAMES:
            self.preset_combo.addItem(name, name)
            tip = PRESET_NOTES.get(name, PRESET_HINTS[name])
            self.preset_combo.setItemData(self.preset_combo.count() - 1, tip, Qt.ItemDataRole.ToolTipRole)
        self.preset_combo.setCurrentIndex(PRESET_NAMES.index("tiny"))
        self.model_info_label = QLabel("…")
        self.model_info_label.setWordWrap(True)
        self.model_info_label.setStyleSheet(INFO_STYLE)
        form.addRow("&Model:", self.preset_combo)
        form.addRow("", self.model_info_label)

        self.cond_check = QCheckBox("&Class-conditional (classifier-free guidance)")
        form.addRow("", self.cond_check)

        self.schedule_combo = QComboBox()
        for name, sc in SCHEDULE_PRESETS.items():
            self.schedule_combo.addItem(name, name)
            tip = f"{sc.kind}, T={sc.T}" + (
                f", beta {sc.beta_start:g}..{sc.beta_end:g}" if sc.kind != "cosine" else ""
            )
            if sc.rescale_zero_snr:
                tip += ", rescaled to zero terminal SNR (trains with v-prediction)"
            self.schedule_combo.setItemData(self.schedule_combo.count() - 1, tip, Qt.ItemDataRole.ToolTipRole)
        form.addRow("Sc&hedule:", self.schedule_combo)
        self.prediction_combo = QComboBox()
        self.prediction_combo.addItem("ε (noise, the tutorial)", "eps")
        self.prediction_combo.addItem("v (velocity)", "v")
        self.prediction_combo.setToolTip(
            "What the UNet learns to predict. ε is the tutorial's. v = sqrt(ᾱ)·ε − sqrt(1−ᾱ)·x0 stays\n"
            "well-posed where x_t is almost pure noise, so it suits schedules that end in noise (cosine,\n"
            "zero terminal SNR, which requires it)."
        )
        form.addRow("&Predict:", self.prediction_combo)

        self.lr_edit = QLineEdit("3e-4")
        self.lr_edit.setToolTip("AdamW learning rate (the tutorial: 3e-4).")
        form.addRow("&Learning rate:", self.lr_edit)

        self.batch_spin = QSpinBox()
        self.batch_spin.setRange(1, 4096)
        self.batch_spin.setValue(128)
        form.addRow("&Batch size:", self.batch_spin)

        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(1, 10_000_000)
        self.steps_spin.setSingleStep(100)
        self.steps_spin.setValue(2000)
        form.addRow("S&teps:", self.steps_spin)

        self.ema_edit = QLineEdit("0.999")
        self.ema_edit.setToolTip(
            "Decay of the exponential moving average of the weights used for samples; 0 turns it off."
        )
        form.addRow("&EMA decay:", self.ema_edit)

        self.device_combo = QComboBox()
        form.addRow("De&vice:", self.device_combo)
        self.amp_check = QCheckBox("bf16 &autocast (CUDA)")
        form.addRow("", self.amp_check)

        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(0, 2**31 - 1)
        form.addRow("S&eed:", self.seed_spin)

        self.preview_spin = QSpinBox()
        self.preview_spin.setRange(0, 1_000_000)
        self.preview_spin.setValue(250)
        self.preview_spin.setSpecialValueText("off")
        self.preview_spin.setSuffix(" steps")
        self.preview_spin.setToolTip("Sample a preview grid every N steps (from the same noise every time).")
        form.addRow("&Preview every:", self.preview_spin)

        self.run_edit = QLineEdit(str(timestamp_dir()))
        self.run_edit.setToolTip("Folder for config.json, metrics.jsonl, checkpoints and sample grids.")
        browse = QPushButton("…")
        browse.setToolTip("Choose the run folder")
        browse.setFixedWidth(28)
        browse.clicked.connect(self._browse_run_dir)
        row = QHBoxLayout()
        row.addWidget(self.run_edit, 1)
        row.addWidget(browse)
        run_label = QLabel("R&un folder:")
        run_label.setBuddy(self.run_edit)
        form.addRow(run_label, row)

        self.config_error = QLabel()
        self.config_error.setWordWrap(True)
        self.config_error.setStyleSheet(ERROR_STYLE)
        self.config_error.hide()

        settings_box = QGroupBox("Settings")
        sv = QVBoxLayout(settings_box)
        sv.addLayout(form)
        sv.addWidget(self.config_error)

        # --- buttons
        self.start_btn = QPushButton("&Start")
        self.start_btn.setDefault(True)
        self.start_btn.clicked.connect(self.start)
        self.pause_btn = QPushButton("&Pause")
        self.pause_btn.clicked.connect(self.toggle_pause)
        self.stop_btn = QPushButton("St&op")
        self.stop_btn.setToolTip("Stop after the current step and save a checkpoint")
        self.stop_btn.clicked.connect(self.stop)
        self.resume_btn = QPushButton("&Resume run…")
        self.resume_btn.setToolTip("Continue a run folder from its newest checkpoint")
        self.resume_btn.clicked.connect(lambda: self.resume_run())
        self.use_btn = QPushButton("Use current &weights")
        self.use_btn.setToolTip("Send the model being trained (EMA weights) to the Sample and Denoise tabs")
        self.use_btn.clicked.connect(self.use_current_weights)
        buttons = QGridLayout()
        buttons.addWidget(self.start_btn, 0, 0)
        buttons.addWidget(self.pause_btn, 0, 1)
        buttons.addWidget(self.stop_btn, 0, 2)
        buttons.addWidget(self.resume_btn, 1, 0, 1, 2)
        buttons.addWidget(self.use_btn, 1, 2)
        self.eval_btn = QPushButton("E&valuate quality")
        self.eval_btn.setToolTip(
            "Sample images from the current weights and score them with a small classifier trained on the\n"
            "real images (trained once per dataset, then cached): the share of recognisable samples (for a\n"
            "class-conditional model, the accuracy on the class asked for) and the Fréchet distance of the\n"
            "classifier's features. Needs a labelled dataset. Runs beside training, which it slows a little."
        )
        self.eval_btn.clicked.connect(self.evaluate_quality)
        self.eval_n_spin = QSpinBox()
        self.eval_n_spin.setRange(10, 5000)
        self.eval_n_spin.setValue(100)
        self.eval_n_spin.setSuffix(" samples")
        self.eval_n_spin.setToolTip("How many samples the quality check draws (DDPM, the full chain)")
        self.eval_auto_check = QCheckBox("at each checkpoint")
        self.eval_auto_check.setToolTip("Evaluate again whenever training saves a checkpoint")
        buttons.addWidget(self.eval_btn, 2, 0)
        buttons.addWidget(self.eval_n_spin, 2, 1)
        buttons.addWidget(self.eval_auto_check, 2, 2)

        left = QWidget()
        lv = QVBoxLayout(left)
        lv.setContentsMargins(0, 0, 4, 0)
        lv.addWidget(settings_box)
        lv.addLayout(buttons)
        lv.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(left)
        scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        scroll.setMinimumWidth(330)
        scroll.setMaximumWidth(420)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)

        # --- run status (right, top)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("step %v / %m")
        self.stats_label = QLabel("Not running.")
        self.stats_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.run_label = QLabel("")
        self.run_label.setStyleSheet(INFO_STYLE)
        self.run_label.setWordWrap(True)
        self.run_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.estimate_label = QLabel()
        self.estimate_label.setWordWrap(True)
        self.estimate_label.setStyleSheet(WARNING_STYLE)
        self.estimate_label.hide()
        self.error_label = QLabel()
        self.error_label.setWordWrap(True)
        self.error_label.setStyleSheet(ERROR_STYLE)
        self.error_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.error_label.hide()
        self.quality_label = QLabel()
        self.quality_label.setWordWrap(True)
        self.quality_label.setStyleSheet(INFO_STYLE)
        self.quality_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.quality_label.hide()

        # --- plots, preview, log
        self.loss_plot = LossPlot()
        self.t_plot = TimestepLossPlot()
        self.preview_label = QLabel("Preview: none yet")
        self.preview_grid = ImageGrid(columns=None)
        self.preview_grid.setMinimumSize(220, 220)
        self.log_list = QListWidget()
        self.log_list.setAlternatingRowColors(True)
        self.log_list.setWordWrap(True)

        plots = QSplitter(Qt.Orientation.Vertical)
        plots.addWidget(self.loss_plot)
        plots.addWidget(self.t_plot)
        plots.setStretchFactor(0, 3)
        plots.setStretchFactor(1, 1)
        preview_box = QWidget()
        pv = QVBoxLayout(preview_box)
        pv.setContentsMargins(0, 0, 0, 0)
        pv.addWidget(self.preview_label)
        pv.addWidget(self.preview_grid, 1)
        log_box = QWidget()
        lb = QVBoxLayout(log_box)
        lb.setContentsMargins(0, 0, 0, 0)
        lb.addWidget(QLabel("Log"))
        lb.addWidget(self.log_list, 1)
        side = QSplitter(Qt.Orientation.Vertical)
        side.addWidget(preview_box)
        side.addWidget(log_box)
        side.setStretchFactor(0, 3)
        side.setStretchFactor(1, 1)
        main_split = QSplitter(Qt.Orientation.Horizontal)
        main_split.addWidget(plots)
        main_split.addWidget(side)
        main_split.setStretchFactor(0, 4)
        main_split.setStretchFactor(1, 3)

        right = QWidget()
        rv = QVBoxLayout(right)
        rv.setContentsMargins(4, 0, 0, 0)
        rv.addWidget(self.progress)
        rv.addWidget(self.stats_label)
        rv.addWidget(self.run_label)
        rv.addWidget(self.estimate_label)
        rv.addWidget(self.error_label)
        rv.addWidget(self.quality_label)
        rv.addWidget(main_split, 1)

        outer = QHBoxLayout(self)
        outer.addWidget(scroll)
        outer.addWidget(right, 1)

        # --- reactions
        for w in (self.data_edit, self.lr_edit, self.ema_edit):
            w.textChanged.connect(self._validate)
        self.run_edit.textEdited.connect(self._on_run_dir_edited)
        self.run_edit.textChanged.connect(self._validate)
        for s in (self.size_spin, self.batch_spin, self.steps_spin, self.seed_spin, self.preview_spin):
            s.valueChanged.connect(self._validate)
        self.preset_combo.currentIndexChanged.connect(self._on_model_changed)
        self.size_spin.valueChanged.connect(self._on_model_changed)
        self.cond_check.toggled.connect(self._on_model_changed)
        self.schedule_combo.currentIndexChanged.connect(self._on_schedule_changed)
        self.device_combo.currentIndexChanged.connect(self._on_device_changed)
        self.amp_check.toggled.connect(self._validate)
        self.recipe_combo.currentIndexChanged.connect(self._on_recipe_chosen)
        for sig in (
            self.preset_combo.currentIndexChanged, self.schedule_combo.currentIndexChanged,
            self.prediction_combo.currentIndexChanged,
            self.size_spin.valueChanged, self.batch_spin.valueChanged, self.steps_spin.valueChanged,
            self.lr_edit.textEdited, self.ema_edit.textEdited, self.preview_spin.valueChanged,
        ):  # fmt: skip
            sig.connect(self._mark_custom)
        self._applying_recipe = False
        self.apply_recipe(DEFAULT_RECIPE)
        self._fill_devices()
        self._update_buttons()

    # ------------------------------------------------------------------ settings persistence
    def _load_settings(self) -> None:
        s = self.state.settings
        s.beginGroup("train")
        try:
            v = s.value("preset")
            if v in PRESET_NAMES:
                self.preset_combo.setCurrentIndex(PRESET_NAMES.index(v))
            v = s.value("prediction")
            if v is not None and self.prediction_combo.findData(v) >= 0:
                self.prediction_combo.setCurrentIndex(self.prediction_combo.findData(v))
            v = s.value("schedule")
            if v is not None and self.schedule_combo.findData(v) >= 0:
                self.schedule_combo.setCurrentIndex(self.schedule_combo.findData(v))
            for key, edit in (("lr", self.lr_edit), ("ema", self.ema_edit), ("data", self.data_edit)):
                v = s.value(key)
                if v:
                    edit.setText(str(v))
            for key, spin in (
                ("batch", self.batch_spin),
                ("steps", self.steps_spin),
                ("seed", self.seed_spin),
                ("preview", self.preview_spin),
                ("size", self.size_spin),
            ):
                v = s.value(key)
                try:
                    if v is not None:
                        spin.setValue(int(v))
                except (TypeError, ValueError):
                    pass
            self._saved_device = s.value("device")
        finally:
            s.endGroup()

    def _save_settings(self) -> None:
        s = self.state.settings
        s.beginGroup("train")
        s.setValue("preset", self.preset_combo.currentData())
        s.setValue("schedule", self.schedule_combo.currentData())
        s.setValue("prediction", self.prediction_combo.currentData())
        s.setValue("lr", self.lr_edit.text())
        s.setValue("ema", self.ema_edit.text())
        s.setValue("data", self.data_edit.text())
        s.setValue("batch", self.batch_spin.value())
        s.setValue("steps", self.steps_spin.value())
        s.setValue("seed", self.seed_spin.value())
        s.setValue("preview", self.preview_spin.value())
        s.setValue("size", self.size_spin.value())
        s.setValue("device", self.device_combo.currentData())
        s.endGroup()

    @Slot()
    def _on_schedule_changed(self, *_args) -> None:
        """A zero-terminal-SNR schedule needs v-prediction (ε cannot be learned where x_t is pure noise)."""
        name = self.schedule_combo.currentData()
        zero = bool(name in SCHEDULE_PRESETS and SCHEDULE_PRESETS[name].rescale_zero_snr)
        if zero:
            self.prediction_combo.setCurrentIndex(self.prediction_combo.findData("v"))
        self.prediction_combo.setEnabled(not zero and not self.is_busy())
        self._validate()

    # ------------------------------------------------------------------ recipes
    def apply_recipe(self, name: str) -> None:
        """Fill the form with recipe `name` (see ddpm_gui.engine.recipes); "custom" changes nothing."""
        if name not in RECIPES:
            name = "custom"
        self._applying_recipe = True
        try:
            if name != "custom":
                r = RECIPES[name].changes
                self.preset_combo.setCurrentIndex(max(0, self.preset_combo.findData(r["preset"])))
                self.schedule_combo.setCurrentIndex(max(0, self.schedule_combo.findData(next(k for k, v in SCHEDULE_PRESETS.items() if v == r["schedule"]))))
                self.prediction_combo.setCurrentIndex(max(0, self.prediction_combo.findData(r["prediction"])))
                if self.cond_check.isEnabled():
                    self.cond_check.setChecked(r["conditional"])
                if self.size_spin.isEnabled():
                    self.size_spin.setValue(r["image_size"])
                self.batch_spin.setValue(r["batch_size"])
                self.steps_spin.setValue(r["steps"])
                self.lr_edit.setText(f"{r['lr']:g}")
                self.ema_edit.setText(f"{r['ema_decay']:g}")
                self.preview_spin.setValue(r["preview_every"])
                self.set_overrides(warmup_steps=r["warmup_steps"])
            self.recipe_combo.blockSignals(True)
            self.recipe_combo.setCurrentIndex(max(0, self.recipe_combo.findData(name)))
            self.recipe_combo.blockSignals(False)
            self.recipe_note.setText(RECIPE_NOTES.get(name, "Your own settings."))
        finally:
            self._applying_recipe = False
        self._validate()

    @Slot()
    def _on_recipe_chosen(self, *_args) -> None:
        self.apply_recipe(self.recipe_combo.currentData())

    def _matching_recipe(self) -> str:
        """The recipe whose settings the form shows, or "custom"."""
        for name, r in ((n, rc.changes) for n, rc in RECIPES.items()):
            try:
                same = (
                    self.preset_combo.currentData() == r["preset"]
                    and SCHEDULE_PRESETS[self.schedule_combo.currentData()] == r["schedule"]
                    and self.prediction_combo.currentData() == r["prediction"]
                    and self.size_spin.value() == r["image_size"]
                    and self.batch_spin.value() == r["batch_size"]
                    and self.steps_spin.value() == r["steps"]
                    and math.isclose(float(self.lr_edit.text()), r["lr"])
                    and math.isclose(float(self.ema_edit.text()), r["ema_decay"])
                    and self.preview_spin.value() == r["preview_every"]
                )
            except ValueError:
                same = False
            if same:
                return name
        return "custom"

    @Slot()
    def _mark_custom(self, *_args) -> None:
        """A setting changed by hand: show which recipe (if any) the form now matches."""
        if self._applying_recipe:
            return
        name = self._matching_recipe()
        self.recipe_combo.blockSignals(True)
        self.recipe_combo.setCurrentIndex(self.recipe_combo.findData(name))
        self.recipe_combo.blockSignals(False)
        self.recipe_note.setText(RECIPE_NOTES.get(name, "Your own settings."))

    # ------------------------------------------------------------------ devices
    def _detect_devices(self) -> None:
        job = Job(_device_iter, parent=self)
        job.event.connect(self._on_devices)
        job.done.connect(self._on_device_job_done)
        self._device_job = job
        job.start()

    @Slot(object)
    def _on_devices(self, devices: object) -> None:
        self._devices = list(devices)  # type: ignore[arg-type]
        self._fill_devices()

    @Slot()
    def _on_device_job_done(self) -> None:
        self._device_job = None

    def _fill_devices(self) -> None:
        want = self.device_combo.currentData() or getattr(self, "_saved_device", None) or "auto"
        self.device_combo.blockSignals(True)
        self.device_combo.clear()
        for value, label in self._devices:
            self.device_combo.addItem(label, value)
        i = self.device_combo.findData(want)
        self.device_combo.setCurrentIndex(max(i, 0))
        self.device_combo.blockSignals(False)
        self._on_device_changed()

    def _device_is_cuda(self) -> bool:
        value = self.device_combo.currentData() or "auto"
        if value.startswith("cuda"):
            return True
        if value == "auto":
            label = self.device_combo.currentText()
            return "cuda" in label
        return False

    @Slot()
    def _on_device_changed(self, *_args) -> None:
        cuda = self._device_is_cuda()
        self.amp_check.setEnabled(cuda)
        if cuda:
            self.amp_check.setToolTip("bfloat16 autocast: faster training on recent NVIDIA GPUs.")
        else:
            self.amp_check.setChecked(False)
            self.amp_check.setToolTip(
                "bf16 autocast runs on CUDA GPUs only: on a CPU it is about 20x slower, so it stays off."
            )
        self._validate()

    # ------------------------------------------------------------------ model info (params, FLOPs)
    @Slot()
    def _on_model_changed(self, *_args) -> None:
        self._request_model_info()
        self._validate()

    def _model_key(self) -> tuple:
        k = None
        if self.cond_check.isChecked() and self.cond_check.isEnabled() and self.state.data is not None:
            k = _data_summary(self.state.data)[4]
        return (self.preset_combo.currentData(), self.size_spin.value(), k)

    def _request_model_info(self) -> None:
        key = self._model_key()
        if key in self._info_cache:
            self._show_model_info(key)
            return
        self.model_info_label.setText("counting parameters and FLOPs…")
        if self._info_job is not None:
            self._info_pending = key  # computed after the running count ends
            return
        preset, size, k = key
        job = Job(lambda: [(key, *model_info(preset, size, k))], parent=self)
        job.event.connect(self._on_model_info)
        job.failed.connect(self._on_model_info_failed)
        job.done.connect(self._on_info_job_done)
        self._info_job = job
        job.start()

    @Slot(object)
    def _on_model_info(self, item: object) -> None:
        key, n_params, flops = item  # type: ignore[misc]
        self._info_cache[key] = (n_params, flops)
        if key == self._model_key():
            self._show_model_info(key)

    @Slot(str)
    def _on_model_info_failed(self, message: str) -> None:
        self.model_info_label.setText(f"(size unknown: {message})")

    @Slot()
    def _on_info_job_done(self) -> None:
        self._info_job = None
        pending, self._info_pending = self._info_pending, None
        if pending is not None and pending == self._model_key() and pending not in self._info_cache:
            self._request_model_info()

    def _show_model_info(self, key: tuple) -> None:
        n_params, flops = self._info_cache[key]
        text = f"{n_params:,} parameters"
        if flops:
            text += f" · {fmt_count(flops)}FLOP per image (forward + backward)"
        hint = PRESET_HINTS.get(key[0])
        if hint:
            text += f"\n{hint}"
        self.model_info_label.setText(text)

    # ------------------------------------------------------------------ data
    @Slot(object)
    def _on_data_changed(self, data: object) -> None:
        if data is None:
            self.data_edit.setEnabled(True)
            self.data_note.setText("Nothing loaded in the Data tab: the run loads this source itself.")
            self.cond_check.setEnabled(True)
            self.cond_check.setToolTip("Needs labelled data (the built-in shapes have 10 classes).")
        else:
            name, n, size, has_labels, k = _data_summary(data)
            self.data_edit.setText(name)
            self.data_edit.setEnabled(False)
            classes = f", {k} classes" if has_labels and k else ", no labels"
            self.data_note.setText(f"From the Data tab: {n:,} images{classes}.")
            if size:
                self.size_spin.setValue(size)
            self.cond_check.setEnabled(has_labels)
            if not has_labels:
                self.cond_check.setChecked(False)
                self.cond_check.setToolTip("This dataset has no class labels.")
            else:
                self.cond_check.setToolTip(
                    f"Condition on the {k} classes; sample a chosen class with guidance."
                )
        self._request_model_info()
        self._validate()

    # ------------------------------------------------------------------ config
    def _on_run_dir_edited(self, _text: str) -> None:
        self._run_dir_auto = False

    def set_run_dir(self, path: str | Path) -> None:
        self.run_edit.setText(str(path))
        self._run_dir_auto = False

    def _browse_run_dir(self) -> None:
        start = str(Path(self.run_edit.text()).expanduser().parent)
        path = QFileDialog.getExistingDirectory(self, "Run folder", start)
        if path:
            self.set_run_dir(path)

    def build_config(self) -> TrainConfig:
        """The TrainConfig the form describes; raises ConfigError (DDPMError) with a message."""
        from ddpm_gui.errors import ConfigError

        def number(edit: QLineEdit, what: str) -> float:
            try:
                return float(edit.text().strip())
            except ValueError:
                raise ConfigError(f"{what} must be a number, got {edit.text()!r}.") from None

        sched = SCHEDULE_PRESETS[self.schedule_combo.currentData()]
        cfg = TrainConfig(
            data=self.data_edit.text().strip(),
            image_size=self.size_spin.value(),
            preset=self.preset_combo.currentData(),
            conditional=self.cond_check.isChecked() and self.cond_check.isEnabled(),
            schedule=sched,
            prediction="v" if sched.rescale_zero_snr else (self.prediction_combo.currentData() or "eps"),
            lr=number(self.lr_edit, "The learning rate"),
            batch_size=self.batch_spin.value(),
            steps=self.steps_spin.value(),
            ema_decay=number(self.ema_edit, "The EMA decay"),
            amp=self.amp_check.isChecked() and self.amp_check.isEnabled(),
            device=self.device_combo.currentData() or "auto",
            seed=self.seed_spin.value(),
            preview_every=self.preview_spin.value(),
        )
        for key, value in getattr(self, "_overrides", {}).items():
            cfg = cfg.replace(**{key: value})
        if not self.run_edit.text().strip():
            raise ConfigError("Choose a run folder.")
        return cfg.validate()

    def set_overrides(self, **fields) -> None:
        """Extra TrainConfig fields the form does not show (tests, scripts: preview_steps, log_every...)."""
        self._overrides = dict(fields)
        self._validate()

    @Slot()
    def _validate(self, *_args) -> bool:
        try:
            self.build_config()
        except DDPMError as e:
            self.config_error.setText(str(e))
            self.config_error.show()
            self._config_ok = False
        except Exception as e:  # noqa: BLE001 - a bad combination must never crash the form
            self.config_error.setText(f"{type(e).__name__}: {e}")
            self.config_error.show()
            self._config_ok = False
        else:
            self.config_error.hide()
            self._config_ok = True
        self._update_buttons()
        return self._config_ok

    # ------------------------------------------------------------------ running
    def is_busy(self) -> bool:
        return self._job is not None and self._job.is_running()

    def is_paused(self) -> bool:
        return bool(self._trainer is not None and getattr(self._trainer, "paused", False))

    def _update_buttons(self) -> None:
        running = self.is_busy()
        self.start_btn.setEnabled(not running and getattr(self, "_config_ok", False))
        self.resume_btn.setEnabled(not running)
        self.pause_btn.setEnabled(running and not self._stopping())
        self.stop_btn.setEnabled(running and not self._stopping())
        self.use_btn.setEnabled(
            running and self._trainer is not None and self._last_step > 0 and self._snapshot_job is None
        )
        self.eval_btn.setEnabled(self._eval_job is None and self._eval_source() is not None)
        self.pause_btn.setText("&Resume" if self.is_paused() else "&Pause")
        # the form stays readable but not editable while a run is active
        for w in (self.preset_combo, self.schedule_combo, self.batch_spin, self.steps_spin):
            w.setEnabled(not running)
        name = self.schedule_combo.currentData()
        zero = bool(name in SCHEDULE_PRESETS and SCHEDULE_PRESETS[name].rescale_zero_snr)
        self.prediction_combo.setEnabled(not running and not zero)
        # data loaded in the Data tab has its own size (reload it there to change it)
        self.size_spin.setEnabled(not running and self.state.data is None)
        for w in (self.lr_edit, self.ema_edit, self.run_edit):
            w.setReadOnly(running)
        self.device_combo.setEnabled(not running)
        self.seed_spin.setEnabled(not running)
        self.preview_spin.setEnabled(not running)

    def _stopping(self) -> bool:
        return bool(self._job is not None and self._job.stop_event.is_set())

    @Slot()
    def start(self) -> bool:
        """Start a new run with the form's settings. Returns False (message shown) when it cannot."""
        if self.is_busy() or not self._validate():
            return False
        from ddpm_gui.engine.trainer import Trainer

        cfg = self.build_config()
        if self._run_dir_auto:
            self.run_edit.setText(str(timestamp_dir()))
        run_dir = Path(self.run_edit.text().strip()).expanduser()
        ckpts = run_dir / "checkpoints"
        if ckpts.is_dir() and any(ckpts.iterdir()):
            self._show_error(
                f"{run_dir} already holds a run: use “Resume run…” to continue it, or choose another folder."
            )
            return False
        self._save_settings()
        data = self.state.data
        try:
            trainer = Trainer(cfg, run_dir, data=data)
        except DDPMError as e:
            self._show_error(str(e))
            return False
        self._start_trainer(trainer, cfg, run_dir, resumed=False)
        return True

    def resume_run(self, run_dir: str | Path | None = None) -> bool:
        """Continue a run folder from its newest checkpoint (its own config.json)."""
        if self.is_busy():
            return False
        if run_dir is None:
            start = str(default_runs_root()) if default_runs_root().exists() else str(Path.home())
            run_dir = QFileDialog.getExistingDirectory(self, "Resume run folder", start)
            if not run_dir:
                return False
        run_dir = Path(run_dir).expanduser()
        from ddpm_gui.engine.trainer import Trainer

        try:
            path = run_dir / "config.json"
            if not path.exists():
                raise DDPMError(f"{run_dir} is not a run folder (it has no config.json).")
            try:
                cfg = TrainConfig.from_dict(json.loads(path.read_text(encoding="utf-8"))).validate()
            except (json.JSONDecodeError, TypeError, UnicodeDecodeError) as e:
                raise DDPMError(f"{path} cannot be read ({e}).") from None
            self._show_config(cfg, run_dir)
            d = self.state.data  # reuse the Data tab's images when they are the run's own
            same = (
                d is not None and d.source == cfg.data and d.size == cfg.image_size and cfg.data_limit is None
            )
            trainer = Trainer(cfg, run_dir, resume=True, data=d if same else None)
        except DDPMError as e:
            self._show_error(str(e))
            return False
        self._start_trainer(trainer, cfg, run_dir, resumed=True)
        return True

    def _show_config(self, cfg: TrainConfig, run_dir: Path) -> None:
        """Put a run's config into the form (so a person sees what is being resumed)."""
        widgets = (self.preset_combo, self.schedule_combo, self.size_spin, self.cond_check)
        for w in widgets:
            w.blockSignals(True)
        try:
            if cfg.preset in PRESET_NAMES:
                self.preset_combo.setCurrentIndex(PRESET_NAMES.index(cfg.preset))
            for name, sc in SCHEDULE_PRESETS.items():
                if sc == cfg.schedule:
                    self.schedule_combo.setCurrentIndex(self.schedule_combo.findData(name))
            self.size_spin.setValue(cfg.image_size)
            self.cond_check.setChecked(cfg.conditional)
        finally:
            for w in widgets:
                w.blockSignals(False)
        if self.data_edit.isEnabled():
            self.data_edit.setText(cfg.data)
        self.lr_edit.setText(f"{cfg.lr:g}")
        self.ema_edit.setText(f"{cfg.ema_decay:g}")
        self.batch_spin.setValue(cfg.batch_size)
        self.steps_spin.setValue(cfg.steps)
        self.seed_spin.setValue(cfg.seed)
        self.preview_spin.setValue(cfg.preview_every)
        self.set_run_dir(run_dir)
        self._request_model_info()

    def _start_trainer(self, trainer, cfg: TrainConfig, run_dir: Path, resumed: bool) -> None:
        self._trainer = trainer
        self._failed = False
        self._last_checkpoint = None
        self._last_step = 0
        self.last_finished = None
        self.error_label.hide()
        self.estimate_label.hide()
        # a resumed run re-sends its logged losses in its first Progress event
        self.loss_plot.clear()
        self.t_plot.clear()
        if not resumed:
            self.preview_grid.clear()
            self.preview_label.setText("Preview: none yet")
        self.progress.setRange(0, cfg.steps)
        self.progress.setValue(0)
        self.stats_label.setText("Starting: loading data and building the model…")
        self.run_label.setText(f"Run folder: {run_dir}")
        self._log(
            ("Resuming" if resumed else "Starting") + f" {cfg.preset} on {cfg.data}, {cfg.steps:,} steps"
        )
        job = Job(
            lambda: _train_iter(trainer),
            parent=self,
            throttle_s=0.05,
            coalesce=coalesce_progress,
            holdable=_is_progress,
            on_stop=trainer.stop,
            close_on_stop=False,
        )
        job.event.connect(self._on_event)
        job.failed.connect(self._on_job_failed)
        job.done.connect(self._on_done)
        self._job = job
        self.state.set_training(True)
        job.start()
        self._update_buttons()

    @Slot()
    def toggle_pause(self) -> None:
        t = self._trainer
        if t is None or not self.is_busy():
            return
        if t.paused:
            t.resume()
        else:
            t.pause()
        self._update_buttons()

    def pause(self) -> None:
        if self._trainer is not None and self.is_busy() and not self._trainer.paused:
            self.toggle_pause()

    def resume(self) -> None:
        if self._trainer is not None and self.is_busy() and self._trainer.paused:
            self.toggle_pause()

    @Slot()
    def stop(self) -> None:
        """Ask the run to stop: the Trainer saves a checkpoint, then ends (Finished, reason 'stopped')."""
        if self._job is None or not self.is_busy():
            return
        self._job.request_stop()
        self.stats_label.setText("Stopping: saving a checkpoint…")
        self._update_buttons()

    @Slot()
    def use_current_weights(self) -> None:
        """Publish the weights being trained (EMA) to the Sample and Denoise panels. The snapshot (a
        copy of the model, taken under the trainer's lock) is made in a worker: for the tutorial's
        42M-parameter UNet it takes a moment."""
        trainer = self._trainer
        if trainer is None or self._snapshot_job is not None:
            return
        job = Job(lambda: [trainer.bundle()], parent=self)
        job.event.connect(self._on_snapshot)
        job.failed.connect(self._on_snapshot_failed)
        job.done.connect(self._on_snapshot_done)
        self._snapshot_job = job
        self.use_btn.setEnabled(False)
        job.start()

    @Slot(object)
    def _on_snapshot(self, bundle: object) -> None:
        self.state.set_bundle(bundle)
        step = getattr(bundle, "step", "?")
        self.state.show_status(f"Sample and Denoise now use the weights of training step {step}.")
        self._log(f"Published the weights of step {step} to Sample and Denoise")

    @Slot(str)
    def _on_snapshot_failed(self, message: str) -> None:
        self.state.show_status(f"No weights yet: {message}")

    @Slot()
    def _on_snapshot_done(self) -> None:
        self._snapshot_job = None
        self._update_buttons()

    # ------------------------------------------------------------------ quality check
    def _eval_source(self):
        """What the quality check would score: the run being trained (its EMA weights), else the model the
        last run published; None when there is neither."""
        if self._trainer is not None and getattr(self._trainer, "model", None) is not None:
            return self._trainer
        return self.state.bundle

    @Slot()
    def evaluate_quality(self) -> bool:
        """Score the current weights in a worker (classifier trained and cached on first use)."""
        source = self._eval_source()
        if source is None or self._eval_job is not None:
            return False
        data = getattr(self._trainer, "data", None) if self._trainer is not None else self.state.data
        n = self.eval_n_spin.value()
        job = Job(lambda: _eval_iter(source, data, n, job.stop_event), parent=self)
        job.event.connect(self._on_eval_event)
        job.failed.connect(self._on_eval_failed)
        job.done.connect(self._on_eval_done)
        self._eval_job = job
        self.quality_label.setText("Quality check: preparing…")
        self.quality_label.show()
        self._update_buttons()
        job.start()
        return True

    @Slot(object)
    def _on_eval_event(self, e: object) -> None:
        if isinstance(e, tuple):  # (done, total, what)
            done, total, what = e
            self.quality_label.setText(f"Quality check: {what} {done:,}/{total:,}…")
            return
        res = e
        self.last_quality = res
        pct = lambda v: f"{100 * v:.0f}%"  # noqa: E731
        if res.conditional:
            head = f"{pct(res.accuracy)} of samples are the class asked for"
        else:
            head = f"{pct(res.recognisable)} of samples are recognisable (real images: {pct(res.real_recognisable)})"
        floor = res.frechet_distance_real
        text = (
            f"Quality at step {res.model_step:,}: {head} · Fréchet distance {res.frechet_distance:.2f}"
            + (f" (real vs real: {floor:.2f})" if floor is not None else "")
            + f" · {res.n} samples, classifier {pct(res.classifier_accuracy)} accurate on real images"
        )
        self.quality_label.setText(text)
        self._log(text)

    @Slot(str)
    def _on_eval_failed(self, message: str) -> None:
        self.quality_label.setText(f"Quality check failed: {message}")
        self.quality_label.show()
        self._log(f"Quality check failed: {message}", warn=True)

    @Slot()
    def _on_eval_done(self) -> None:
        self._eval_job = None
        self._update_buttons()

    def shutdown(self, timeout_ms: int = 60000) -> None:
        """Stop every job (a training run saves its checkpoint) and wait for the threads to end."""
        refuse_new_jobs(self)
        jobs = [
            j
            for j in (self._job, self._info_job, self._device_job, self._snapshot_job, self._eval_job)
            if j is not None
        ]
        for j in jobs:
            if j.is_running():
                j.request_stop()
        if self._trainer is not None and self._trainer.paused:
            self._trainer.resume()  # a paused trainer still honours stop, but be explicit
        for j in jobs:
            j.wait(timeout_ms)

    # ------------------------------------------------------------------ events (GUI thread)
    @Slot(object)
    def _on_event(self, e: object) -> None:
        if isinstance(e, ev.Progress):
            self._on_progress(e)
        elif isinstance(e, ev.Started):
            self._on_started(e)
        elif isinstance(e, ev.TimestepLoss):
            self.t_plot.set_values(e.loss_by_t)
        elif isinstance(e, ev.Preview):
            self.preview_grid.set_images(e.images, columns=max(1, math.ceil(math.sqrt(len(e.images)))))
            self.preview_label.setText(f"Preview at step {e.step:,} (the same starting noise every time)")
        elif isinstance(e, ev.CheckpointSaved):
            self._last_checkpoint = e.path
            self._log(f"Checkpoint saved at step {e.step:,}: {e.path}")
            if self.eval_auto_check.isChecked() and self._eval_job is None:
                self.evaluate_quality()
        elif isinstance(e, ev.Paused):
            self.stats_label.setText(f"Paused at step {e.step:,}.")
            self._log(f"Paused at step {e.step:,}")
            self._update_buttons()
        elif isinstance(e, ev.Resumed):
            self._log(f"Resumed at step {e.step:,}")
            self._update_buttons()
        elif isinstance(e, ev.Notice):
            self._log(e.message, warn=e.level == "warning")
            self.state.show_status(e.message)
        elif isinstance(e, ev.Finished):
            self._on_finished(e)
        elif isinstance(e, ev.Failed):
            self._failed = True
            if e.checkpoint:
                self._last_checkpoint = e.checkpoint
            extra = f"\nThe last good checkpoint is {e.checkpoint}." if e.checkpoint else ""
            self._fail(e.message + extra)
        elif isinstance(e, BundleReady):
            self.state.set_bundle(e.bundle)

    def _on_started(self, e: ev.Started) -> None:
        self.progress.setRange(0, max(e.total_steps, 1))
        self.progress.setValue(e.step)
        self._last_step = e.step
        flops = f" · {fmt_count(e.flops_per_image)}FLOP/image" if e.flops_per_image else ""
        self.run_label.setText(
            f"{e.device} · {e.n_params:,} parameters{flops} · {e.dataset} ({e.n_images:,} images) · "
            f"batch {e.batch_size} · {e.run_dir}"
        )
        self.stats_label.setText(f"Training from step {e.step:,}…" if e.resumed else "Training…")
        self._on_cpu = e.device.startswith("cpu")
        if e.estimate_note:
            self.estimate_label.setText(e.estimate_note)
            self.estimate_label.show()
        self._log(f"Started on {e.device}: {e.n_params:,} parameters, {e.n_images:,} images")
        if e.estimate_note:
            self._log(e.estimate_note)

    def _on_progress(self, e: ev.Progress) -> None:
        self._last_step = e.step
        self.progress.setMaximum(max(e.total_steps, 1))
        self.progress.setValue(min(e.step, e.total_steps))
        self.loss_plot.append(e.steps, e.losses)
        if not self.is_paused():
            self.stats_label.setText(
                f"loss {e.loss:.4f} (smoothed {e.loss_smooth:.4f}) · {e.img_per_s:,.1f} img/s · "
                f"ETA {fmt_duration(e.eta_s) if e.img_per_s > 0 else '–'} · "
                f"elapsed {fmt_duration(e.elapsed_s)} · lr {e.lr:.2e}"
            )
        if (
            getattr(self, "_on_cpu", False)
            and e.img_per_s > 0
            and math.isfinite(e.eta_s)
            and e.step < e.total_steps
        ):
            done_at = time.strftime("%H:%M", time.localtime(time.time() + e.eta_s))
            self.estimate_label.setText(
                f"Training on the CPU at about {e.img_per_s:,.0f} images/s: the remaining "
                f"{e.total_steps - e.step:,} steps take about {fmt_duration(e.eta_s)} (done around {done_at})."
            )
            self.estimate_label.show()
        if (
            not self.use_btn.isEnabled()
            and self.is_busy()
            and not self._stopping()
            and self._snapshot_job is None
        ):
            self.use_btn.setEnabled(True)

    def _on_finished(self, e: ev.Finished) -> None:
        self.last_finished = e
        self._last_step = e.step
        if e.checkpoint:
            self._last_checkpoint = e.checkpoint
            self.state.add_recent(e.checkpoint)
        what = "Finished" if e.reason == "completed" else "Stopped"
        self.stats_label.setText(f"{what} at step {e.step:,}. Checkpoint: {e.checkpoint or 'none'}")
        self._log(f"{what} at step {e.step:,}" + (f"; checkpoint {e.checkpoint}" if e.checkpoint else ""))
        self.state.show_status(f"Training {what.lower()} at step {e.step:,}.")

    @Slot(str)
    def _on_job_failed(self, message: str) -> None:
        self._failed = True
        self._fail(message)

    def _fail(self, message: str) -> None:
        self._show_error(message)
        self._log(message, warn=True)
        self.state.show_status(f"Training failed: {message}")
        self.stats_label.setText("Failed.")
        if SHOW_DIALOGS:
            QMessageBox.warning(self, "Training failed", message)

    def _show_error(self, message: str) -> None:
        self.error_label.setText(message)
        self.error_label.show()

    @Slot()
    def _on_done(self) -> None:
        self._job = None
        self.estimate_label.hide()
        self.state.set_training(False)
        self._update_buttons()

    def _log(self, message: str, warn: bool = False) -> None:
        item_text = f"{time.strftime('%H:%M:%S')}  {message}"
        self.log_list.addItem(item_text)
        if warn:
            it = self.log_list.item(self.log_list.count() - 1)
            it.setForeground(Qt.GlobalColor.yellow)
        while self.log_list.count() > LOG_LIMIT:
            self.log_list.takeItem(0)
        self.log_list.scrollToBottom()

    # ------------------------------------------------------------------ for tests and scripts
    @property
    def trainer(self):
        return self._trainer

    @property
    def last_checkpoint(self) -> str | None:
        return self._last_checkpoint

    @property
    def last_step(self) -> int:
        return self._last_step

    def sizeHint(self):  # noqa: N802 - Qt API
        from PySide6.QtCore import QSize

        return QSize(1280, 800)


def _device_iter():
    """Worker: the devices present (imports torch off the GUI thread)."""
    try:
        from ddpm_gui.engine.device import describe_devices

        yield describe_devices()
    except ImportError:
        import torch

        out = [("auto", "auto"), ("cpu", "cpu")]
        if torch.cuda.is_available():
            out += [
                (f"cuda:{i}", f"cuda:{i} ({torch.cuda.get_device_name(i)})")
                for i in range(torch.cuda.device_count())
            ]
        yield out


def _is_progress(e: object) -> bool:
    """Only Progress events are held back for merging; the rest (Paused, Notice...) show at once."""
    return isinstance(e, ev.Progress)


def _eval_iter(source, data, n: int, stop):
    """Worker: the quality check. `source` is a running Trainer (snapshot of its EMA weights) or a
    ModelBundle; `data` the labelled ImageData to score against (reloaded from the checkpoint's own
    config when missing or of another size). Yields (done, total, what) progress, then the EvalResult."""
    import queue

    from ddpm_gui.engine.evaluate import evaluate_bundle

    bundle = source.bundle() if hasattr(source, "bundle") and callable(source.bundle) else source
    if data is None or getattr(data, "size", None) != bundle.image_size:
        from ddpm_gui.data import load_data
        from ddpm_gui.engine.checkpoint import read_meta
        from ddpm_gui.errors import ConfigError

        try:
            spec = read_meta(bundle.source).get("config", {}).get("data")
        except Exception:  # noqa: BLE001 - not a checkpoint file (a training run's snapshot)
            spec = None
        if not spec:
            raise ConfigError(
                "Load the dataset this model was trained on in the Data tab (at the model's image size) first."
            )
        data = load_data(spec, image_size=bundle.image_size)
    q: queue.SimpleQueue = queue.SimpleQueue()
    result: list = []
    err: list = []

    def work():
        try:
            result.append(
                evaluate_bundle(
                    bundle,
                    data,
                    n=n,
                    sampler="ddpm",  # the full chain: DDIM with 20 steps scores much lower (docs/benchmarks.md)
                    progress=lambda d, t, w: q.put((d, t, w)),
                    stop=stop,
                )
            )
        except BaseException as exc:  # noqa: BLE001 - handed to the worker thread below
            err.append(exc)
        finally:
            q.put(None)

    import threading

    th = threading.Thread(target=work, name="ddpm-eval", daemon=True)
    th.start()
    try:
        while (item := q.get()) is not None:
            yield item
    finally:  # also when the job is stopped: `stop` is set, so the evaluation ends at its next check
        th.join()
    if err:
        raise err[0]
    yield result[0]


def _train_iter(trainer):
    """Worker: the Trainer's events, then the final model (built here, not in the GUI thread)."""
    failed = False
    for e in trainer.run():
        failed = failed or isinstance(e, ev.Failed)
        yield e
    if not failed:
        try:
            yield BundleReady(trainer.bundle())
        except Exception:  # noqa: BLE001 - no model (stopped before it was built): nothing to publish
            return
