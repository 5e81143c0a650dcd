"""Sample panel: draw images from a model and watch the reverse process frame by frame.

The model is the app's current one (AppState.bundle: trained in the Train tab, opened from the File menu,
loaded with this panel's Load button, or a checkpoint or run folder dropped on the panel; every one of
them enters through AppState.set_bundle). `sample_frames_with_terms` (engine/terms.py: sample_frames' frames
with the terms of their steps) runs in a job and yields small uint8 frames (x_t and the predicted x_0); at
most ~100 are kept, so a finished run can be scrubbed to any step with the FramePlayer and exported
(qt/exports.py) as a PNG grid or an animated GIF or WebP. The "Step terms" tab beside the grids
(panels/step_terms.py) shows every term of the step under the slider for one image, clicked in the grids.
"""

from __future__ import annotations

import math
from pathlib import Path

from PySide6.QtCore import Slot
from PySide6.QtWidgets import (
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QMenu,
    QPushButton,
    QSpinBox,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from ddpm_gui.qt.exports import export_scale, tile
from ddpm_gui.qt.imageview import ImageGrid
from ddpm_gui.qt.panels.chain_panel import ChainPanel
from ddpm_gui.qt.panels.step_terms import StepTermsView
from ddpm_gui.qt.player import FramePlayer
from ddpm_gui.qt.state import AppState
from ddpm_gui.qt.style import INFO_STYLE
from ddpm_gui.qt.widgets import (
    SamplerForm,
    button,
    fill_class_combo,
    frames_every,
    guidance_spin,
    kept_frames,
    laid_out,
    side_column,
)

# Tests set this to False: errors are then shown in the panel only, never in a modal dialog.
SHOW_DIALOGS = True

DROP_HINT = (
    "The Sample tab draws new images from a model: drop a checkpoint (.safetensors) or a run folder here. "
    "Images go to the Forward or Denoise tab, image folders to the Data tab."
)


def _dialogs() -> bool:
    return SHOW_DIALOGS


class SamplePanel(ChainPanel):
    def __init__(self, state: AppState, parent: QWidget | None = None):
        super().__init__(state, _dialogs, "Sampling failed", parent)
        self._run_info = ""
        self.export_bar = self.messages.busy_bar
        self._on_bundle(state.bundle)

    # ------------------------------------------------------------------ UI
    def _build_ui(self) -> None:
        self.generate_btn = button("&Generate", self.generate)
        self.generate_btn.setDefault(True)
        self.stop_btn = button("St&op", self.stop)
        self.png_btn = button("Save P&NG grid…", self.save_png_grid, "The final samples as one PNG mosaic")
        self.anim_btn = button(
            "Save GIF / &WebP…",
            self.save_animation,
            "The reverse process as an animated GIF or WebP (pick the type in the dialog)",
        )
        rows = ((self.generate_btn, self.stop_btn), (self.png_btn, self.anim_btn))
        outer = QHBoxLayout(self)
        outer.addWidget(
            side_column([self._model_box(), self._settings_box(), *rows, self.messages], 320, 400)
        )
        outer.addWidget(self._process_view(), 1)
        self.class_combo.currentIndexChanged.connect(self._update_buttons)
        self._update_buttons()

    def _model_box(self) -> QGroupBox:
        self.load_btn = QPushButton("&Load checkpoint…")
        self.load_btn.setToolTip(
            "Make a checkpoint the app's model (or drop one, or a run folder, on this tab)"
        )
        menu = QMenu(self.load_btn)
        menu.addAction("Checkpoint file (.safetensors)…", lambda: self.load_checkpoint())
        menu.addAction("Run folder (its newest checkpoint)…", lambda: self.load_checkpoint(folder=True))
        self.load_btn.setMenu(menu)
        box = QGroupBox("Model")
        v = QVBoxLayout(box)
        v.addWidget(self.model_label)
        v.addWidget(self.load_btn)
        return box

    def _settings_box(self) -> QGroupBox:
        self.sampler_form = SamplerForm(default="ddpm-beta")
        self.n_spin = QSpinBox()
        self.n_spin.setRange(1, 64)
        self.n_spin.setValue(16)
        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(0, 2**31 - 1)
        self.class_combo = QComboBox()
        self.class_combo.setToolTip("Class-conditional models only: the class to draw")
        self.guidance_spin = guidance_spin()
        form = QFormLayout()
        form.addRow("&Images:", self.n_spin)
        form.addRow("See&d:", self.seed_spin)
        form.addRow("Cl&ass:", self.class_combo)
        form.addRow("G&uidance:", self.guidance_spin)
        box = QGroupBox("Sampling")
        v = QVBoxLayout(box)
        v.addWidget(self.sampler_form)
        v.addLayout(form)
        return box

    def _process_view(self) -> QWidget:
        self.xt_title = QLabel("<b>x<sub>t</sub></b>: the sample being denoised")
        self.x0_title = QLabel("<b>predicted x<sub>0</sub></b>: the model's guess of the result")
        for lab in (self.xt_title, self.x0_title):
            lab.setWordWrap(True)
        self.xt_grid = ImageGrid()
        self.x0_grid = ImageGrid()
        self.player = FramePlayer(fps=10)
        self.player.frameChanged.connect(self._show_frame)
        samples, grids = laid_out(QHBoxLayout)
        for title, grid in ((self.xt_title, self.xt_grid), (self.x0_title, self.x0_grid)):
            col = QVBoxLayout()
            col.addWidget(title)
            col.addWidget(grid, 1)
            grids.addLayout(col, 1)
            grid.clicked.connect(self._pick_image)
            grid.setToolTip("Click an image to see the terms of its steps (Step terms)")
        self.terms_view = StepTermsView()
        self.terms_view.imageChanged.connect(self._on_terms_image)
        self.view_tabs = QTabWidget()
        self.view_tabs.setDocumentMode(True)
        self.view_tabs.addTab(samples, "Samples")
        self.view_tabs.addTab(self.terms_view, "Step terms")
        self.view_tabs.setTabToolTip(
            1, "Every term of the step under the slider: x_t, ε̂, x̂₀, the deterministic part, σ_t·z, x_(t-1)"
        )
        self.view_tabs.currentChanged.connect(lambda _i: self._show_frame(self.player.current()))
        self.frame_label = QLabel("")
        self.frame_label.setStyleSheet(INFO_STYLE)
        right, rv = laid_out(QVBoxLayout, margins=(4, 0, 0, 0))
        rv.addWidget(self.view_tabs, 1)
        rv.addWidget(self.player)
        rv.addWidget(self.frame_label)
        self.player.install_shortcuts(right)
        return right

    # ------------------------------------------------------------------ the model: AppState's
    def bundle(self):
        return self.state.bundle

    @Slot(object)
    def _on_bundle(self, b: object) -> None:
        self._show_model(b)
        if b is None:
            self.player.set_label_func(self._frame_label)
        else:
            T = b.schedule.T  # type: ignore[attr-defined]
            self.sampler_form.set_T(T)
            self.player.set_label_func(self._frame_label, widest=f"step {T} / {T} · t = {T - 1} · final")
        self._fill_classes(b)
        self._update_buttons()

    def _fill_classes(self, b) -> None:
        fill_class_combo(self.class_combo, b)

    def load_checkpoint(self, path: str | Path | None = None, folder: bool = False) -> bool:
        """Load a run folder or a .safetensors checkpoint in a worker and make it the app's model; a
        failure becomes a message. None: ask for a file (or a folder)."""
        return self.loader.load(path, folder)

    def _nothing_taken(self, paths: list[Path]) -> None:
        if paths:
            self.messages.error(f"{paths[0].name}: not a checkpoint or a run folder. {DROP_HINT}")

    # ------------------------------------------------------------------ sampling
    def is_sampling(self) -> bool:
        return self._job.is_busy()

    def is_loading(self) -> bool:
        return self.loader.is_busy()

    def _update_buttons(self, *_args) -> None:
        b = self.bundle()
        running = self._job.is_busy()
        self.generate_btn.setEnabled(b is not None and not running)
        self.stop_btn.setEnabled(running)
        self.load_btn.setEnabled(not self.loader.is_busy())
        has_final = bool(self._frames) and self._frames[-1].final
        exporting = self.exporter.is_busy()
        self.png_btn.setEnabled(has_final and not running and not exporting)
        self.anim_btn.setEnabled(len(self._frames) > 1 and not running and not exporting)
        cond = b is not None and bool(b.num_classes)
        self.class_combo.setEnabled(cond)
        # guidance needs the model's "no class" row (models of other tools may have none)
        guided = cond and getattr(b, "null_class", None) is not None
        self.guidance_spin.setEnabled(guided and self.class_combo.currentData() is not None)

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
        if b is None or self._job.is_busy():
            return False
        from ddpm_gui.engine.sampler import accelerated
        from ddpm_gui.engine.terms import sample_frames_with_terms
        from ddpm_gui.errors import DDPMError

        cfg = self.sample_config()
        chain = self.sampler_form.chain_length(b.schedule.T - 1)
        cfg.every = frames_every(chain, cfg.n, b.image_size)
        try:
            cfg.validate(b)
        except DDPMError as e:
            self.messages.error(str(e), "Cannot sample")
            return False
        sampler = self.sampler_form.combo.currentText()
        self._run_info = f"{sampler}, {chain} steps, seed {cfg.seed}"
        self.terms_view.clear()
        return self._start_chain(
            lambda stop: sample_frames_with_terms(accelerated(b), cfg, stop=stop),
            kept_frames(chain, cfg.every),
            f"Sampling {cfg.n} images ({self._run_info})…",
        )

    @Slot()
    def stop(self) -> None:
        if self._job.is_busy():
            self._job.stop()
            self.messages.status("Stopping…")

    def _done_text(self) -> str:
        return f"Done: {len(self._frames)} frames kept ({self._run_info})."

    def _stopped_text(self) -> str:
        return f"Stopped after {len(self._frames)} frames."

    # ------------------------------------------------------------------ frames
    def frames(self) -> list:
        return list(self._frames)

    def _on_frame(self, frame) -> None:
        self.terms_view.add_frame(frame)  # before the player shows it: its norms are in the plot
        super()._on_frame(frame)

    @Slot(int)
    def _pick_image(self, i: int) -> None:
        """An image clicked in the Samples grids: the Step terms view shows its terms."""
        self.terms_view.set_image(i)

    @Slot(int)
    def _on_terms_image(self, _i: int) -> None:
        self._show_frame(self.player.current())

    def _frame_label(self, i: int, n: int) -> str:
        f = self._kept(i)
        if f is None:
            return ""
        return f"step {f.index + 1} / {f.total} · t = {f.t}" + (" · final" if f.final else "")

    @Slot(int)
    def _show_frame(self, i: int) -> None:
        f = self._kept(i)
        if f is None:
            return
        self.frame_label.setText(
            f"frame {i + 1} of {len(self._frames)} kept · reverse step {f.index + 1} of {f.total} · t = {f.t}"
        )
        if self.view_tabs.currentWidget() is self.terms_view:
            self.terms_view.show_frame(f)  # the hidden grids are drawn when their tab is shown
            return
        cols = max(1, math.ceil(math.sqrt(len(f.xt))))
        self.xt_grid.set_images(f.xt, columns=cols)
        self.x0_grid.set_images(f.x0, columns=cols)
        if f.final:
            self.xt_title.setText("<b>samples</b>: the final images")
        else:
            self.xt_title.setText(f"<b>x<sub>t</sub></b> after step {f.index + 1} (t = {f.t})")

    # ------------------------------------------------------------------ export
    def export_folder(self) -> Path:
        return self.exporter.folder()

    def save_png_grid(self, path: str | Path | None = None) -> Path | None:
        """Write the final samples as one PNG mosaic (upscaled so small images stay visible), in a worker.

        Returns the path being written (`exported` follows, or an error message), or None when there is
        nothing to save, an export is already running or the dialog was cancelled."""
        images = self.final_images()
        if images is None:
            return None
        scale = export_scale(images.shape[1])
        return self.exporter.save_png(path, "Save samples", "samples.png", lambda: tile(images, scale=scale))

    def save_animation(self, path: str | Path | None = None, fps: int | None = None) -> Path | None:
        """Write the x_t frames as an animated GIF or WebP (by the suffix; loops, holds the final samples a
        little longer), in a worker. Returns as save_png_grid does."""
        if not self._frames:
            return None
        scale = export_scale(self._frames[0].xt.shape[1])
        return self._save_chain(
            path, fps, "Save animation", "reverse_process.gif", lambda xt: tile(xt, scale=scale)
        )
