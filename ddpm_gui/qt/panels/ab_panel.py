"""A/B tab: two sampling settings from the same noise, side by side, animated in lockstep.

A samples the app's model (AppState.bundle, like the Sample tab); B samples that model too, or the demo
model, a checkpoint, a run folder or a diffusers model folder of its own (loaded with the app's loaders in a
worker, or dropped on the tab). Both chains start from one x_T (the shared seed and number of images);
engine/ab.py runs them in a worker and holds what they produced (an ABSession): the widgets here only show
it. Chains of different lengths are shown in lockstep by the fraction of each chain done. The third grid is
|A − B| per pixel, of the current frame or of the final images; "Score quality" runs the app's quality
judge (engine/evaluate.py) on both settings, in a worker.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path

from PySide6.QtCore import Qt, Slot
from PySide6.QtWidgets import (
    QAbstractButton,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QMenu,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ddpm_gui.engine import ab
from ddpm_gui.qt.imageview import ImageGrid
from ddpm_gui.qt.player import FramePlayer
from ddpm_gui.qt.state import AppState
from ddpm_gui.qt.style import INFO_STYLE
from ddpm_gui.qt.widgets import (
    CHECKPOINT_DIR_KEY,
    CHECKPOINT_FILTER,
    NO_MODEL_TEXT,
    Messages,
    SamplerForm,
    accept_file_drags,
    button,
    describe_bundle,
    drop_kind,
    dropped_paths,
    fill_class_combo,
    frames_every,
    guidance_spin,
    kept_frames,
    laid_out,
)
from ddpm_gui.qt.workers import JobSlot, shutdown_jobs

# Tests set this to False: errors are then shown in the panel only, never in a modal dialog.
SHOW_DIALOGS = True

SAME = ""  # model B's choice: A's model
LOCKSTEP_NOTE = "Chains of different lengths run in lockstep by the fraction of each chain done."


def _dialogs() -> bool:
    return SHOW_DIALOGS


def _strip_mnemonics(widget: QWidget) -> None:
    """No Alt+letter in `widget`: its twin on the other side has them (two controls with one letter make
    the key ambiguous)."""
    for w in widget.findChildren(QWidget):
        if isinstance(w, QAbstractButton | QLabel) and "&" in w.text():
            w.setText(w.text().replace("&&", "\0").replace("&", "").replace("\0", "&&"))


class SideForm(QGroupBox):
    """One side's settings: the app's sampler form, the class, the guidance scale and the schedule."""

    def __init__(self, title: str, keys: bool, parent: QWidget | None = None):
        super().__init__(title, parent)
        self.sampler_form = SamplerForm(default="ddim")
        self.class_combo = QComboBox()
        self.class_combo.setToolTip("Class-conditional models only: the class to draw")
        self.guidance_spin = guidance_spin()
        self.schedule_combo = QComboBox()
        self.schedule_combo.setToolTip(
            "The noise schedule the chain runs on: the model's own, or a preset (a model sampled on a\n"
            "schedule it was not trained with shows what the schedule does to it)"
        )
        self.model_label = QLabel(NO_MODEL_TEXT)
        self.model_label.setWordWrap(True)
        self.model_label.setStyleSheet(INFO_STYLE)
        self.form = QFormLayout()
        self.form.addRow(self.sampler_form)
        self.form.addRow("Cl&ass:" if keys else "Class:", self.class_combo)
        self.form.addRow("G&uidance:" if keys else "Guidance:", self.guidance_spin)
        self.form.addRow("Schedu&le:" if keys else "Schedule:", self.schedule_combo)
        v = QVBoxLayout(self)
        v.addWidget(self.model_label)
        v.addLayout(self.form)
        v.addStretch(1)
        if not keys:
            _strip_mnemonics(self)
        self._conditional = self._guided = False
        self.class_combo.currentIndexChanged.connect(self.refresh)

    def fill(self, bundle) -> None:
        """The choices this model allows: its classes, its schedule, its T for the step count."""
        from ddpm_gui.core.spec import SCHEDULE_PRESETS

        fill_class_combo(self.class_combo, bundle)
        keep_sched = self.schedule_combo.currentData()
        self.schedule_combo.blockSignals(True)
        self.schedule_combo.clear()
        own = "the model's own"
        if bundle is not None:
            c = bundle.schedule.config
            own += f" ({c.kind}, T = {c.T})"
            self.sampler_form.set_T(bundle.schedule.T)
        self.schedule_combo.addItem(own, None)
        for name in SCHEDULE_PRESETS:
            self.schedule_combo.addItem(name, name)
        self.schedule_combo.setCurrentIndex(max(self.schedule_combo.findData(keep_sched), 0))
        self.schedule_combo.blockSignals(False)
        self.sampler_form.use_model_defaults(bundle)
        self._conditional = bundle is not None and bool(bundle.num_classes)
        # guidance needs the model's "no class" row (models of other tools may have none)
        self._guided = self._conditional and bundle.null_class is not None
        self.refresh()

    @Slot()
    def refresh(self, *_args) -> None:
        self.class_combo.setEnabled(self._conditional)
        self.guidance_spin.setEnabled(self._guided and self.class_combo.currentData() is not None)

    def side(self, bundle, n: int, seed: int, every_for):
        """This side as an engine.ab.ABSide; `every_for(chain_length)` says which frames to keep."""
        from ddpm_gui.core.spec import SCHEDULE_PRESETS
        from ddpm_gui.engine.sampler import SampleConfig

        label = self.class_combo.currentData() if bundle.num_classes else None
        guided = label is not None and bundle.null_class is not None
        cfg = SampleConfig(
            n=n,
            seed=seed,
            class_label=label,
            guidance=self.guidance_spin.value() if guided else 1.0,
            **self.sampler_form.kwargs(),
        )
        name = self.schedule_combo.currentData()
        side = ab.ABSide(bundle, cfg, SCHEDULE_PRESETS[name] if name else None)
        side.cfg.every = every_for(side.chain_length())
        return side

    def copy_from(self, other: SideForm) -> None:
        """Take every setting of `other` (the same model's choices)."""
        src, dst = other.sampler_form, self.sampler_form
        dst.set_key(src.key())
        dst.steps_spin.setValue(src.steps_spin.value())
        dst.eta_spin.setValue(src.eta_spin.value())
        dst.clip_check.setChecked(src.clip_check.isChecked())
        for mine, theirs in (
            (self.class_combo, other.class_combo),
            (self.schedule_combo, other.schedule_combo),
        ):
            mine.setCurrentIndex(max(mine.findData(theirs.currentData()), 0))
        self.guidance_spin.setValue(other.guidance_spin.value())


class ABPanel(QWidget):
    def __init__(self, state: AppState, parent: QWidget | None = None):
        super().__init__(parent)
        self.state = state
        self.session = ab.ABSession()
        self.messages = Messages(state, _dialogs, self)
        self._job = JobSlot(self, self._on_step, self._on_failed, self._on_run_done, "A/B failed", _dialogs)
        self._loader = JobSlot(
            self, self._on_loaded, self._on_load_failed, self._after_load, "Cannot open model B", _dialogs
        )
        self._judge = JobSlot(self, self._on_scored, self._on_failed, self._on_scored_done, None, _dialogs)
        self._loading = ""
        self._build_ui()
        for slot in (self._job, self._loader, self._judge):
            slot.busyChanged.connect(self._update_buttons)
        state.bundleChanged.connect(self._on_bundle)
        self.setAcceptDrops(True)
        self._on_bundle(state.bundle)

    # ------------------------------------------------------------------ UI
    def _build_ui(self) -> None:
        self.a_form = SideForm("A: the app's model", keys=True)
        self.b_form = SideForm("B", keys=False)
        self.b_model_combo = QComboBox()
        self.b_model_combo.addItem("A's model", SAME)
        self.b_model_combo.addItem("the demo model", ab.DEMO_SOURCE)
        self.b_model_combo.setToolTip("The model B samples")
        self.b_model_combo.currentIndexChanged.connect(self._on_b_choice)
        self.open_btn = QPushButton("&Open…")
        self.open_btn.setToolTip("Model B from a checkpoint, a run folder or a diffusers model folder")
        menu = QMenu(self.open_btn)
        menu.addAction("Checkpoint file…", lambda: self.load_model_b())
        menu.addAction("Run or diffusers model folder…", lambda: self.load_model_b(folder=True))
        self.open_btn.setMenu(menu)
        row = QHBoxLayout()
        row.addWidget(self.b_model_combo, 1)
        row.addWidget(self.open_btn)
        self.b_form.form.insertRow(0, "Model:", row)
        top = QHBoxLayout()
        top.addWidget(self.a_form, 1)
        top.addWidget(self.b_form, 1)
        top.addWidget(self._run_box())
        outer = QVBoxLayout(self)
        outer.addLayout(top)
        outer.addWidget(self._view(), 1)

    def _run_box(self) -> QGroupBox:
        self.n_spin = QSpinBox()
        self.n_spin.setRange(1, 64)
        self.n_spin.setValue(16)
        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(0, 2**31 - 1)
        self.seed_spin.setToolTip("Both chains start from the x_T this seed draws")
        self.compare_btn = button("Compa&re", self.compare, "Run A and B from the same noise")
        self.compare_btn.setDefault(True)
        self.stop_btn = button("&Stop", self.stop)
        self.copy_btn = button("Copy A → &B", self.copy_a_to_b, "B takes A's settings (and A's model)")
        self.score_btn = button(
            "Score &quality",
            self.score,
            "The app's quality judge on both settings of the last comparison: samples drawn with them,\n"
            "scored by a small classifier trained on the model's dataset (trained once, then cached)",
        )
        self.score_n = QSpinBox()
        self.score_n.setRange(2, 2000)
        self.score_n.setValue(64)
        self.score_n.setSuffix(" samples")
        form = QFormLayout()
        form.addRow("&Images:", self.n_spin)
        form.addRow("See&d:", self.seed_spin)
        box = QGroupBox("Both")
        v = QVBoxLayout(box)
        v.addLayout(form)
        for pair in ((self.compare_btn, self.stop_btn), (self.copy_btn,), (self.score_btn, self.score_n)):
            h = QHBoxLayout()
            for w in pair:
                h.addWidget(w)
            v.addLayout(h)
        v.addWidget(self.messages)
        v.addStretch(1)
        box.setMaximumWidth(300)
        return box

    def _view(self) -> QWidget:
        self.show_combo = QComboBox()
        self.show_combo.addItem("x_t (the samples)", "xt")
        self.show_combo.addItem("predicted x₀", "x0")
        self.diff_combo = QComboBox()
        self.diff_combo.addItem("this frame", "frame")
        self.diff_combo.addItem("the final images", "final")
        for combo in (self.show_combo, self.diff_combo):
            combo.currentIndexChanged.connect(self._refresh_view)
        self.grids = (ImageGrid(), ImageGrid(), ImageGrid())
        self.titles = tuple(QLabel() for _ in range(3))
        self.infos = tuple(QLabel() for _ in range(3))
        for lab in self.infos:
            lab.setWordWrap(True)
            lab.setStyleSheet(INFO_STYLE)
            lab.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        grids = QHBoxLayout()
        for k in range(3):
            col = QVBoxLayout()
            col.addWidget(self.titles[k])
            col.addWidget(self.grids[k], 1)
            col.addWidget(self.infos[k])
            grids.addLayout(col, 1)
        choose = QHBoxLayout()
        for text, combo in (("Sho&w:", self.show_combo), ("Differe&nce of:", self.diff_combo)):
            lab = QLabel(text)
            lab.setBuddy(combo)
            choose.addWidget(lab)
            choose.addWidget(combo)
        choose.addStretch(1)
        self.player = FramePlayer(fps=10)
        self.player.frameChanged.connect(self._refresh_view)
        self.player.set_label_func(self._player_label, widest="A 1000 / 1000 · B 1000 / 1000")
        self.frame_label = QLabel(LOCKSTEP_NOTE)
        self.frame_label.setStyleSheet(INFO_STYLE)
        self.frame_label.setWordWrap(True)
        view, lay = laid_out(QVBoxLayout)
        lay.addLayout(choose)
        lay.addLayout(grids, 1)
        lay.addWidget(self.player)
        lay.addWidget(self.frame_label)
        self.player.install_shortcuts(view)
        self._refresh_view()
        return view

    # ------------------------------------------------------------------ models
    def bundle_a(self):
        return self.state.bundle

    def bundle_b(self):
        """B's model: A's (the default), or the one loaded for it; None while it loads."""
        if self.b_model_combo.currentData() == SAME:
            return self.state.bundle
        if self.session.model_b_source == self.b_model_combo.currentData():
            return self.session.model_b
        return None

    @Slot(object)
    def _on_bundle(self, b: object) -> None:
        self.a_form.model_label.setText(describe_bundle(b) if b is not None else NO_MODEL_TEXT)
        self.a_form.fill(b)
        if self.b_model_combo.currentData() == SAME:
            self._show_b()
        self._update_buttons()

    def _show_b(self) -> None:
        b = self.bundle_b()
        if b is not None:
            text = describe_bundle(b)
        elif self._loading:
            text = f"Loading {Path(self._loading).name}…"
        else:
            text = NO_MODEL_TEXT
        self.b_form.model_label.setText(text)
        self.b_form.fill(b)

    @Slot()
    def _on_b_choice(self, *_args) -> None:
        source = self.b_model_combo.currentData()
        if source != SAME and self.bundle_b() is None:
            self._start_load(source)
        self._show_b()
        self._update_buttons()

    def load_model_b(self, path: str | Path | None = None, folder: bool = False) -> bool:
        """Model B from a checkpoint, run folder or diffusers folder (None: ask), loaded in a worker."""
        if path is None:
            start = str(self.state.settings.value(CHECKPOINT_DIR_KEY, "") or "")
            if folder:
                path = QFileDialog.getExistingDirectory(self, "Model B: run or diffusers folder", start)
            else:
                path, _ = QFileDialog.getOpenFileName(self, "Model B: checkpoint", start, CHECKPOINT_FILTER)
            if not path:
                return False
        source = str(path)
        self.messages.clear_error()  # a new choice: the last one's failure is past
        i = self.b_model_combo.findData(source)
        if i < 0:
            self.b_model_combo.addItem(Path(source).name, source)
            i = self.b_model_combo.count() - 1
            self.b_model_combo.setItemData(i, source, Qt.ItemDataRole.ToolTipRole)
        if i == self.b_model_combo.currentIndex():
            self._on_b_choice()
        else:
            self.b_model_combo.setCurrentIndex(i)  # _on_b_choice starts the load
        return self._loader.is_busy() or self.bundle_b() is not None

    def _start_load(self, source: str) -> None:
        if self._loader.is_busy():
            return  # the choice is looked at again when the running load ends
        a = self.bundle_a()
        device = str(a.device) if a is not None else "auto"
        self._loading = source
        self.messages.clear_error()
        self._loader.start(lambda: _load_b(source, device))

    def _on_loaded(self, loaded) -> None:
        source, bundle = loaded
        self.session.model_b, self.session.model_b_source = bundle, source
        self.messages.status(f"Model B: {Path(source).name}.")

    def _on_load_failed(self, message: str) -> None:
        self.messages.error(message)
        self.b_model_combo.setCurrentIndex(0)  # back to A's model: nothing is half chosen
        i = self.b_model_combo.findData(self._loading)
        if self._loading != ab.DEMO_SOURCE and i >= 0:
            self.b_model_combo.removeItem(i)  # a file that did not load is no choice

    def _after_load(self) -> None:
        self._loading = ""
        if self.b_model_combo.currentData() != SAME and self.bundle_b() is None:
            self._start_load(self.b_model_combo.currentData())  # chosen while another one loaded
        self._show_b()

    def dragEnterEvent(self, event) -> None:  # Qt API
        accept_file_drags(event)

    def dropEvent(self, event) -> None:  # Qt API: a checkpoint or run dropped here becomes model B
        for path in dropped_paths(event):
            if drop_kind(path) in ("checkpoint", "run"):
                event.acceptProposedAction()
                self.load_model_b(path)
                return
        self.messages.error(
            "Drop a checkpoint, a run folder or a diffusers model folder here: it becomes model B."
        )

    # ------------------------------------------------------------------ running
    def is_busy(self) -> bool:
        return any(s.is_busy() for s in (self._job, self._loader, self._judge))

    def is_running(self) -> bool:
        return self._job.is_busy()

    def _update_buttons(self, *_args) -> None:
        ready = self.bundle_a() is not None and self.bundle_b() is not None
        running = self._job.is_busy()
        self.compare_btn.setEnabled(ready and not running)
        self.stop_btn.setEnabled(running or self._judge.is_busy())
        self.copy_btn.setEnabled(not running)
        result = self.session.result
        self.score_btn.setEnabled(
            result is not None and result.finished() and not running and not self._judge.is_busy()
        )
        self.open_btn.setEnabled(not self._loader.is_busy())

    def sides(self):
        """A and B as configured now (engine.ab.ABSide each); None without both models."""
        a, b = self.bundle_a(), self.bundle_b()
        if a is None or b is None:
            return None
        n, seed = self.n_spin.value(), self.seed_spin.value()

        def every_for(chain: int) -> int:  # the two sides share the Sample tab's frame budget
            return frames_every(chain, 2 * n, a.image_size)

        return self.a_form.side(a, n, seed, every_for), self.b_form.side(b, n, seed, every_for)

    @Slot()
    def compare(self) -> bool:
        """Run A and B from the same noise in a worker; False when nothing starts."""
        from ddpm_gui.errors import DDPMError

        sides = self.sides()
        if sides is None or self._job.is_busy():
            return False
        try:
            a, b = ab.check_pair(*sides)
        except DDPMError as e:
            self.messages.error(str(e), "Cannot compare")
            return False
        self.session.result = ab.ABResult(a, b)
        self.messages.clear_error()
        self.player.clear()
        self.player.set_expected(max(kept_frames(s.chain_length(), s.cfg.every) for s in (a, b)))
        self.messages.status(f"Sampling A ({a.describe()}) and B ({b.describe()})…")
        stop = threading.Event()
        started = self._job.start(lambda: ab.ab_frames(a, b, stop), on_stop=stop.set, close_on_stop=True)
        self._refresh_view()
        return started

    @Slot()
    def stop(self) -> None:
        for slot in (self._job, self._judge):
            if slot.is_busy():
                slot.stop()
                self.messages.status("Stopping…")

    def copy_a_to_b(self) -> None:
        self.b_model_combo.setCurrentIndex(0)
        self.b_form.copy_from(self.a_form)

    def _on_step(self, step) -> None:
        result = self.session.result
        result.add(step)
        if result.count() > self.player.count():
            self.player.append_frame(None)  # the frames live in the result; the player counts them
        if result.pair(self.player.current())[step.side] == len(result.runs[step.side].frames) - 1:
            self._refresh_view()

    def _on_failed(self, message: str) -> None:
        self.messages.error(message)

    def _on_run_done(self) -> None:
        result = self.session.result
        self.player.set_expected(0)
        if result is not None and result.finished():
            self.player.set_current(result.count() - 1)
            a, b = (r.seconds() for r in result.runs)
            self.messages.status(f"Done: A took {a:.2f} s, B {b:.2f} s.")
        elif not self.messages.has_error():
            self.messages.status("Stopped before both chains finished.")
        self._refresh_view()

    @Slot()
    def score(self) -> bool:
        """The quality judge on both sides of the last comparison, in a worker."""
        result = self.session.result
        if result is None or not result.finished() or self._judge.is_busy():
            return False
        a, b = result.sides
        data, n, stop = self.state.data, self.score_n.value(), threading.Event()
        self.messages.clear_error()
        self.messages.status(f"Scoring A and B ({n} samples each)…")
        return self._judge.start(
            lambda report: ab.score_pair(a, b, data, n, report=report, stop=stop),
            report=True,
            on_stop=stop.set,
        )

    def _on_scored(self, event) -> None:
        if isinstance(event, str):
            self.messages.status(event)
            return
        k, scores = event
        if self.session.result is not None:
            self.session.result.quality[k] = scores
        self._refresh_view()

    def _on_scored_done(self) -> None:
        result = self.session.result
        if result is not None and all(q is not None for q in result.quality):
            self.messages.status("Scored A and B.")

    def shutdown(self, timeout_ms: int = 60000) -> None:
        shutdown_jobs(self, timeout_ms)

    # ------------------------------------------------------------------ showing the result
    def _player_label(self, i: int, _n: int) -> str:
        result = self.session.result
        if result is None:
            return ""
        fa, fb = result.frames(i)
        step = lambda f: f"{f.index + 1} / {f.total}" if f is not None else "–"  # noqa: E731
        return f"A {step(fa)} · B {step(fb)}"

    @Slot()
    def _refresh_view(self, *_args) -> None:
        result = self.session.result
        what = self.show_combo.currentData()
        noun = "x_t" if what == "xt" else "predicted x₀"
        if result is None or result.count() == 0:
            for k, name in enumerate(ab.NAMES):
                self.titles[k].setText(f"<b>{name}</b>")
                self.infos[k].setText("")
                self.grids[k].clear()
            self.titles[2].setText("<b>|A − B|</b> per pixel")
            self.infos[2].setText("")
            self.grids[2].clear()
            return
        i = self.player.current()
        frames = result.frames(i)
        elapsed = result.elapsed(i)
        for k, name in enumerate(ab.NAMES):
            f, run, side = frames[k], result.runs[k], result.sides[k]
            if f is None:
                self.grids[k].clear()
                self.titles[k].setText(f"<b>{name}</b>: waiting for its first frame")
                continue
            cols = max(1, math.ceil(math.sqrt(len(f.xt))))
            self.grids[k].set_images(getattr(f, what), columns=cols)
            if f.final:
                self.titles[k].setText(f"<b>{name}</b> final {'samples' if what == 'xt' else noun}")
            else:
                self.titles[k].setText(f"<b>{name}</b> {noun} · step {f.index + 1} / {f.total}, t = {f.t}")
            per_step = 1000 * run.seconds() / max(run.steps(), 1)
            lines = [
                side.describe(),
                f"{elapsed[k]:.2f} s to this frame · {run.seconds():.2f} s for {run.steps()} steps "
                f"({per_step:.1f} ms/step)" + ("" if run.finished() else ", running"),
            ]
            if result.quality[k] is not None:
                lines.append("Quality: " + ab.headline(result.quality[k]))
            self.infos[k].setText("\n".join(lines))
        final = self.diff_combo.currentData() == "final"
        diff = result.final_difference() if final else result.difference(i, what)
        where = "the final images" if final else f"this frame's {noun}"
        self.titles[2].setText(f"<b>|A − B|</b> of {where}")
        if diff is None:
            self.grids[2].clear()
            self.infos[2].setText("after both chains finish" if final else "")
        else:
            self.grids[2].set_images(diff.images, columns=max(1, math.ceil(math.sqrt(len(diff.images)))))
            self.infos[2].setText(diff.text())
        fa, fb = frames
        if fa is not None and fb is not None:
            self.frame_label.setText(
                f"Position {i + 1} of {result.count()}: A at {100 * (fa.index + 1) / fa.total:.0f}% of its "
                f"chain, B at {100 * (fb.index + 1) / fb.total:.0f}%. {LOCKSTEP_NOTE}"
            )


def _load_b(source: str, device: str):
    """Worker: model B with the app's loaders."""
    yield source, ab.load_model(source, device)
