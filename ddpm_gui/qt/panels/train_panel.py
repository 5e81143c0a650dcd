"""Train panel: the settings form, start/pause/stop/resume, live loss curve, throughput, ETA, previews
and the quality check.

Its pieces live in ddpm_gui/qt/train/: the form (form.py, fields.py), what a run shows (run_view.py) and
the quality check (quality.py). This module runs them. The Trainer (Qt-free, ddpm_gui.engine.trainer)
runs in a JobSlot; its events arrive in the GUI thread at most ~20 per second (consecutive Progress
events are merged). Pause/resume/stop are direct method calls on the Trainer (thread-safe Events): a
queued signal would never reach a worker busy in its loop. Stop makes the Trainer save a checkpoint and
end with Finished(reason="stopped").

A paused run, and a run folder loaded to be continued, offer only the settings a resumed run may change
(RESUMABLE). A paused run takes one training step at a time ("1 step", shown on the run view's One step
page) and takes edits of the learning rate and the other settings it can change in place on its next
step; other edits take effect through a checkpoint: the run stops (saving one) and continues from it
with the new settings (qt/train/paused.py).

"Resume" (the Pause button while paused) goes on with this run; "Continue a saved run…" loads an older
run folder to go on from its newest checkpoint. Each button keeps its own Alt+letter (TEXTS), which the
settings rows (lettered by the form) and the menus never take.
"""

from __future__ import annotations

import time
from pathlib import Path

from PySide6.QtCore import Slot
from PySide6.QtWidgets import (
    QFileDialog,
    QGridLayout,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ddpm_gui.engine import events as ev
from ddpm_gui.engine.config import RESUMABLE, TrainConfig, load_run_config
from ddpm_gui.engine.events import coalesce_progress
from ddpm_gui.engine.runs import default_runs_root
from ddpm_gui.engine.text import describe_data
from ddpm_gui.errors import ConfigError, DDPMError
from ddpm_gui.qt.mnemonics import WINDOW_KEYS, mnemonic
from ddpm_gui.qt.runs import QueueActions
from ddpm_gui.qt.state import AppState
from ddpm_gui.qt.train.fields import OUTPUT
from ddpm_gui.qt.train.form import SettingsForm, gpus_row, setting_values
from ddpm_gui.qt.train.jobs import BundleReady, devices, is_progress, train_iter
from ddpm_gui.qt.train.model_size import ModelSize
from ddpm_gui.qt.train.multi_gpu import MultiGpuRun
from ddpm_gui.qt.train.paused import STEP_TIP, PausedRunActions
from ddpm_gui.qt.train.quality import QualityBox
from ddpm_gui.qt.train.run_view import RunView
from ddpm_gui.qt.train.schedule_row import ScheduleRow
from ddpm_gui.qt.workers import JobSlot, show_warning, shutdown_jobs

# Tests set this to False: failures are then shown in the panel only, never in a dialog.
SHOW_DIALOGS = True

DEFAULT_RECIPE = "quick-cpu"  # what a new user gets; a GPU user picks "tutorial" (one click)
# the widget names that scripts and tests use -> the setting each shows (any other: panel.form.widget(name))
WIDGET_NAMES = {
    "data_edit": "data",
    "size_spin": "image_size",
    "preset_combo": "preset",
    "cond_check": "conditional",
    "schedule_combo": "schedule",
    "prediction_combo": "prediction",
    "lr_edit": "lr",
    "batch_spin": "batch_size",
    "steps_spin": "steps",
    "ema_edit": "ema_decay",
    "device_combo": "device",
    "amp_check": "amp",
    "seed_spin": "seed",
    "preview_spin": "preview_every",
}
MODEL_FIELDS = ("preset", "image_size", "conditional")  # what the parameter/FLOP count depends on
# the run buttons' texts, in every state they show (each with its own Alt+letter)
TEXTS = {
    "start": "&Start",
    "queue": "&Add to queue",  # beside Start: the run waits in the runs folder's queue (the Runs tab)
    "continue": "&Continue run",  # Start, when a saved run is loaded to be continued
    "pause": "&Pause",
    "resume": "&Resume",  # Pause, while paused
    "step": "&1 step",  # one training step of a paused run (Alt+1: the letters are the settings rows')
    "stop": "St&op",
    "saved_run": "Co&ntinue a saved run…",
    "new_run": "&New run",  # "Continue a saved run…", when one is loaded: back to a new run
    "use": "Use current &weights",
}
STATUS_MS = 8000  # how long a passing message ("Training started…") stays in the status bar


def timestamp_dir(root: Path | None = None) -> Path:
    return (root or default_runs_root()) / time.strftime("%Y-%m-%d_%H-%M-%S")


def _dialogs() -> bool:
    return SHOW_DIALOGS


class TrainPanel(PausedRunActions, QueueActions, QWidget):
    def __init__(self, state: AppState, parent: QWidget | None = None):
        super().__init__(parent)
        self.state = state
        self._trainer = None
        self._run_cfg: TrainConfig | None = None  # the run going on, or the run folder about to be continued
        self._run_dir: Path | None = None
        self._resume_dir: Path | None = None  # a run folder loaded to be continued (not started yet)
        self._restart: TrainConfig | None = None  # a paused run's edits: continue with these after the stop
        self._run_dir_auto = True
        self._config_ok = False
        self._last_checkpoint: str | None = None
        self._last_step = 0
        self.last_finished: ev.Finished | None = None
        self.train_slot = JobSlot(
            self, self._on_event, self._fail, self._on_done, "Training failed", _dialogs
        )
        self.device_slot = JobSlot(self, self._on_devices)
        self.snapshot_slot = JobSlot(self, self._on_snapshot, self._on_snapshot_failed)
        self._build_ui()
        for slot in (self.train_slot, self.snapshot_slot):
            slot.busyChanged.connect(lambda _busy: self._update_buttons())
        self.form.apply_recipe(DEFAULT_RECIPE)
        self.form.restore()
        self.form.changed.connect(self._on_form_changed)
        self.form.asked.connect(self._on_settings_asked)
        self.state.dataChanged.connect(self._on_data_changed)
        self._on_data_changed(self.state.data)
        self.device_slot.start(devices)
        self._validate()

    # ------------------------------------------------------------------ UI
    def _build_ui(self) -> None:
        self.view = RunView()
        self.quality = QualityBox(self._eval_source, self._eval_data, self.view.log, _dialogs)
        # Alt+letters beside the form: the menus', the buttons' (in every state), the run view's
        beside = [*TEXTS.values(), self.quality.eval_btn.text(), self.view.loss_plot.log_box.text()]
        self.form = SettingsForm(self.state.settings, WINDOW_KEYS | {mnemonic(t) for t in beside})
        self.data_note = self.form.add_note("data")
        self.model_info_label = self.form.add_note("preset")
        self.model_size = ModelSize(self.model_info_label, self._model_key, self)
        self.schedule_row = ScheduleRow(self.form, self.state)  # its plots, and the Forward tab's schedule
        self.gpus_spin = gpus_row(self.form)  # None unless several CUDA devices: a run on several GPUs
        self.run_edit = QLineEdit(str(timestamp_dir()))
        self.run_edit.setToolTip("Folder for config.toml, metrics.jsonl, checkpoints and sample grids.")
        self.run_edit.textEdited.connect(self._on_run_dir_edited)
        self.run_edit.textChanged.connect(self._validate)
        self.browse_btn = QPushButton("…")
        self.browse_btn.setToolTip("Choose the run folder")
        self.browse_btn.setFixedWidth(28)
        self.browse_btn.clicked.connect(self._browse_run_dir)
        row = QHBoxLayout()
        row.addWidget(self.run_edit, 1)
        row.addWidget(self.browse_btn)
        self.form.add_row(OUTPUT, "Run folder:", row, self.run_edit)

        self.start_btn = _button(TEXTS["start"], self.start, "Start a new run with these settings")
        self.start_btn.setDefault(True)
        self.queue_btn = _button(
            TEXTS["queue"], self.add_to_queue, "Queue a run with these settings: it starts when the runs before "
            "it have finished (the Runs tab shows the queue; `ddpm-gui queue run` trains it headless)"
        )  # fmt: skip
        self.pause_btn = _button(
            TEXTS["pause"],
            self.toggle_pause,
            "Pause; while paused, the settings a resumed run may change can be edited",
        )
        self.stop_btn = _button(TEXTS["stop"], self.stop, "Stop after the current step and save a checkpoint")
        self.step_btn = _button(TEXTS["step"], self.step_once, STEP_TIP)
        self.resume_btn = _button(
            TEXTS["saved_run"],
            self._on_resume_clicked,
            "Load a run folder saved earlier, to go on from its newest checkpoint",
        )
        self.use_btn = _button(
            TEXTS["use"],
            self.use_current_weights,
            "Send the model being trained (EMA weights) to the Sample and Denoise tabs",
        )
        buttons = QGridLayout()
        for i, b in enumerate((self.start_btn, self.queue_btn, self.pause_btn, self.step_btn, self.stop_btn)):
            buttons.addWidget(b, 0, i)
        buttons.addWidget(self.resume_btn, 1, 0, 1, 2)
        buttons.addWidget(self.use_btn, 1, 2, 1, 3)

        self.quality.slot.busyChanged.connect(lambda _busy: self._update_buttons())
        self.view.add_message(self.quality.label)

        left = QWidget()
        lv = QVBoxLayout(left)
        lv.setContentsMargins(0, 0, 4, 0)
        lv.addWidget(self.form)
        lv.addLayout(buttons)
        lv.addWidget(self.quality)
        lv.addStretch(1)
        left.setMinimumWidth(360)
        left.setMaximumWidth(440)
        outer = QHBoxLayout(self)
        outer.addWidget(left)
        outer.addWidget(self.view, 1)

    def __getattr__(self, name: str):
        """The setting widgets under the names scripts and tests use (WIDGET_NAMES), and the widgets of
        the run view and the form as if they were the panel's own."""
        if name in WIDGET_NAMES:
            return self.form.widget(WIDGET_NAMES[name])
        for part in ("view", "form"):
            obj = self.__dict__.get(part)
            if obj is not None and name in obj.__dict__:
                return obj.__dict__[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # ------------------------------------------------------------------ the form
    def apply_recipe(self, name: str) -> None:
        self.form.apply_recipe(name)

    def set_overrides(self, **values) -> None:
        """Set settings by name (scripts and tests: preview_steps, log_every...)."""
        self.form.set_values(values)

    def build_config(self) -> TrainConfig:
        """The TrainConfig a start would use; raises ConfigError (DDPMError) with a message."""
        if self._run_cfg is not None and self._form_mode() in ("paused", "resume"):
            values = self.form.values()
            return self._run_cfg.replace(**{k: values[k] for k in RESUMABLE}).validate()
        cfg = self.form.config()
        if not self.run_edit.text().strip():
            raise ConfigError("Choose a run folder.")
        return cfg

    @Slot(str)
    def _on_form_changed(self, name: str) -> None:
        if name in MODEL_FIELDS:
            self.model_size.request()
        self._validate()

    @Slot()
    def _validate(self, *_args) -> bool:
        try:
            self.build_config()
        except DDPMError as e:
            self.form.show_error(str(e))
            self._config_ok = False
        except Exception as e:  # a bad combination must never crash the form
            self.form.show_error(f"{type(e).__name__}: {e}")
            self._config_ok = False
        else:
            self.form.show_error("")
            self._config_ok = True
        self._update_buttons()
        return self._config_ok

    @Slot(object)
    def _on_data_changed(self, data: object) -> None:
        if data is None:
            for name in ("data", "image_size", "conditional"):
                self.form.unlock(name)
            self.data_note.setText("Nothing loaded in the Data tab: the run loads this source itself.")
        else:
            self.form.lock("data", str(data.source or data.name), "The data loaded in the Data tab.")
            self.form.lock(
                "image_size", data.size, "Data loaded in the Data tab keeps its size: reload it there."
            )
            if data.labels is not None:
                self.form.unlock("conditional")
            else:
                self.form.lock("conditional", False, "This dataset has no class labels.")
            self.data_note.setText(f"From the Data tab: {describe_data(data)}.")
        self.model_size.request()
        self._validate()

    @Slot(dict)
    def _on_settings_asked(self, values: dict) -> None:
        """The image size is the data's (locked to the Data tab's images): a recipe or a settings file that
        trains at another size has the Data tab load its source at that size, so that the run is theirs."""
        size, d = values.get("image_size"), self.state.data
        if (
            not isinstance(size, int)
            or d is None
            or d.size == size
            or not d.source
            or self.form.mode != "new"
        ):
            return
        self.view.log(
            f"These settings train at {size}x{size} px: the Data tab loads {d.source} at that size."
        )
        self.state.want_data(str(d.source), size)

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

    # ------------------------------------------------------------------ devices, model size
    def _on_devices(self, devices: object) -> None:
        self.form.set_items("device", tuple((value, value, label, "") for value, label in devices))

    def _model_key(self) -> tuple:
        preset, size, cond = (self.form.fields[n].value() for n in MODEL_FIELDS)
        d = self.state.data
        return (preset, size, d.num_classes if cond and d is not None and d.labels is not None else None)

    # ------------------------------------------------------------------ state of the run
    def is_busy(self) -> bool:
        return self.train_slot.is_busy()

    def is_paused(self) -> bool:
        return bool(self._trainer is not None and self.is_busy() and self._trainer.paused)

    def _form_mode(self) -> str:
        if self.is_busy():
            return "paused" if self.is_paused() and not self.train_slot.stopping() else "running"
        return "resume" if self._resume_dir is not None else "new"

    def _update_buttons(self) -> None:
        mode = self._form_mode()
        if mode != self.form.mode:
            self.form.set_mode(mode)
            self.schedule_row.apply_pending()
        running, stopping = self.is_busy(), self.train_slot.stopping()
        self.start_btn.setEnabled(not running and self._config_ok)
        self.queue_btn.setEnabled(self._config_ok and mode == "new")
        self.start_btn.setText(TEXTS["continue"] if mode == "resume" else TEXTS["start"])
        self.resume_btn.setEnabled(not running)
        self.resume_btn.setText(TEXTS["new_run"] if mode == "resume" else TEXTS["saved_run"])
        self.pause_btn.setEnabled(running and not stopping and not isinstance(self._trainer, MultiGpuRun))
        self.pause_btn.setText(TEXTS["resume"] if self.is_paused() else TEXTS["pause"])
        self.stop_btn.setEnabled(running and not stopping)
        self.step_btn.setEnabled(self.can_step())
        self.use_btn.setEnabled(
            running and not stopping and self._last_step > 0 and not self.snapshot_slot.is_busy()
        )
        self.run_edit.setEnabled(mode == "new")
        self.browse_btn.setEnabled(mode == "new")
        self.quality.refresh()

    # ------------------------------------------------------------------ starting and resuming
    @Slot()
    def start(self) -> bool:
        """Start a new run with the form's settings, or continue the run folder loaded with "Continue a saved
        run…".
        Returns False (message shown) when it cannot."""
        if self.is_busy() or not self._validate():
            return False
        cfg = self.build_config()
        if self._resume_dir is not None:
            return self._start_trainer(cfg, self._resume_dir, resumed=True)
        if self._run_dir_auto:
            self.run_edit.setText(str(timestamp_dir()))
        run_dir = Path(self.run_edit.text().strip()).expanduser()
        ckpts = run_dir / "checkpoints"
        if ckpts.is_dir() and any(ckpts.iterdir()):
            self.view.show_error(
                f"{run_dir} already holds a run: use “Continue a saved run…” to go on with it, or choose "
                "another folder."
            )
            return False
        self.form.store()
        return self._start_trainer(cfg, run_dir, resumed=False)

    def _on_resume_clicked(self) -> None:
        if self._resume_dir is not None:  # "New run": leave the run folder alone
            self._resume_dir = self._run_cfg = None
            self._run_dir_auto = True
            self.run_edit.setText(str(timestamp_dir()))
            self._validate()
        else:
            self.resume_run(start=False)

    def resume_run(self, run_dir: str | Path | None = None, start: bool = True) -> bool:
        """Load a run folder (a dialog asks which when None) to continue it from its newest checkpoint: the
        form shows its settings, of which only those a resumed run may change are editable. With `start`,
        continue it at once; else Start ("Continue run") does. False (message shown) when it cannot."""
        if self.is_busy():
            return False
        if run_dir is None:
            root = default_runs_root()
            run_dir = QFileDialog.getExistingDirectory(
                self, "Continue a saved run", str(root if root.exists() else Path.home())
            )
            if not run_dir:
                return False
        run_dir = Path(run_dir).expanduser()
        try:
            cfg = load_run_config(run_dir)
        except DDPMError as e:
            self.view.show_error(str(e))
            return False
        self.view.error_label.hide()
        self.form.set_values(setting_values(cfg), force=True)
        self._resume_dir, self._run_cfg = run_dir, cfg
        self.form.set_mode("resume")
        self.set_run_dir(run_dir)
        self._validate()
        self.view.log(f"Loaded {run_dir} to continue it ({cfg.preset}, {cfg.steps:,} steps)")
        return self.start() if start else True

    def _start_trainer(self, cfg: TrainConfig, run_dir: Path, resumed: bool, own_data: bool = False) -> bool:
        """`own_data`: a new run that loads its own data unless the Data tab's is the same (a queued run)."""
        from ddpm_gui.engine.trainer import Trainer

        d = self.state.data  # a resumed run reuses the Data tab's images when they are the run's own
        same = d is not None and d.source == cfg.data and d.size == cfg.image_size and cfg.data_limit is None
        gpus = self.gpus_spin.value() if self.gpus_spin is not None else 1
        try:
            if gpus > 1:  # torchrun's processes load the data themselves
                trainer = MultiGpuRun(cfg, run_dir, gpus, resume=resumed)
            else:
                trainer = Trainer(
                    cfg, run_dir, resume=resumed, data=d if same or not (resumed or own_data) else None
                )
        except DDPMError as e:
            self.view.show_error(str(e))
            return False
        self._trainer, self._run_cfg, self._run_dir, self._resume_dir = trainer, cfg, run_dir, None
        self._last_checkpoint, self._last_step, self.last_finished = None, 0, None
        self.view.start(cfg, run_dir, resumed)
        if not resumed:
            self.quality.forget()
        self.train_slot.start(
            lambda: train_iter(trainer),
            throttle_s=0.05,
            coalesce=coalesce_progress,
            holdable=is_progress,
            on_stop=trainer.stop,
            close_on_stop=False,
        )
        self.state.set_training(True)
        self._update_buttons()
        return True

    # ------------------------------------------------------------------ run control
    @Slot()
    def toggle_pause(self) -> None:
        t = self._trainer
        if t is None or not self.is_busy():
            return
        if not t.paused:
            t.pause()
            self.view.pausing()
        elif self.send_paused_edits(restart=True):  # the edits taken in place, or none
            t.resume()
            self.view.unpausing()
        self._update_buttons()

    def pause(self) -> None:
        if self.is_busy() and not self.is_paused():
            self.toggle_pause()

    def resume(self) -> None:
        if self.is_paused():
            self.toggle_pause()

    @Slot()
    def stop(self) -> None:
        """Ask the run to stop: the Trainer saves a checkpoint, then ends (Finished, reason 'stopped')."""
        if not self.is_busy():
            return
        self.train_slot.stop()
        self.view.stats_label.setText("Stopping: saving a checkpoint…")
        self._update_buttons()

    @Slot()
    def use_current_weights(self) -> None:
        """Publish the weights being trained (EMA) to the Sample and Denoise tabs. The snapshot (a copy of
        the model, taken under the trainer's lock) is made in a worker: for the 42M-parameter UNet it takes
        a moment."""
        trainer = self._trainer
        if trainer is not None:
            self.snapshot_slot.start(lambda: [trainer.bundle()])

    def _on_snapshot(self, bundle: object) -> None:
        step = getattr(bundle, "step", "?")
        self.state.set_bundle(bundle, "the weights being trained")
        self.view.log(f"Published the weights of step {step} to Sample and Denoise")

    def _on_snapshot_failed(self, message: str) -> None:
        self.state.show_status(f"No weights yet: {message}", STATUS_MS)

    # ------------------------------------------------------------------ the quality check
    def _eval_source(self):
        """What the quality check scores: the run being trained (its EMA weights), else the current model."""
        if self._trainer is not None and getattr(self._trainer, "model", None) is not None:
            return self._trainer
        return self.state.bundle

    def _eval_data(self):
        return getattr(self._trainer, "data", None) if self._trainer is not None else self.state.data

    def evaluate_quality(self) -> bool:
        return self.quality.evaluate()

    @property
    def last_quality(self):
        return self.quality.last_result

    # ------------------------------------------------------------------ events (GUI thread)
    def _on_event(self, e: object) -> None:
        self.view.show_event(e, paused=self.is_paused())
        if isinstance(e, ev.Progress | ev.Started | ev.Paused | ev.StepInspected):
            self._last_step = e.step
        self._tell_status(e)
        if isinstance(e, ev.CheckpointSaved):
            self._last_checkpoint = e.path
            self.quality.on_checkpoint()
        elif isinstance(e, ev.Finished):
            self._on_finished(e)
        elif isinstance(e, ev.Failed):
            self._last_checkpoint = e.checkpoint or self._last_checkpoint
            self._restart = None
            extra = f"\nThe last good checkpoint is {e.checkpoint}." if e.checkpoint else ""
            self._tell_failure(e.message + extra)
        elif isinstance(e, BundleReady):
            self.state.set_bundle(e.bundle, f"the model trained in {self._run_dir}")
        self._update_buttons()

    def _tell_status(self, e: object) -> None:
        """The run in the status bar (seen from every tab), never a message that is no longer true: what it
        is loading stays until training starts; passing news ("started", a notice while training) goes
        after STATUS_MS; "paused" stays until it resumes; the end stays."""
        started = self.view.started
        if isinstance(e, ev.Notice):
            self.state.show_status(e.message, STATUS_MS if started else 0)
        elif isinstance(e, ev.Started):
            self.state.show_status(f"Training started on {self.view.device_text()}.", STATUS_MS)
        elif isinstance(e, ev.Paused | ev.StepInspected):
            self.state.show_status(f"Training paused at step {e.step:,}.")
        elif isinstance(e, ev.Resumed):
            self.state.show_status(f"Training resumed at step {e.step:,}.", STATUS_MS)

    def _on_finished(self, e: ev.Finished) -> None:
        self.last_finished = e
        self._last_step = e.step
        if e.checkpoint:
            self._last_checkpoint = e.checkpoint
            self.state.add_recent(e.checkpoint)
        what = "finished" if e.reason == "completed" else "stopped"
        self.state.show_status(f"Training {what} at step {e.step:,}.")

    def _fail(self, message: str) -> None:
        """The worker raised: the message in the panel (JobSlot shows the dialog)."""
        self._restart = None
        self.view.fail(message)
        self.state.show_status(f"Training failed: {message}")

    def _tell_failure(self, message: str) -> None:
        """The Trainer reported a failure (a Failed event): the panel and, unless turned off, a dialog."""
        self.state.show_status(f"Training failed: {message}")
        if SHOW_DIALOGS:
            show_warning(self, "Training failed", message)

    def _on_done(self) -> None:
        self.view.finish()
        restart, self._restart = self._restart, None
        if (
            restart is not None
            and self._run_dir is not None
            and self._start_trainer(restart, self._run_dir, True)
        ):
            return  # the same run goes on with the changed settings: still training
        stopped = self.last_finished is not None and self.last_finished.reason == "stopped"
        if not stopped and self.start_queued():
            return  # the next queued run (a run stopped by the user stops the queue too)
        self.state.set_training(False)
        self._update_buttons()

    def shutdown(self, timeout_ms: int = 60000) -> None:
        """Stop every job (a training run saves its checkpoint) and wait for the threads to end."""
        self._restart = None
        shutdown_jobs(self, timeout_ms)

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

    def sizeHint(self):  # Qt API
        from PySide6.QtCore import QSize

        return QSize(1280, 800)


def _button(text: str, slot, tip: str) -> QPushButton:
    b = QPushButton(text)
    b.setToolTip(tip)
    b.clicked.connect(slot)
    return b
