"""Sample panel: draw images from a model and watch the reverse process frame by frame.

The model is either the app's current one (trained here, or opened from the File menu: AppState.bundle)
or a checkpoint loaded in this panel. `sample_frames` runs in a Job thread and yields small uint8
frames (x_t and the predicted x_0); at most ~100 are kept, so a finished run can be scrubbed to any
step with the FramePlayer and exported as a PNG grid or an animated GIF. Exports are encoded and written
(atomically, by engine.images) in a Job, so a long GIF never freezes the window; the save dialogs open
in the run's samples/ folder.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QMenu,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QScrollArea,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ddpm_gui.engine.images import make_grid, save_gif, save_png, upscale
from ddpm_gui.qt.imageview import FramePlayer, ImageGrid
from ddpm_gui.qt.state import AppState
from ddpm_gui.qt.style import ERROR_STYLE, INFO_STYLE
from ddpm_gui.qt.workers import Job, refuse_new_jobs

# Tests set this to False: errors are then shown in the panel only, never in a modal dialog.
SHOW_DIALOGS = True

MAX_FRAMES = 100  # frames kept for the player (and the GIF)
EXPORT_DIR_KEY = "export_dir"  # QSettings: the folder of the last export
FRAME_BUDGET_BYTES = 256 * 2**20  # ... and at most this much memory for them

SAMPLERS: tuple[tuple[str, str, str], ...] = (
    ("ddpm-beta", "DDPM, σ² = β_t (tutorial)", "Ancestral sampling with the variance the tutorial uses."),
    (
        "ddpm-posterior",
        "DDPM, σ² = β̃_t (posterior)",
        "Ancestral sampling with the posterior variance (DDPM eq. 7).",
    ),
    ("ddim", "DDIM", "Deterministic with eta = 0; needs far fewer steps."),
)

NO_MODEL_TEXT = "No model yet. Train a model in the Train tab or load a checkpoint (File ▸ Open checkpoint…)."


# ----------------------------------------------------------------------------- shared helpers


def tile(images: np.ndarray, columns: int | None = None, pad: int = 2, scale: int = 1) -> np.ndarray:
    """The export mosaic: engine.images.make_grid of the images upscaled `scale`x first (nearest), so the
    `pad` pixels between them stay thin at any scale."""
    return make_grid(upscale(np.asarray(images, dtype=np.uint8), scale), columns=columns, pad=pad)


def export_scale(size: int) -> int:
    """Integer upscale that makes each tile at least ~128 px (32 px images -> 4x)."""
    return max(1, 128 // max(size, 1))


def describe_bundle(b) -> str:
    cond = f"class-conditional ({b.num_classes} classes)" if b.num_classes else "unconditional"
    return (
        f"{b.preset} · step {b.step:,} · {b.image_size}×{b.image_size} · {cond} · T = {b.schedule.T}, "
        f"{b.prediction}-prediction\nfrom {b.source}"
    )


class SamplerForm(QWidget):
    """Sampler choice shared by the Sample and Denoise panels: DDPM (two variances) or DDIM."""

    changed = Signal()

    def __init__(self, parent: QWidget | None = None, default: str = "ddpm-beta", ddim_steps: int = 50):
        super().__init__(parent)
        self.combo = QComboBox()
        for key, label, tip in SAMPLERS:
            self.combo.addItem(label, key)
            self.combo.setItemData(self.combo.count() - 1, tip, Qt.ItemDataRole.ToolTipRole)
        self.combo.setCurrentIndex(max(self.combo.findData(default), 0))
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(1, 10000)
        self.steps_spin.setValue(ddim_steps)
        self.steps_spin.setToolTip("DDIM steps: evenly spaced timesteps from T-1 down to 0.")
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
        self._steps_label = QLabel("DDIM ste&ps:")
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

    def kwargs(self) -> dict:
        key = self.key()
        return {
            "sampler": "ddim" if key == "ddim" else "ddpm",
            "variance": "posterior" if key == "ddpm-posterior" else "beta",
            "steps": self.steps_spin.value(),
            "eta": self.eta_spin.value(),
            "clip_x0": self.clip_check.isChecked(),
        }

    def chain_length(self, t_start: int) -> int:
        """Number of reverse steps from timestep t_start (T-1 for pure noise) down to 0."""
        if self.key() == "ddim":
            from ddpm_gui.core.diffusion import ddim_timesteps

            return len(ddim_timesteps(t_start + 1, self.steps_spin.value()))
        return t_start + 1

    @Slot()
    def _update(self, *_args) -> None:
        ddim = self.key() == "ddim"
        for w in (self.steps_spin, self.eta_spin, self._steps_label, self._eta_label):
            w.setEnabled(ddim)
        self.changed.emit()


def frames_every(chain: int, n: int, size: int) -> int:
    """Keep every k-th frame so that at most MAX_FRAMES (and FRAME_BUDGET_BYTES) are held."""
    per_frame = 2 * n * size * size * 3
    keep = max(2, min(MAX_FRAMES, FRAME_BUDGET_BYTES // max(per_frame, 1)))
    return max(1, math.ceil(chain / keep))


# ----------------------------------------------------------------------------- the panel


class SamplePanel(QWidget):
    exported = Signal(object)  # the Path of a finished export

    def __init__(self, state: AppState, parent: QWidget | None = None):
        super().__init__(parent)
        self.state = state
        self._loaded = None  # a bundle loaded in this panel
        self._job: Job | None = None
        self._load_job: Job | None = None
        self._export_job: Job | None = None
        self._frames: list = []
        self._run_info = ""
        self._build_ui()
        state.bundleChanged.connect(self._on_state_bundle)
        self._on_source_changed()

    # ------------------------------------------------------------------ UI
    def _build_ui(self) -> None:
        # --- model source
        self.current_radio = QRadioButton("C&urrent model")
        self.current_radio.setToolTip("The model trained in the Train tab or opened from the File menu")
        self.loaded_radio = QRadioButton("Loaded chec&kpoint")
        self.current_radio.setChecked(True)
        group = QButtonGroup(self)
        group.addButton(self.current_radio)
        group.addButton(self.loaded_radio)
        self.load_btn = QPushButton("&Load checkpoint…")
        menu = QMenu(self.load_btn)
        menu.addAction("Checkpoint file (.safetensors)…", lambda: self.load_checkpoint())
        menu.addAction("Run folder (its newest checkpoint)…", lambda: self.load_checkpoint(folder=True))
        self.load_btn.setMenu(menu)
        self.model_label = QLabel(NO_MODEL_TEXT)
        self.model_label.setWordWrap(True)
        self.model_label.setStyleSheet(INFO_STYLE)
        self.model_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        src_box = QGroupBox("Model")
        sv = QVBoxLayout(src_box)
        row = QHBoxLayout()
        row.addWidget(self.current_radio)
        row.addWidget(self.loaded_radio)
        row.addStretch(1)
        sv.addLayout(row)
        sv.addWidget(self.load_btn)
        sv.addWidget(self.model_label)

        # --- sampling settings
        self.sampler_form = SamplerForm(default="ddpm-beta")
        self.n_spin = QSpinBox()
        self.n_spin.setRange(1, 64)
        self.n_spin.setValue(16)
        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(0, 2**31 - 1)
        self.class_combo = QComboBox()
        self.class_combo.setToolTip("Class-conditional models only: the class to draw")
        self.guidance_spin = QDoubleSpinBox()
        self.guidance_spin.setRange(0.0, 20.0)
        self.guidance_spin.setSingleStep(0.5)
        self.guidance_spin.setValue(3.0)
        self.guidance_spin.setToolTip(
            "Classifier-free guidance scale w: 1 = plain conditional, higher = stronger"
        )
        form = QFormLayout()
        form.addRow("&Images:", self.n_spin)
        form.addRow("See&d:", self.seed_spin)
        form.addRow("Cl&ass:", self.class_combo)
        form.addRow("G&uidance:", self.guidance_spin)
        set_box = QGroupBox("Sampling")
        bv = QVBoxLayout(set_box)
        bv.addWidget(self.sampler_form)
        bv.addLayout(form)

        # --- actions
        self.generate_btn = QPushButton("&Generate")
        self.generate_btn.setDefault(True)
        self.generate_btn.clicked.connect(self.generate)
        self.stop_btn = QPushButton("St&op")
        self.stop_btn.clicked.connect(self.stop)
        self.png_btn = QPushButton("Save P&NG grid…")
        self.png_btn.clicked.connect(lambda: self.save_png_grid())
        self.gif_btn = QPushButton("Save G&IF…")
        self.gif_btn.clicked.connect(lambda: self.save_gif())
        actions = QHBoxLayout()
        actions.addWidget(self.generate_btn)
        actions.addWidget(self.stop_btn)
        exports = QHBoxLayout()
        exports.addWidget(self.png_btn)
        exports.addWidget(self.gif_btn)
        self.export_bar = QProgressBar()  # busy (no known length) while an export is written
        self.export_bar.setRange(0, 0)
        self.export_bar.setTextVisible(False)
        self.export_bar.hide()
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        self.error_label = QLabel()
        self.error_label.setWordWrap(True)
        self.error_label.setStyleSheet(ERROR_STYLE)
        self.error_label.hide()

        left = QWidget()
        lv = QVBoxLayout(left)
        lv.setContentsMargins(0, 0, 4, 0)
        lv.addWidget(src_box)
        lv.addWidget(set_box)
        lv.addLayout(actions)
        lv.addLayout(exports)
        lv.addWidget(self.export_bar)
        lv.addWidget(self.status_label)
        lv.addWidget(self.error_label)
        lv.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(left)
        scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        scroll.setMinimumWidth(320)
        scroll.setMaximumWidth(400)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)

        # --- the reverse process
        self.xt_title = QLabel("<b>x<sub>t</sub></b>: the sample being denoised")
        self.x0_title = QLabel(
            "<b>predicted x<sub>0</sub></b>: the model's guess of the final image at this step"
        )
        for lab in (self.xt_title, self.x0_title):
            lab.setWordWrap(True)
        self.xt_grid = ImageGrid()
        self.x0_grid = ImageGrid()
        self.player = FramePlayer(fps=10)
        self.player.set_label_func(self._frame_label)
        self.player.frameChanged.connect(self._show_frame)
        grids = QHBoxLayout()
        for title, grid in ((self.xt_title, self.xt_grid), (self.x0_title, self.x0_grid)):
            col = QVBoxLayout()
            col.addWidget(title)
            col.addWidget(grid, 1)
            grids.addLayout(col, 1)
        self.frame_label = QLabel("")
        self.frame_label.setStyleSheet(INFO_STYLE)
        right = QWidget()
        rv = QVBoxLayout(right)
        rv.setContentsMargins(4, 0, 0, 0)
        rv.addLayout(grids, 1)
        rv.addWidget(self.player)
        rv.addWidget(self.frame_label)
        self.player.install_shortcuts(right)

        outer = QHBoxLayout(self)
        outer.addWidget(scroll)
        outer.addWidget(right, 1)

        self.current_radio.toggled.connect(self._on_source_changed)
        self.class_combo.currentIndexChanged.connect(self._update_buttons)
        self._update_buttons()

    # ------------------------------------------------------------------ model source
    def bundle(self):
        return self._loaded if self.loaded_radio.isChecked() else self.state.bundle

    @Slot(object)
    def _on_state_bundle(self, _bundle: object) -> None:
        if self.current_radio.isChecked():
            self._on_source_changed()

    @Slot()
    def _on_source_changed(self, *_args) -> None:
        self.loaded_radio.setEnabled(self._loaded is not None)
        b = self.bundle()
        if b is None:
            self.model_label.setText(NO_MODEL_TEXT)
        else:
            self.model_label.setText(describe_bundle(b))
            self.sampler_form.set_T(b.schedule.T)
        self._fill_classes(b)
        self._update_buttons()

    def _fill_classes(self, b) -> None:
        keep = self.class_combo.currentData()
        self.class_combo.blockSignals(True)
        self.class_combo.clear()
        self.class_combo.addItem("any (unconditional)", None)
        if b is not None and b.num_classes:
            names = b.class_names or [str(i) for i in range(b.num_classes)]
            for i in range(b.num_classes):
                self.class_combo.addItem(f"{i}: {names[i] if i < len(names) else i}", i)
        i = self.class_combo.findData(keep)
        self.class_combo.setCurrentIndex(max(i, 0))
        self.class_combo.blockSignals(False)

    def load_checkpoint(self, path: str | Path | None = None, folder: bool = False) -> None:
        """Load a run folder or a .safetensors checkpoint in a worker; errors become a message."""
        if self._load_job is not None:
            return
        if path is None:
            start = str(Path.home() / "DDPM Studio" / "runs")
            if folder:
                path = QFileDialog.getExistingDirectory(self, "Open run folder", start)
            else:
                path, _ = QFileDialog.getOpenFileName(
                    self, "Open checkpoint", start, "Checkpoints (*.safetensors);;All files (*)"
                )
            if not path:
                return
        self.error_label.hide()
        self.status_label.setText(f"Loading {path}…")
        job = Job(lambda p=str(path): [_load(p)], parent=self)
        job.event.connect(self._on_loaded)
        job.failed.connect(self._on_load_failed)
        job.done.connect(self._on_load_done)
        self._load_job = job
        job.start()
        self._update_buttons()

    @Slot(object)
    def _on_loaded(self, bundle: object) -> None:
        self._loaded = bundle
        self.status_label.setText("Checkpoint loaded.")
        self.state.add_recent(str(bundle.source))  # type: ignore[attr-defined]
        self.loaded_radio.setEnabled(True)
        self.loaded_radio.setChecked(True)
        self._on_source_changed()

    @Slot(str)
    def _on_load_failed(self, message: str) -> None:
        self.status_label.setText("")
        self._error(message, "Cannot open the checkpoint")

    @Slot()
    def _on_load_done(self) -> None:
        self._load_job = None
        self._update_buttons()

    # ------------------------------------------------------------------ sampling
    def is_busy(self) -> bool:
        return any(j is not None and j.is_running() for j in (self._job, self._load_job, self._export_job))

    def _update_buttons(self, *_args) -> None:
        b = self.bundle()
        running = self._job is not None
        self.generate_btn.setEnabled(b is not None and not running)
        self.stop_btn.setEnabled(running)
        self.load_btn.setEnabled(self._load_job is None)
        has_final = bool(self._frames) and self._frames[-1].final
        exporting = self._export_job is not None
        self.png_btn.setEnabled(has_final and not running and not exporting)
        self.gif_btn.setEnabled(len(self._frames) > 1 and not running and not exporting)
        cond = b is not None and bool(b.num_classes)
        self.class_combo.setEnabled(cond)
        self.guidance_spin.setEnabled(cond and self.class_combo.currentData() is not None)

    def sample_config(self):
        from ddpm_gui.engine.sampler import SampleConfig

        b = self.bundle()
        label = self.class_combo.currentData() if b is not None and b.num_classes else None
        return SampleConfig(
            n=self.n_spin.value(),
            seed=self.seed_spin.value(),
            class_label=label,
            guidance=self.guidance_spin.value() if label is not None else 1.0,
            **self.sampler_form.kwargs(),
        )

    @Slot()
    def generate(self) -> bool:
        b = self.bundle()
        if b is None or self._job is not None:
            return False
        from ddpm_gui.engine.sampler import accelerated, sample_frames
        from ddpm_gui.errors import DDPMError

        cfg = self.sample_config()
        chain = self.sampler_form.chain_length(b.schedule.T - 1)
        cfg.every = frames_every(chain, cfg.n, b.image_size)
        try:
            cfg.validate(b)
        except DDPMError as e:
            self._error(str(e), "Cannot sample")
            return False
        self.error_label.hide()
        self.player.clear()
        self._frames = []
        self.player.set_expected(math.ceil(chain / cfg.every) + (0 if (chain - 1) % cfg.every == 0 else 1))
        sampler = self.sampler_form.combo.currentText()
        self._run_info = f"{sampler}, {chain} steps, seed {cfg.seed}"
        self.status_label.setText(f"Sampling {cfg.n} images ({self._run_info})…")
        stop = threading.Event()
        job = Job(
            lambda: sample_frames(accelerated(b), cfg, stop=stop),
            parent=self,
            on_stop=stop.set,
            close_on_stop=True,
        )
        job.event.connect(self._on_frame)
        job.failed.connect(self._on_failed)
        job.done.connect(self._on_done)
        self._job = job
        job.start()
        self._update_buttons()
        return True

    @Slot()
    def stop(self) -> None:
        if self._job is not None:
            self._job.request_stop()
            self.status_label.setText("Stopping…")

    @Slot(object)
    def _on_frame(self, frame: object) -> None:
        self._frames.append(frame)
        self.player.append_frame(frame)

    @Slot(str)
    def _on_failed(self, message: str) -> None:
        self._error(message, "Sampling failed")

    @Slot()
    def _on_done(self) -> None:
        self._job = None
        self.player.set_expected(0)
        if self._frames and self._frames[-1].final:
            self.status_label.setText(f"Done: {len(self._frames)} frames kept ({self._run_info}).")
            self.player.set_current(len(self._frames) - 1)
        elif self.error_label.isHidden():
            self.status_label.setText(f"Stopped after {len(self._frames)} frames.")
        self._update_buttons()

    def shutdown(self, timeout_ms: int = 60000) -> None:
        refuse_new_jobs(self)
        jobs = [j for j in (self._job, self._load_job, self._export_job) if j is not None]
        for j in jobs:
            j.request_stop()
        for j in jobs:
            j.wait(timeout_ms)

    # ------------------------------------------------------------------ frames
    def frames(self) -> list:
        return list(self._frames)

    def _frame_label(self, i: int, n: int) -> str:
        if not 0 <= i < len(self._frames):
            return ""
        f = self._frames[i]
        return f"step {f.index + 1} / {f.total} · t = {f.t}" + (" · final" if f.final else "")

    @Slot(int)
    def _show_frame(self, i: int) -> None:
        if not 0 <= i < len(self._frames):
            return
        f = self._frames[i]
        cols = max(1, math.ceil(math.sqrt(len(f.xt))))
        self.xt_grid.set_images(f.xt, columns=cols)
        self.x0_grid.set_images(f.x0, columns=cols)
        if f.final:
            self.xt_title.setText("<b>samples</b>: the final images")
        else:
            self.xt_title.setText(f"<b>x<sub>t</sub></b> after step {f.index + 1} (t = {f.t})")
        self.frame_label.setText(
            f"frame {i + 1} of {len(self._frames)} kept · reverse step {f.index + 1} of {f.total} · t = {f.t}"
        )

    # ------------------------------------------------------------------ export
    def final_images(self) -> np.ndarray | None:
        if self._frames and self._frames[-1].final:
            return self._frames[-1].xt
        return None

    def save_png_grid(self, path: str | Path | None = None) -> Path | None:
        """Write the final samples as one PNG mosaic (upscaled so small images stay visible), in a worker.

        Returns the path being written (`exported` follows, or an error message), or None when there is
        nothing to save, an export is already running or the dialog was cancelled."""
        images = self.final_images()
        if images is None or self._export_job is not None:
            return None
        path = self._export_path(path, "Save samples", "samples.png", "PNG images (*.png)")
        if path is not None:
            scale = export_scale(images.shape[1])
            self._start_export(path, lambda: save_png(path, tile(images, scale=scale)))
        return path

    def save_gif(self, path: str | Path | None = None, fps: int | None = None) -> Path | None:
        """Write the x_t frames as an animated GIF (loops; holds the final samples a little longer), in a
        worker. Returns as save_png_grid does."""
        if len(self._frames) < 2 or self._export_job is not None:
            return None
        path = self._export_path(path, "Save animation", "reverse_process.gif", "GIF images (*.gif)")
        if path is not None:
            scale = export_scale(self._frames[0].xt.shape[1])
            xts = [f.xt for f in self._frames]
            ms = max(20, round(1000 / (fps or self.player.fps())))
            self._start_export(
                path, lambda: save_gif(path, xts, ms, 1500, render=lambda xt: tile(xt, scale=scale))
            )
        return path

    def is_exporting(self) -> bool:
        return self._export_job is not None

    def export_folder(self) -> Path:
        """Where the save dialogs open: the run's samples/ folder when the model comes from a run folder,
        otherwise the folder of the last export (remembered between sessions), otherwise the home folder."""
        run = run_folder(self.bundle())
        if run is not None and (run / "samples").is_dir():
            return run / "samples"
        last = str(self.state.settings.value(EXPORT_DIR_KEY, "") or "")
        return Path(last) if last and Path(last).is_dir() else Path.home()

    def _export_path(self, path: str | Path | None, title: str, name: str, filt: str) -> Path | None:
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, title, str(self.export_folder() / name), filt)
            if not path:
                return None
        path = Path(path)
        return path if path.suffix else path.with_suffix(Path(name).suffix)

    def _start_export(self, path: Path, write: Callable[[], None]) -> None:
        self.error_label.hide()
        self.status_label.setText(f"Saving {path.name}…")
        self.export_bar.show()
        job = Job(lambda: _export(path, write), parent=self)
        job.event.connect(self._on_exported)
        job.failed.connect(self._on_export_failed)
        job.done.connect(self._on_export_done)
        self._export_job = job
        job.start()
        self._update_buttons()

    @Slot(object)
    def _on_exported(self, path: object) -> None:
        self.status_label.setText(f"Saved {path}")
        self.state.show_status(f"Saved {path}")
        self.state.settings.setValue(EXPORT_DIR_KEY, str(Path(str(path)).parent))
        self.exported.emit(path)

    @Slot(str)
    def _on_export_failed(self, message: str) -> None:
        self.status_label.setText("")
        self._error(message, "Cannot save")

    @Slot()
    def _on_export_done(self) -> None:
        self._export_job = None
        self.export_bar.hide()
        self._update_buttons()

    # ------------------------------------------------------------------ messages
    def _error(self, message: str, title: str) -> None:
        self.error_label.setText(message)
        self.error_label.show()
        self.state.show_status(message)
        if SHOW_DIALOGS:
            QMessageBox.warning(self, title, message)


def run_folder(bundle) -> Path | None:
    """The run folder a bundle comes from (a training run, or a checkpoint in its checkpoints/), or None."""
    if bundle is None:
        return None
    source = str(bundle.source)
    if source.startswith("training run "):
        return Path(source[len("training run ") :])
    p = Path(source)
    return p.parent.parent if p.parent.name == "checkpoints" else None


def _export(path: Path, write: Callable[[], None]) -> Iterator[Path]:
    """Worker: encode and write one export (engine.images writes atomically), then hand back its path."""
    write()
    yield path


def _load(path: str):
    """Worker: load a bundle (imports torch and builds the model off the GUI thread)."""
    from ddpm_gui.engine.sampler import load_bundle

    return load_bundle(path)
