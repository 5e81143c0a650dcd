"""Denoise panel: the tutorial's horse experiment with any image, any t and K continuations.

Pick an image (the current dataset, the built-in shapes, or a file), noise it to timestep t with the
closed form q(x_t | x_0) K independent ways, then run the reverse chain from t for each: the K results
show what the model "remembers" of the image at that noise level (small t: the same image; large t:
K different images that share only the coarse layout and colours). The chain's frames are kept (at most
~100) and can be scrubbed with the frame player.

t is the tutorial's: a 0-based index into the schedule (0 to T-1), as `ddpm-gui denoise --t` takes it;
the Forward tab numbers its steps from 1, so t = 50 is its step 51. The note under the t control says so
once; every other label of this tab speaks of t.

Image files (Open, or dropped on the panel) go through the app's one image loader
(`data.imageio.load_image`), at the model's size; when the model's size changes, the file is read again.
Inpainting (the form's switch): the original becomes a MaskPainter (qt/mask_painter.py); the painted region
is regenerated K ways from pure noise at t = T-1 by RePaint (engine/inpaint.py), the rest of the image kept,
with the form's jump length and number of resamples. Its frames include the forward (resampling) moves.

A checkpoint or run folder dropped here becomes the app's model (AppState.set_bundle). The tab exports
what it shows (qt/exports.py): a PNG of the row (original, noised start, K results, as `ddpm-gui denoise
--out` writes it) and an animated GIF or WebP of that row through the reverse chain.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PySide6.QtCore import Slot
from PySide6.QtWidgets import QHBoxLayout, QLabel, QStackedWidget, QVBoxLayout, QWidget

from ddpm_gui.qt.exports import export_scale, tile
from ddpm_gui.qt.imageview import ImageGrid
from ddpm_gui.qt.mask_painter import MaskEditor
from ddpm_gui.qt.panels.chain_panel import ChainPanel
from ddpm_gui.qt.panels.denoise_form import DenoiseForm
from ddpm_gui.qt.player import FramePlayer
from ddpm_gui.qt.state import AppState
from ddpm_gui.qt.widgets import NO_MODEL_TEXT, button, frames_every, kept_frames, laid_out, side_column

# Tests set this to False: errors are then shown in the panel only, never in a modal dialog.
SHOW_DIALOGS = True


def _dialogs() -> bool:
    return SHOW_DIALOGS


def t_note(t: int, T: int, alpha_bar: float) -> str:
    """What t means, said once: the tutorial's 0-based index, the Forward tab's 1-based step t + 1."""
    return (
        f"t counts from 0, as in the tutorial and `ddpm-gui denoise --t`: t = {t} is the Forward tab's "
        f"step {t + 1} of {T}. ᾱ = {alpha_bar:.4f}, "
        f"x_t = {math.sqrt(alpha_bar):.2f}·image + {math.sqrt(1 - alpha_bar):.2f}·noise."
    )


class DenoisePanel(ChainPanel):
    def __init__(self, state: AppState, parent: QWidget | None = None):
        super().__init__(state, _dialogs, "Denoising failed", parent)
        self._original: np.ndarray | None = None  # the image of the last run
        self._seed_used = 0
        self._t_used = 0
        self._repaint_used: tuple[int, int] | None = None  # (jump length, resamples) of an inpainting run
        self.form.imageChanged.connect(self._show_original)
        self.form.inpaintChanged.connect(self._on_inpaint_toggled)
        self.form.t_spin.valueChanged.connect(self._update_t_note)
        self._on_bundle(state.bundle)

    # ------------------------------------------------------------------ UI
    def _build_ui(self) -> None:
        self.form = DenoiseForm(self.state, self.messages, self)
        self.run_btn = button("&Run", self.run)
        self.run_btn.setDefault(True)
        self.stop_btn = button("St&op", self.stop)
        self.rerun_btn = button(
            "Re-run with &new seeds",
            self.rerun,
            "Increase the seed and run again: other noise, other continuations",
        )
        self.png_btn = button(
            "Save PN&G row…",
            self.save_png_row,
            "Original, noised start and the K results in one row, as a PNG",
        )
        self.anim_btn = button(
            "Save GIF / &WebP…",
            self.save_animation,
            "That row through the reverse chain, as an animated GIF or WebP",
        )
        rows = ((self.run_btn, self.stop_btn), (self.rerun_btn,), (self.png_btn, self.anim_btn))
        outer = QHBoxLayout(self)
        outer.addWidget(side_column([self.form, *rows, self.model_label, self.messages], 340, 420))
        outer.addWidget(self._results_view(), 1)

    def _results_view(self) -> QWidget:
        self.original_view = ImageGrid(captions_visible=False)
        self.mask_editor = MaskEditor()
        self.original_stack = QStackedWidget()
        self.original_stack.addWidget(self.original_view)
        self.original_stack.addWidget(self.mask_editor)
        self.start_view = ImageGrid(captions_visible=False)
        self.starts_grid = ImageGrid(captions_visible=False)
        self.results_grid = ImageGrid()
        self.original_title = QLabel("<b>original</b>")
        self.start_title = QLabel("<b>noised start</b>")
        self.starts_title = QLabel("<b>all K noised starts</b> (independent noise)")
        self.results_title = QLabel("<b>continuations</b>: the reverse process from each noised start")
        top = QHBoxLayout()
        for title, view, stretch in (
            (self.original_title, self.original_stack, 1),
            (self.start_title, self.start_view, 1),
            (self.starts_title, self.starts_grid, 2),
        ):
            col = QVBoxLayout()
            col.addWidget(title)
            col.addWidget(view, 1)
            top.addLayout(col, stretch)
        self.player = FramePlayer(fps=10)
        self.player.set_loop(False)
        self.player.frameChanged.connect(self._show_frame)
        right, rl = laid_out(QVBoxLayout, margins=(4, 0, 0, 0))
        rl.addLayout(top, 2)
        rl.addWidget(self.results_title)
        rl.addWidget(self.results_grid, 3)
        rl.addWidget(self.player)
        self.player.install_shortcuts(right)
        return right

    # ------------------------------------------------------------------ image (the form's)
    def image(self) -> np.ndarray:
        """The image to noise, at the model's size ((S, S, 3) uint8)."""
        return self.form.image()

    def open_image(self, path: str | Path | None = None) -> bool:
        """Use an image file (None: ask for one); on failure the message is shown, the image is kept."""
        return self.form.open_image(path)

    @Slot()
    def _show_original(self) -> None:
        self.original_view.set_images(self.image())
        self.mask_editor.painter.set_image(self.image())
        self.original_title.setText(f"<b>original</b> ({self.form.image_caption()})")

    @Slot(bool)
    def _on_inpaint_toggled(self, on: bool) -> None:
        self.original_stack.setCurrentWidget(self.mask_editor if on else self.original_view)
        self.starts_title.setText(
            "<b>all K starts</b>" if on else "<b>all K noised starts</b> (independent noise)"
        )
        self._show_original()

    def _drop_other(self, path: Path, kind: str) -> bool:
        if kind == "image":
            return self.open_image(path)
        if kind == "folder":
            self.messages.error(
                f"{path.name} is a folder, not an image or a run folder: open image folders in the Data "
                "tab; drop an image file, a checkpoint or a run folder here."
            )
        return False

    # ------------------------------------------------------------------ model
    @Slot(object)
    def _on_bundle(self, b: object) -> None:
        self._show_model(b)
        if b is not None:
            T = b.schedule.T  # type: ignore[attr-defined]
            self._set_widest_label(self._label_text(T, T, T - 1, True))
        self.form.set_model(b)
        self._update_t_note()
        self._show_original()
        self._update_buttons()

    @Slot()
    def _update_t_note(self, *_args) -> None:
        b = self.state.bundle
        if b is None:
            self.form.t_note.setText("")
            return
        t = self.form.t_spin.value()
        self.form.t_note.setText(t_note(t, b.schedule.T, float(b.schedule.alpha_bars[t])))

    # ------------------------------------------------------------------ running
    def is_denoising(self) -> bool:
        return self._job.is_busy()

    def _update_buttons(self, *_args) -> None:
        has = self.state.bundle is not None
        running = self._job.is_busy()
        self.run_btn.setEnabled(has and not running)
        self.rerun_btn.setEnabled(has and not running)
        self.stop_btn.setEnabled(running)
        idle = not running and not self.exporter.is_busy()
        self.png_btn.setEnabled(idle and self.results() is not None)
        self.anim_btn.setEnabled(idle and len(self._frames) > 1)

    @Slot()
    def rerun(self) -> bool:
        self.form.seed_spin.setValue(self.form.seed_spin.value() + 1)
        return self.run()

    @Slot()
    def run(self) -> bool:
        b = self.state.bundle
        if b is None:
            self.messages.error(NO_MODEL_TEXT, "No model")
            return False
        if self._job.is_busy():
            return False
        from ddpm_gui.engine.sampler import SampleConfig, accelerated, denoise_frames

        image = self.image()
        t = min(self.form.t_spin.value(), b.schedule.T - 1)
        k = self.form.k_spin.value()
        seed = self.form.seed_spin.value()
        if self.form.inpainting():
            return self._run_inpaint(b, image, k, seed)
        self._repaint_used = None
        self._set_widest_label(self._label_text(b.schedule.T, b.schedule.T, b.schedule.T - 1, True))
        chain = self.form.sampler_form.chain_length(t)
        every = frames_every(chain, k, b.image_size)
        cfg = SampleConfig(
            n=k, seed=seed, every=every, **self.form.sampler_form.kwargs(), **self.form.class_kwargs()
        )
        self._seed_used, self._t_used, self._original = seed, t, image
        for view in (self.start_view, self.starts_grid, self.results_grid):
            view.clear()
        self.start_title.setText(f"<b>noised start</b> (t = {t})")
        self.results_title.setText("<b>continuations</b>: the reverse process from each noised start")
        return self._start_chain(
            lambda stop: denoise_frames(accelerated(b), image, t=t, k=k, seed=seed, cfg=cfg, stop=stop),
            1 + kept_frames(chain, every),  # the noised starts, then the chain
            f"Noising to t = {t}, then {chain} reverse steps for {k} images…",
        )

    def _run_inpaint(self, b, image: np.ndarray, k: int, seed: int) -> bool:
        from ddpm_gui.engine.inpaint import EMPTY_MASK_TEXT, inpaint_frames
        from ddpm_gui.engine.sampler import SampleConfig, accelerated

        mask = self.mask_editor.painter.mask()
        if not mask.any():
            self.messages.error(f"{EMPTY_MASK_TEXT} The left button paints, the right button erases.")
            return False
        jump, resamples = self.form.repaint_settings()
        moves, calls = self.form.inpaint_moves()
        every = frames_every(moves, k, b.image_size)
        cfg = SampleConfig(
            n=k, seed=seed, every=every, **self.form.sampler_form.kwargs(), **self.form.class_kwargs()
        )
        T = b.schedule.T
        self._seed_used, self._t_used, self._original = seed, T - 1, image
        self._repaint_used = (jump, resamples)
        for view in (self.start_view, self.starts_grid, self.results_grid):
            view.clear()
        self.start_title.setText(f"<b>start</b> (t = {T - 1})")
        self.start_title.setToolTip("Pure noise where painted; elsewhere the original noised to t")
        widest = self._label_text(moves - 1, moves, T - 1, True, T)  # longer than any label of the chain
        self._set_widest_label(widest)
        self.results_title.setText("<b>inpaintings</b>: the painted region regenerated")
        return self._start_chain(
            lambda stop: inpaint_frames(
                accelerated(b), image, mask, k, seed, cfg, jump_length=jump, resamples=resamples, stop=stop
            ),
            1 + kept_frames(moves, every),
            f"Inpainting {k} images: {calls:,} model calls each ({moves:,} steps with the resampling)…",
        )

    @Slot()
    def stop(self) -> None:
        self._job.stop()

    def _on_frame(self, f) -> None:  # f: SampleFrame
        if f.index < 0:  # the K noised starts
            self.start_view.set_images(f.xt[0])
            self.starts_grid.set_images(f.xt)
        super()._on_frame(f)

    def _done_text(self) -> str:
        if self._repaint_used is not None:
            return f"Done: {len(self._frames[-1].xt)} inpaintings (seed {self._seed_used})."
        return f"Done: {len(self._frames[-1].xt)} continuations (seed {self._seed_used})."

    def _stopped_text(self) -> str:
        return "Stopped."

    # ------------------------------------------------------------------ frames
    @staticmethod
    def _label_text(index: int, total: int, t: int, final: bool, t_next: int | None = None) -> str:
        if index < 0:
            return f"noised starts · t = {t}"
        if t_next is not None:  # a RePaint chain: reverse and forward (resampling) moves; -1: the clean image
            to = "x₀" if t_next < 0 else f"{t_next}"
            kind = " · resampling" if t_next > t else ""
            return f"step {index + 1} of {total} · t = {t} → {to}{kind}" + (" · final" if final else "")
        return f"reverse step {index + 1} of {total} · t = {t}" + (" · final" if final else "")

    def _set_widest_label(self, widest: str) -> None:
        self.player.set_label_func(self._frame_label, widest=widest)

    def _frame_label(self, i: int, n: int) -> str:
        f = self._kept(i)
        if f is None:
            return ""
        return self._label_text(f.index, f.total, f.t, f.final, getattr(f, "t_next", None))

    @Slot(int)
    def _show_frame(self, i: int) -> None:
        f = self._kept(i)
        if f is None:
            return
        if f.final and self._repaint_used is not None:
            self.results_grid.set_images(f.xt, captions=[f"#{j + 1}" for j in range(len(f.xt))])
            jump, resamples = self._repaint_used
            self.results_title.setText(
                f"<b>{len(f.xt)} inpaintings</b> of the painted region (jump length {jump}, "
                f"{resamples} resamples, seed {self._seed_used})"
            )
        elif f.final:
            self.results_grid.set_images(f.xt, captions=[f"#{j + 1}" for j in range(len(f.xt))])
            self.results_title.setText(
                f"<b>{len(f.xt)} continuations</b> of the image noised to t = {self._t_used} "
                f"(seed {self._seed_used})"
            )
        else:
            self.results_grid.set_images(f.xt)
            inpaint = self._repaint_used is not None
            step = "step" if inpaint else "reverse step"  # a RePaint chain also steps forward
            where = "the K noised starts" if f.index < 0 else f"{step} {f.index + 1} of {f.total}"
            what = "inpaintings" if inpaint else "continuations"
            self.results_title.setText(f"<b>{what}</b>: {where} (t = {getattr(f, 't_next', f.t)})")

    # ------------------------------------------------------------------ results (tests, export)
    def results(self) -> np.ndarray | None:
        """The K continuations of the last run, once it finished."""
        return self.final_images()

    def noised_starts(self) -> np.ndarray | None:
        return self._frames[0].xt if self._frames else None

    def _row_of(self):
        """xt -> the exported row: original, the first noised start, then the K images of xt. It holds the
        run's images itself: a new run may start while an export of this one is written."""
        head = np.concatenate([self._original[None], self._frames[0].xt[:1]])
        return lambda xt: np.concatenate([head, xt])

    def save_png_row(self, path: str | Path | None = None) -> Path | None:
        """The row (original, noised start, K results) as one PNG, written in a worker. Returns the path
        being written, or None (no results, an export running, the dialog cancelled)."""
        res = self.results()
        if res is None:
            return None
        row, scale = self._row_of()(res), export_scale(res.shape[1])
        return self.exporter.save_png(
            path, "Save the continuations", "denoise.png", lambda: tile(row, columns=len(row), scale=scale)
        )

    def save_animation(self, path: str | Path | None = None, fps: int | None = None) -> Path | None:
        """The row through the reverse chain (noised starts to results), as an animated GIF or WebP by the
        suffix, written in a worker. Returns as save_png_row does."""
        if not self._frames:
            return None
        row_of, columns = self._row_of(), len(self._frames[0].xt) + 2
        scale = export_scale(self._frames[0].xt.shape[1])
        return self._save_chain(
            path,
            fps,
            "Save the reverse chain",
            "denoise.gif",
            lambda xt: tile(row_of(xt), columns=columns, scale=scale),
        )
