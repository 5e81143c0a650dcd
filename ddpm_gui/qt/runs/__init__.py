"""The Runs tab's pieces (the tab itself is qt/panels/runs_panel.py): the runs folder setting, the training
queue as the Train tab uses it (compare.py: the plots that compare runs)."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QSettings

from ddpm_gui.engine.config import TrainConfig
from ddpm_gui.engine.queue import QueueEntry, RunQueue, unique_run_dir
from ddpm_gui.engine.runfolder import check_new_run_dir
from ddpm_gui.engine.runs import default_runs_root
from ddpm_gui.errors import DDPMError
from ddpm_gui.qt.train.form import setting_values

RUNS_FOLDER_KEY = "runs/folder"  # QSettings: the runs folder the Runs tab shows (and whose queue is used)


def runs_root(settings: QSettings) -> Path:
    """The runs folder chosen in the Runs tab, else the default one."""
    value = settings.value(RUNS_FOLDER_KEY, "")
    return Path(str(value)).expanduser() if value else default_runs_root()


def take_next(root: Path, log=lambda _text: None) -> tuple[QueueEntry, Path] | None:
    """The next queued run that can start, taken off the queue of `root`, with its run folder; entries that
    cannot start go back marked with why (and `log` says so). None when none is left (or the queue file
    cannot be used: `log` says why)."""
    q = RunQueue(root)
    while True:
        try:
            entry = q.pop_next()
        except DDPMError as exc:
            log(str(exc))
            return None
        if entry is None:
            return None
        try:
            run_dir = Path(entry.out) if entry.out else unique_run_dir(root)
            check_new_run_dir(run_dir)
            entry.config.validate()
            return entry, run_dir
        except DDPMError as exc:
            q.put_back(entry, str(exc))
            log(f"Queued run {entry.id} cannot start (left in the queue): {exc}")


class QueueActions:
    """The Train tab's side of the queue ("Add to queue", the next queued run when one ends, "Duplicate with
    changes"): mixed into TrainPanel, whose form, run view and _start_trainer it uses."""

    def add_to_queue(self) -> bool:
        """Queue a new run with the form's settings (its run folder, when one was chosen by hand)."""
        try:
            cfg, out = self.form.config(), None if self._run_dir_auto else self.run_edit.text().strip()
            entry = RunQueue(runs_root(self.state.settings)).add(cfg, out or None)
        except DDPMError as e:
            self.view.show_error(str(e))
            return False
        self.view.log(f"Queued: {entry.describe()}")
        if self._run_dir_auto:  # the next run gets a folder of its own
            from ddpm_gui.qt.panels.train_panel import timestamp_dir

            self.run_edit.setText(str(timestamp_dir()))
        return True

    def start_queued(self) -> bool:
        """Start the next queued run (the runs folder's queue); False when busy or none can start."""
        nxt = None if self.is_busy() else take_next(runs_root(self.state.settings), self.view.log)
        if nxt is None:
            return False
        entry, run_dir = nxt
        self._resume_dir = None
        self.form.set_values(setting_values(entry.config), force=True)
        self.set_run_dir(run_dir)
        self.view.log(f"Starting the queued run {entry.id}: {entry.describe()}")
        return self._start_trainer(entry.config, run_dir, resumed=False, own_data=True)

    def use_settings(self, cfg: TrainConfig) -> bool:
        """Fill the form with a run's settings for a new run ("Duplicate with changes" in the Runs tab)."""
        if self.is_busy():
            return False
        if self._resume_dir is not None:
            self._on_resume_clicked()  # back to a new run
        self.form.set_values(setting_values(cfg))
        self._validate()
        return True
