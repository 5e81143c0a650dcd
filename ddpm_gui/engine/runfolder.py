"""The run folder: everything a training run keeps on disk, and the rule that guards it: DDPM Studio deletes
or rewrites only files it can prove it wrote.

    .ddpm-studio-run    the marker: written first when a run is created (format id, run id); it proves that
                        the folder and the files below under their names are the app's
    .lock               held (flock) by the process training here; the OS drops it when the process dies
    config.toml         the settings the run trains with (rewritten when a resume changes one)
    metrics.jsonl       one JSON object per loss read, and {"step", "event", ...} records of what a resume
                        changed; appended to, and on resume cut back to the resumed step
    metrics.<time>.jsonl  the history of an attempt that was restarted from step 0 (kept, never deleted)
    checkpoints/step_00001000.safetensors   rolling; the newest that loads is the one resumed
    samples/step_00001000.png               preview grids
    evals/step_00001000.json    quality results (engine/evaluate.record_eval), read by the Runs tab
    best.json           the checkpoint with the lowest validation loss (kept from pruning)
    tb/                 TensorBoard log, when the run mirrors to one

A new run needs a new or empty folder; anything else that is not a run is refused before a single file is
opened. A folder written before the marker existed is recognised by its config.json and a checkpoint in our
format, and marked when it is resumed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import uuid
from datetime import datetime
from pathlib import Path

import numpy as np

from ddpm_gui import __version__
from ddpm_gui.engine.checkpoint import (
    NewerVersionError,
    checkpoint_path,
    fallback_notes,
    is_ddpm_checkpoint,
    latest_checkpoint,
    list_checkpoints,
    load_latest_checkpoint,
    prune_checkpoints,
    read_meta,
    save_checkpoint,
    set_aside,
)
from ddpm_gui.engine.config import LEGACY_RUN_CONFIG, RUN_CONFIG, TrainConfig, config_toml
from ddpm_gui.engine.fileio import RunLock, atomic_write_bytes, remove_temp_files, write_if_changed
from ddpm_gui.errors import CheckpointError, ConfigError, DataError

MARKER = ".ddpm-studio-run"
MARKER_FORMAT = "ddpm-studio-run"
MARKER_VERSION = 1
METRICS = "metrics.jsonl"
# what a file manager leaves in any folder: a folder holding only these is still empty (never touched)
_OS_FILES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})
# the temp names of versions that wrote `.<name>.<random>.tmp`, for the names they wrote in a run folder
_OLD_TEMP_RE = re.compile(
    r"^\.(step_\d{8,}\.(safetensors|png)|config\.json|metrics\.jsonl)\.[a-z0-9_]+\.tmp$"
)


class HistoryWithoutCheckpoint(CheckpointError):
    """A run with logged steps but no checkpoint: resuming it would silently start over, so it asks first
    (`Trainer(..., restart=True)` starts again from step 0 and keeps the old history)."""


def run_path(path: str | Path) -> Path:
    """The run folder a person gave, refusing an empty path (it would mean the current folder)."""
    if path is None or not str(path).strip():
        raise ConfigError("The run folder path is empty: choose a run folder.")
    return Path(path).expanduser()


def _marked(folder: Path) -> bool:
    try:
        info = json.loads((folder / MARKER).read_bytes())
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(info, dict) and info.get("format") == MARKER_FORMAT


def _older_run(folder: Path) -> bool:
    """A run folder of a version without the marker: config.json and a checkpoint in our format."""
    return (folder / LEGACY_RUN_CONFIG).is_file() and any(
        is_ddpm_checkpoint(p) for _s, p in list_checkpoints(folder)
    )


def is_run_dir(path: str | Path) -> bool:
    """Whether `path` is a DDPM Studio run folder (marked, or an older run recognised by its files)."""
    folder = run_path(path)
    return folder.is_dir() and (_marked(folder) or _older_run(folder))


def check_new_run_dir(path: str | Path) -> None:
    """Raise ConfigError (a one-line message) unless a new run may start in `path`: a folder that does not
    exist yet or is empty. A run is to be resumed; any other folder is someone's and is left alone."""
    folder = run_path(path)
    if not folder.exists():
        return
    if not folder.is_dir():
        raise ConfigError(f"{folder} is not a folder: choose a folder for the run.")
    if is_run_dir(folder):
        raise ConfigError(
            f"{folder} already holds a run: resume it (--resume) or choose an empty run folder."
        )
    try:
        names = [e.name for e in os.scandir(folder)]
    except OSError as exc:
        raise ConfigError(
            f"{folder} cannot be read ({exc.strerror or exc}): choose another folder."
        ) from None
    if any(n not in _OS_FILES for n in names):
        raise ConfigError(
            f"{folder} is not empty and is not a DDPM Studio run folder: choose a new or empty folder "
            "(nothing in it was changed)."
        )


def check_resume_dir(path: str | Path) -> None:
    """Raise unless the run in `path` can be resumed as it is: CheckpointError for a folder that is not a
    run, HistoryWithoutCheckpoint for a run whose checkpoints are gone but whose history is not (the caller
    asks whether to restart it from step 0). A run with no checkpoint and no history passes (it starts)."""
    folder = run_path(path)
    if not folder.exists():
        raise CheckpointError(f"{folder} does not exist: nothing to resume.")
    if not is_run_dir(folder):
        raise CheckpointError(
            f"{folder} is not a DDPM Studio run folder (no {MARKER} marker, and no {LEGACY_RUN_CONFIG} with "
            "checkpoints): nothing to resume; choose a run folder."
        )
    RunFolder(folder).check_history()


class RunFolder:
    """One run folder, opened by a trainer: `create()` for a new run or `open()` to resume one (both take
    the lock), then its settings, metrics log, checkpoints and previews. Paths only until then."""

    def __init__(self, path: str | Path):
        self.path = run_path(path)
        self.checkpoints = self.path / "checkpoints"
        self.samples = self.path / "samples"
        self.metrics = self.path / METRICS
        self._lock: RunLock | None = None

    # ------------------------------------------------------------------ opening

    def create(self) -> None:
        """Start a new run here: the folder must be new or empty. The marker is written first, then the
        lock is taken (nothing is written in a folder that was refused)."""
        check_new_run_dir(self.path)
        self._mkdir(self.path)
        self._write_marker(adopted=False)
        self._lock = RunLock(self.path).acquire()
        self._mkdir(self.checkpoints)
        self._mkdir(self.samples)

    def open(self) -> list[str]:
        """Open an existing run to resume it (lock, mark an older run, clean what a killed save left).
        Returns notes for the user."""
        if not is_run_dir(self.path):
            check_resume_dir(self.path)  # raises: the folder is missing, or it is not a run
        self._lock = RunLock(self.path).acquire()
        if not _marked(self.path):
            self._write_marker(adopted=True)
        self._mkdir(self.checkpoints)
        self._mkdir(self.samples)
        removed = self.remove_temp_files()
        if not removed:
            return []
        return [
            f"Removed {len(removed)} unfinished file(s) left by an interrupted save "
            f"({', '.join(p.name for p in removed[:3])}); the saved checkpoints are intact."
        ]

    @property
    def locked(self) -> bool:
        """Whether this process holds the run's lock (it created or opened the run)."""
        return self._lock is not None

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _mkdir(self, d: Path) -> None:
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CheckpointError(
                f"Cannot create the run folder {d} ({exc.strerror or exc}): choose a writable folder."
            ) from exc

    def _write_marker(self, adopted: bool) -> None:
        info = {
            "format": MARKER_FORMAT,
            "version": MARKER_VERSION,
            "run_id": uuid.uuid4().hex,
            # to the microsecond: the Runs tab lists runs newest first, and two runs can start within a second
            "created": datetime.now().astimezone().isoformat(timespec="microseconds"),
            "app_version": __version__,
        }
        if adopted:
            info["adopted"] = True  # a run written before the marker existed, marked when it was resumed
        atomic_write_bytes(self.path / MARKER, (json.dumps(info, indent=2) + "\n").encode())

    def remove_temp_files(self) -> list[Path]:
        """Delete the temp files a killed save left here: the app's own temp names, and the names older
        versions gave temp files of run files. Only in a folder the marker proves ours, with the lock held."""
        return remove_temp_files(self.path, also=lambda name: _OLD_TEMP_RE.match(name) is not None)

    # ------------------------------------------------------------------ settings

    def config_file(self) -> Path | None:
        for name in (RUN_CONFIG, LEGACY_RUN_CONFIG):
            if (self.path / name).is_file():
                return self.path / name
        return None

    def write_config(self, config: TrainConfig) -> None:
        """config.toml (atomically), unless it already says exactly this."""
        text = config_toml(
            config, comment="The settings of this DDPM Studio run (rewritten when a resume changes one)."
        ).encode()
        write_if_changed(self.path / RUN_CONFIG, text)

    # ------------------------------------------------------------------ metrics log

    def _read_metrics(self) -> bytes:
        try:
            return self.metrics.read_bytes()
        except FileNotFoundError:
            return b""
        except OSError as exc:
            raise CheckpointError(f"{self.metrics} cannot be read ({exc.strerror or exc}).") from exc

    def _records(self, raw: bytes | None = None) -> list[tuple[str, dict | None]]:
        """(line, record or None when it does not parse) for every line of metrics.jsonl."""
        raw = self._read_metrics() if raw is None else raw
        out = []
        for line in raw.decode("utf-8", errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except (ValueError, RecursionError):
                rec = None  # a line cut by a crash
            ok = isinstance(rec, dict) and type(rec.get("step")) is int
            out.append((line, rec if ok else None))
        return out

    @staticmethod
    def _loss(rec: dict | None) -> float | None:
        loss = rec.get("loss") if rec is not None else None
        return float(loss) if isinstance(loss, int | float) and not isinstance(loss, bool) else None

    def logged(self) -> tuple[int, int]:
        """(number of logged losses, last logged step) in metrics.jsonl."""
        steps = [
            rec["step"] for _l, rec in self._records() if rec is not None and self._loss(rec) is not None
        ]
        return len(steps), max(steps, default=0)

    def history(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """The logged (steps, losses) up to `step`, the step being resumed. The log is cut back to it: losses
        logged after it, records of changes made when resuming at or after it (the state resumed does not
        include them) and a line cut by a crash are dropped. The file is rewritten only when one was."""
        raw = self._read_metrics()
        keep, steps, losses = [], [], []
        for line, rec in self._records(raw):
            if rec is None or rec["step"] > step or ("event" in rec and rec["step"] >= step):
                continue
            keep.append(line)
            loss = self._loss(rec)
            if loss is not None:
                steps.append(rec["step"])
                losses.append(loss)
        text = "".join(f"{line}\n" for line in keep).encode()
        if text != raw:
            atomic_write_bytes(self.metrics, text)
        return np.asarray(steps, np.int64), np.asarray(losses, np.float32)

    def log(self, rec: dict) -> None:
        try:
            with open(self.metrics, "a", encoding="utf-8") as f:
                f.write(json.dumps(rec) + "\n")
        except OSError:
            pass  # the log is a convenience; checkpoints report write errors

    def check_history(self) -> None:
        """HistoryWithoutCheckpoint when the run logged steps but has no checkpoint to resume them from."""
        if list_checkpoints(self.path):
            return
        n, last = self.logged()
        if not n:
            return
        cfg = self.config_file()
        what = f"{cfg.name} and {n}" if cfg else f"{n}"
        raise HistoryWithoutCheckpoint(
            f"{self.path} holds {what} logged steps up to step {last}, but no checkpoint (deleted, or never "
            "saved): restore the checkpoints to resume, or restart the run from step 0, which keeps that "
            "history in a metrics.<time>.jsonl file (ddpm-gui train --resume --restart)."
        )

    def set_aside_history(self) -> Path | None:
        """Rename metrics.jsonl to metrics.<time>.jsonl (never over another file): a restart from step 0."""
        if not self.metrics.is_file():
            return None
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for i in range(1, 1000):
            target = self.path / (f"metrics.{stamp}.jsonl" if i == 1 else f"metrics.{stamp}-{i}.jsonl")
            if not os.path.lexists(target):
                try:
                    os.replace(self.metrics, target)
                except OSError as exc:
                    raise CheckpointError(
                        f"Could not rename {self.metrics} ({exc.strerror or exc}): choose a writable run "
                        "folder."
                    ) from exc
                return target
        raise CheckpointError(f"Could not find a free name to keep {self.metrics}: tidy up the run folder.")

    # ------------------------------------------------------------------ checkpoints and previews

    def checkpoint_path(self, step: int) -> Path:
        return checkpoint_path(self.path, step)

    def list_checkpoints(self) -> list[tuple[int, Path]]:
        return list_checkpoints(self.path)

    def save_checkpoint(self, step: int, tensors: dict, meta: dict, keep: int, protect=()) -> Path:
        """Write the checkpoint of `step`, then prune all but the `keep` newest (never this one, nor those in
        `protect`)."""
        path = save_checkpoint(self.checkpoint_path(step), tensors, meta)
        prune_checkpoints(self.path, keep, protect=[path, *protect])
        return path

    def load_latest(self) -> tuple[Path, dict, dict, list[str]]:
        """(path, tensors, meta, notes) of the newest checkpoint that fully loads; newer ones that do not are
        set aside (renamed `.unreadable`: neither resumed nor pruned, kept for a person to look at)."""
        try:
            ckpt, tensors, meta, skipped = load_latest_checkpoint(self.path)
        except NewerVersionError:
            raise
        except CheckpointError as exc:
            raise CheckpointError(
                f"Nothing to resume in {self.path}: no checkpoint loads ({exc}). Start a new run folder."
            ) from None
        notes = fallback_notes(ckpt, skipped)
        for i, (p, _why) in enumerate(skipped):
            moved = set_aside(p)
            if moved is not None:
                notes[i] += f" It was renamed to {moved.name}."
        return ckpt, tensors, meta, notes

    def save_preview(self, step: int, png: bytes) -> None:
        try:
            atomic_write_bytes(self.samples / f"step_{step:08d}.png", png)
        except CheckpointError:
            pass  # a preview image is not worth stopping for


# ----------------------------------------------------------------------------- the training data


def data_fingerprint(data) -> dict:
    """What identifies a run's training data: image count and shape, and SHA-256 digests of the decoded
    uint8 images and of the labels (hashed in chunks: about a second per GB)."""
    images = np.ascontiguousarray(data.images)
    flat = images.reshape(-1)
    h = hashlib.sha256()
    for i in range(0, flat.size, 1 << 24):
        h.update(flat[i : i + (1 << 24)].data)
    labels = getattr(data, "labels", None)
    return {
        "count": int(images.shape[0]),
        "shape": [int(s) for s in images.shape[1:]],
        "images_sha256": h.hexdigest(),
        "labels_sha256": None
        if labels is None
        else hashlib.sha256(np.ascontiguousarray(labels, dtype=np.int64).data).hexdigest(),
    }


def data_change(old, new: dict) -> str | None:
    """What differs between two data fingerprints, in words; None when they match or the old one is missing
    or damaged (a checkpoint of a version that did not record it)."""
    keys = ("count", "shape", "images_sha256", "labels_sha256")
    if not isinstance(old, dict) or any(k not in old for k in keys) or old == new:
        return None
    if old["count"] != new["count"]:
        return f"it had {old['count']} images, now {new['count']}"
    if old["shape"] != new["shape"]:
        return f"its images were {'x'.join(map(str, old['shape']))}, now {'x'.join(map(str, new['shape']))}"
    what = [] if old["images_sha256"] == new["images_sha256"] else ["content"]
    if old["labels_sha256"] != new["labels_sha256"]:
        what.append("labels")
    return f"the same {new['count']} images, but their {' and '.join(what)} changed"


def resume_data_change(path: str | Path, data) -> str | None:
    """How `data` differs from the data the newest readable checkpoint of the run in `path` was trained on,
    in words (None: the same, or nothing recorded to compare with). Reads checkpoint headers only, so a
    caller can ask before resuming with `allow_data_change`."""
    ckpt, _problems = latest_checkpoint(run_path(path))
    if ckpt is None:
        return None
    try:
        recorded = read_meta(ckpt).get("data_fingerprint")
    except CheckpointError:
        return None
    return data_change(recorded, data_fingerprint(data))


def refuse_data_change(step: int, change: str) -> DataError:
    return DataError(
        f"The training data differs from the data this run was trained on up to step {step} ({change}): "
        "resume with the run's data, or allow the change (--allow-data-change)."
    )
