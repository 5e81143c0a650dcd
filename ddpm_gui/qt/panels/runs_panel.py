"""Runs panel: every run of a runs folder in a table (status, preset, data, steps, loss, validation loss,
quality, date), several compared (loss curves with their validation loss, loss by timestep, the settings that
differ, the quality results kept in them, previews at one step), one sent to Sample/Denoise, resumed (from
its newest checkpoint, or from an older one as a new run forked from it), or duplicated with changes in the
Train tab, "watch it learn" (the same noise through every kept checkpoint, as a strip and a GIF), and the
training queue.

Runs trained by another process (`ddpm-gui train`, another window) are followed live: while the tab is
shown, a timer reads what was appended to the runs' metrics (engine/runs.py: incremental, read-only, never
their lock) and lists new checkpoints and run folders, every POLL_MS.
"""

from __future__ import annotations

import time
from pathlib import Path

from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QPushButton,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from ddpm_gui.engine import runs
from ddpm_gui.engine.queue import RunQueue
from ddpm_gui.errors import DDPMError
from ddpm_gui.qt.exports import Exporter
from ddpm_gui.qt.runs import RUNS_FOLDER_KEY, runs_root
from ddpm_gui.qt.runs.compare import EvalHistory, LearningStrip, LossOverlay, PreviewCompare, SettingsDiff
from ddpm_gui.qt.state import AppState
from ddpm_gui.qt.widgets import Messages, ModelLoader
from ddpm_gui.qt.workers import JobSlot, shutdown_jobs

SHOW_DIALOGS = True  # tests set it to False
POLL_MS = 750  # a line or a checkpoint written by another process shows within about this long
RESCAN_EVERY = 4  # polls between two listings of the runs folder (new run folders)
COLUMNS = (
    "Run",
    "Status",
    "Preset",
    "Data",
    "Steps",
    "Last loss",
    "Val loss (last / best)",
    "Quality (last)",
    "Quality (best)",
    "Date",
)
LEARN_FPS = 2
RESUME_TEXT = "Res&ume in Train"
RESUME_OLDER_TEXT = "Res&ume from this checkpoint"
RESUME_TIP = (
    "Continue this run from its newest checkpoint in the Train tab; from an older checkpoint, a new run\n"
    "forked from it (<run>-from-<step>: its settings, that checkpoint and its history up to it; the run itself\n"
    "is left as it is)"
)


def _dialogs() -> bool:
    return SHOW_DIALOGS


def _button(text: str, slot, tip: str) -> QPushButton:
    b = QPushButton(text)
    b.setToolTip(tip)
    b.clicked.connect(slot)
    return b


def row_texts(info: runs.RunInfo) -> list[str]:
    total = f"{info.total_steps:,}" if info.total_steps is not None else "?"
    loss = f"{info.last_loss:.4g}" if info.last_loss is not None else ""
    date = time.strftime("%Y-%m-%d %H:%M", time.localtime(info.created)) if info.created else ""
    val = " / ".join(runs.val_text(v) for v in (info.val_last, info.val_best) if v)
    return [info.name, info.status, info.preset, info.data, f"{info.step:,} / {total}", loss, val,
            runs.quality_text(info.quality_last), runs.quality_text(info.quality_best), date]  # fmt: skip


class RunsPanel(QWidget):
    def __init__(self, state: AppState, parent: QWidget | None = None):
        super().__init__(parent)
        self.state = state
        self.train_panel = None  # the Train tab (found through the window when not set)
        self.root = runs_root(state.settings)
        self.infos: dict[Path, runs.RunInfo] = {}
        self.metrics: dict[Path, runs.RunMetrics] = {}
        self._order: list[Path] = []  # the table's rows
        self._polls = 0
        self.learn_run = "run"  # the run the "watch it learn" strip shows
        self._queue_stamp: tuple | None = ("not read",)
        self.queue_entries: list = []  # what the queue list shows
        self.messages = Messages(state, _dialogs)
        self.loader = ModelLoader(self, state, self.messages, _dialogs)
        self.exporter = Exporter(self, state, self.messages, _dialogs)
        self.learn_slot = JobSlot(self, self._on_frame, self.messages.error, self._on_learn_done,
                                  "Cannot sample the checkpoints", _dialogs)  # fmt: skip
        self.timer = QTimer(self)
        self.timer.setInterval(POLL_MS)
        self.timer.timeout.connect(self.poll)
        self._build_ui()
        self.rescan()

    # ------------------------------------------------------------------ UI
    def _build_ui(self) -> None:
        self.folder_label = QLabel()
        self.folder_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.choose_btn = _button("Choose fol&der…", self.choose_folder, "Show the runs of another folder")
        self.refresh_btn = _button("&Refresh", self.rescan, "Read the runs folder again")
        top = QHBoxLayout()
        top.addWidget(QLabel("Runs folder:"))
        top.addWidget(self.folder_label, 1)
        top.addWidget(self.choose_btn)
        top.addWidget(self.refresh_btn)

        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setToolTip("Select several runs (Ctrl/Shift+click) to compare them")
        self.table.itemSelectionChanged.connect(self._on_selection)

        self.ckpt_combo = QComboBox()
        # wide enough for "step 10,000,000" before any run is chosen (its items come later)
        self.ckpt_combo.setMinimumContentsLength(len("step 10,000,000"))
        self.ckpt_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.ckpt_combo.setToolTip(
            "The kept checkpoint of the current run to open or resume from (the newest first)"
        )
        self.ckpt_combo.currentIndexChanged.connect(lambda *_: self._update_buttons())
        self.open_btn = _button(
            "&Open in Sample/Denoise", self.open_selected, "Load this checkpoint as the model"
        )
        self.resume_btn = _button(RESUME_TEXT, self.resume_selected, RESUME_TIP)
        self.dup_btn = _button("Du&plicate with changes", self.duplicate_selected,
                               "A new run with this run's settings, to change one in the Train tab")  # fmt: skip
        self.learn_btn = _button("&Watch it learn", self.watch_it_learn,
                                 "Sample the same noise through every kept checkpoint of this run")  # fmt: skip
        self.gif_btn = _button(
            "Export &GIF…", lambda: self.export_learning(), "Save the strip as an animation"
        )
        acts = QHBoxLayout()
        for w in (QLabel("Checkpoint:"), self.ckpt_combo, self.open_btn, self.resume_btn, self.dup_btn,
                  self.learn_btn, self.gif_btn):  # fmt: skip
            acts.addWidget(w)
        acts.addStretch(1)

        self.overlay = LossOverlay()
        self.diff = SettingsDiff()
        self.evals = EvalHistory()
        self.previews = PreviewCompare()
        self.learning = LearningStrip()
        self.views = QTabWidget()
        for w, title in ((self.overlay, "Loss"), (self.diff, "Settings that differ"),
                         (self.evals, "Quality"), (self.previews, "Previews"), (self.learning, "Watch it learn"),
                         (self._queue_ui(), "Queue")):  # fmt: skip
            self.views.addTab(w, title)

        upper = QWidget()
        uv = QVBoxLayout(upper)
        uv.setContentsMargins(0, 0, 0, 0)
        uv.addLayout(top)
        uv.addWidget(self.table, 1)
        uv.addLayout(acts)
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(upper)
        split.addWidget(self.views)
        split.setStretchFactor(1, 2)
        lay = QVBoxLayout(self)
        lay.addWidget(split, 1)
        lay.addWidget(self.messages)
        self._update_buttons()

    def _queue_ui(self) -> QWidget:
        self.queue_list = QListWidget()
        self.queue_list.setToolTip("Runs waiting to be trained, in order (Add to queue in the Train tab)")
        self.up_btn = _button("&Earlier", lambda: self.move_queued(-1), "Move the queued run up")
        self.down_btn = _button("&Later", lambda: self.move_queued(1), "Move the queued run down")
        self.remove_btn = _button("Re&move", self.remove_queued, "Take the run off the queue")
        self.run_queue_btn = _button("Run &queue", self.run_queue,
                                     "Start the next queued run in the Train tab (the rest follow)")  # fmt: skip
        side = QVBoxLayout()
        for b in (self.up_btn, self.down_btn, self.remove_btn, self.run_queue_btn):
            side.addWidget(b)
        side.addStretch(1)
        box = QWidget()
        h = QHBoxLayout(box)
        h.addWidget(self.queue_list, 1)
        h.addLayout(side)
        return box

    # ------------------------------------------------------------------ the runs folder
    def choose_folder(self, path: str | Path | None = None) -> None:
        if path is None:
            path = QFileDialog.getExistingDirectory(self, "Runs folder", str(self.root))
            if not path:
                return
        self.root = Path(path).expanduser()
        self.state.settings.setValue(RUNS_FOLDER_KEY, str(self.root))
        self.infos.clear()
        self.metrics.clear()
        self.rescan()

    def rescan(self) -> None:
        """List the run folders again (new ones are read; known ones are kept and followed)."""
        self.folder_label.setText(str(self.root))
        found = runs.run_dirs(self.root)
        for p in found:
            if p not in self.infos:
                self.metrics[p] = runs.RunMetrics(p / runs.METRICS)
                self.infos[p] = runs.read_run(p, self.metrics[p])
        for p in [p for p in self.infos if p not in found]:
            self.infos.pop(p)
            self.metrics.pop(p, None)
        self._fill_table()
        self.refresh_queue()

    def _fill_table(self) -> None:
        selected = set(self.selected_paths())
        order = sorted(self.infos, key=lambda p: self.infos[p].created, reverse=True)
        self.table.blockSignals(True)
        if order != self._order:
            self._order = order
            self.table.setRowCount(len(order))
        for r, p in enumerate(order):
            self._set_row(r, self.infos[p])
        self.table.clearSelection()
        for r, p in enumerate(order):
            if p in selected:
                self.table.selectRow(r) if len(selected) == 1 else self._add_row_to_selection(r)
        self.table.blockSignals(False)
        self.table.resizeColumnsToContents()
        self._on_selection()

    def _add_row_to_selection(self, r: int) -> None:
        from PySide6.QtCore import QItemSelectionModel

        model = self.table.selectionModel()
        flags = QItemSelectionModel.SelectionFlag.Select | QItemSelectionModel.SelectionFlag.Rows
        model.select(self.table.model().index(r, 0), flags)

    def _set_row(self, r: int, info: runs.RunInfo) -> None:
        for c, text in enumerate(row_texts(info)):
            item = self.table.item(r, c)
            if item is None:
                item = QTableWidgetItem()
                self.table.setItem(r, c, item)
            if item.text() != text:
                item.setText(text)
            if c == 1 and info.error:
                item.setToolTip(info.error)

    # ------------------------------------------------------------------ following live
    def showEvent(self, event) -> None:  # Qt API
        super().showEvent(event)
        self.poll()
        self.timer.start()

    def hideEvent(self, event) -> None:  # Qt API
        super().hideEvent(event)
        self.timer.stop()

    def poll(self) -> None:
        """Bring the runs that may change (running, or selected) up to date; list the folder now and then."""
        self._polls += 1
        if self._polls % RESCAN_EVERY == 0:
            found = runs.run_dirs(self.root)
            if set(found) != set(self.infos):
                self.rescan()
                return
        selected = set(self.selected_paths())
        changed_sel = False
        for r, p in enumerate(self._order):
            old = self.infos[p]
            if old.status != runs.RUNNING and p not in selected and self._polls % RESCAN_EVERY:
                continue
            new = runs.read_run(p, self.metrics[p])
            if (new.status, new.step, new.updated, len(new.checkpoints), new.last_loss, len(new.evals)) != (
                old.status, old.step, old.updated, len(old.checkpoints), old.last_loss, len(old.evals)
            ):  # fmt: skip
                self.infos[p] = new
                self._set_row(r, new)
                changed_sel |= p in selected
        if changed_sel:
            self._show_selected()
        self.refresh_queue()

    # ------------------------------------------------------------------ selection and comparing
    def selected_paths(self) -> list[Path]:
        rows = sorted({i.row() for i in self.table.selectionModel().selectedRows()})
        return [self._order[r] for r in rows if r < len(self._order)]

    def select(self, paths: list[str | Path]) -> None:
        """Select these runs (scripts and tests)."""
        want = {Path(p) for p in paths}
        self.table.clearSelection()
        for r, p in enumerate(self._order):
            if p in want:
                self._add_row_to_selection(r)

    def _on_selection(self) -> None:
        self._show_selected()
        self._fill_checkpoints()
        self._update_buttons()

    def _show_selected(self) -> None:
        paths = self.selected_paths()
        self.overlay.show_runs([(self.infos[p], self.metrics[p]) for p in paths])
        infos = [self.infos[p] for p in paths]
        self.diff.show_runs(infos)
        self.evals.show_runs(infos)
        self.previews.show_runs(infos)

    def current(self) -> runs.RunInfo | None:
        paths = self.selected_paths()
        return self.infos[paths[0]] if paths else None

    def _fill_checkpoints(self) -> None:
        info = self.current()
        keep = self.ckpt_combo.currentData()
        self.ckpt_combo.clear()
        for step, path in reversed(info.checkpoints if info else []):
            self.ckpt_combo.addItem(f"step {step:,}", str(path))
        i = self.ckpt_combo.findData(keep)
        if i >= 0:
            self.ckpt_combo.setCurrentIndex(i)

    def _update_buttons(self) -> None:
        info = self.current()
        has_ckpt = bool(info and info.checkpoints)
        self.open_btn.setEnabled(has_ckpt and not self.loader.is_busy())
        older = self.chosen_older_step() is not None
        self.resume_btn.setText(RESUME_OLDER_TEXT if older else RESUME_TEXT)
        self.resume_btn.setEnabled(bool(info and info.config) and (older or info.status != runs.RUNNING))
        self.dup_btn.setEnabled(bool(info and info.config))
        self.learn_btn.setEnabled(has_ckpt and not self.learn_slot.is_busy())
        self.gif_btn.setEnabled(bool(self.learning.frames) and not self.learn_slot.is_busy())

    # ------------------------------------------------------------------ acting on a run
    def _train(self):
        if self.train_panel is not None:
            return self.train_panel
        win = self.window()
        return win.panel("TrainPanel") if hasattr(win, "panel") else None

    def _show_train(self, train) -> None:
        tabs = getattr(self.window(), "tabs", None)
        if tabs is not None:
            tabs.setCurrentWidget(train)

    def open_selected(self) -> bool:
        """Send the chosen checkpoint (else the newest) of the current run to Sample and Denoise."""
        path = self.ckpt_combo.currentData()
        return bool(path) and self.loader.load(path)

    def chosen_older_step(self) -> int | None:
        """The step of the checkpoint chosen in the list when it is not the current run's newest; else None."""
        info, chosen = self.current(), self.ckpt_combo.currentData()
        if info is None or not info.checkpoints or chosen is None:
            return None
        steps = [s for s, p in info.checkpoints if str(p) == chosen]
        return steps[0] if steps and steps[0] != info.checkpoints[-1][0] else None

    def resume_selected(self) -> bool:
        """Continue the current run in the Train tab: from its newest checkpoint, or, when an older one is
        chosen, a new run forked from that one (runs.fork_run: the run itself stays as it is)."""
        info, train = self.current(), self._train()
        if info is None or train is None:
            return False
        run_dir, step = info.path, self.chosen_older_step()
        if step is not None:
            if train.is_busy():
                self.messages.error("A run is training: resume from this checkpoint once it has finished.")
                return False
            try:
                run_dir = runs.fork_run(info.path, step)
            except DDPMError as exc:
                self.messages.error(str(exc))
                return False
            self.rescan()
            self.select([run_dir])
        ok = train.resume_run(run_dir, start=False)
        if ok:
            if step is not None:
                self.state.show_status(f"{run_dir.name}: {info.name} from step {step:,}, as a new run.")
            self._show_train(train)
        return ok

    def duplicate_selected(self) -> bool:
        info, train = self.current(), self._train()
        if info is None or info.config is None or train is None:
            return False
        if not train.use_settings(info.config):
            self.messages.error("A run is training: duplicate the run once it has finished.")
            return False
        self.state.show_status(f"The Train tab holds the settings of {info.name}: change one and start.")
        self._show_train(train)
        return True

    def watch_it_learn(self) -> bool:
        """Sample the same noise through every kept checkpoint of the current run (in a worker)."""
        info = self.current()
        if info is None or not info.checkpoints or self.learn_slot.is_busy():
            return False
        self.learning.clear()
        self.learn_run = info.name
        self.views.setCurrentWidget(self.learning)
        self.messages.clear_error()
        self.messages.status(f"Sampling {len(info.checkpoints)} checkpoint(s) of {info.name}…")
        self.messages.set_busy(True)
        ckpts = list(info.checkpoints)
        # closed after the frame in progress when stopped (close_on_stop, the default)
        started = self.learn_slot.start(lambda: runs.learning_frames(ckpts))
        self._update_buttons()
        return started

    def _on_frame(self, item) -> None:
        step, images = item
        self.learning.add_frame(step, images)

    def _on_learn_done(self) -> None:
        self.messages.set_busy(False)
        self.messages.status(f"{len(self.learning.frames)} checkpoint(s) sampled from the same noise.")
        self._update_buttons()

    def export_learning(self, path: str | Path | None = None):
        frames = [g for _s, g in self.learning.frames]
        if not frames:
            return None
        from ddpm_gui.engine.images import upscale

        scale = max(1, 256 // max(frames[0].shape[0], 1))
        name = f"{self.learn_run}-learning.gif"
        return self.exporter.save_animation(path, "Save animation", name, frames,
                                            lambda g: upscale(g, scale), LEARN_FPS)  # fmt: skip

    # ------------------------------------------------------------------ the queue
    def queue(self) -> RunQueue:
        return RunQueue(self.root)

    def refresh_queue(self) -> None:
        try:
            st = self.queue().path.stat()
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = None
        if stamp == self._queue_stamp:
            return  # the queue file did not change
        self._queue_stamp = stamp
        row = self.queue_list.currentRow()
        self.queue_list.clear()
        self.queue_entries = []
        try:
            entries = self.queue().entries()
        except DDPMError as exc:
            self.queue_list.addItem(str(exc))
            return
        for i, e in enumerate(entries, 1):
            self.queue_list.addItem(
                f"{i}. {e.describe()}" + (f"  (cannot start: {e.error})" if e.error else "")
            )
        self.queue_list.setCurrentRow(min(row, len(entries) - 1))
        self.queue_entries = entries

    def _queued_id(self) -> str | None:
        r = self.queue_list.currentRow()
        entries = self.queue_entries
        return entries[r].id if 0 <= r < len(entries) else None

    def _edit_queue(self, action) -> None:
        key = self._queued_id()
        if key is None:
            return
        try:
            result = action(key)
        except DDPMError as exc:
            self.messages.error(str(exc))
            return
        self._queue_stamp = ("edited",)
        self.refresh_queue()
        if isinstance(result, int):
            self.queue_list.setCurrentRow(result)

    def move_queued(self, delta: int) -> None:
        self._edit_queue(lambda key: self.queue().move(key, delta))

    def remove_queued(self) -> None:
        self._edit_queue(lambda key: self.queue().remove(key) and None)

    def run_queue(self) -> bool:
        train = self._train()
        if train is None or train.is_busy():
            self.messages.status("The queue goes on when the run in the Train tab has finished.")
            return False
        started = train.start_queued()
        self._queue_stamp = ("edited",)
        self.refresh_queue()
        if started:
            self._show_train(train)
        return started

    # ------------------------------------------------------------------ panel protocol
    def is_busy(self) -> bool:
        return self.learn_slot.is_busy() or self.loader.is_busy() or self.exporter.is_busy()

    def shutdown(self, timeout_ms: int = 60000) -> None:
        self.timer.stop()
        shutdown_jobs(self, timeout_ms)
