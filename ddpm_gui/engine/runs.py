"""The runs of a runs folder, read while other processes write them: what each run is (settings, status,
steps, validation loss, quality figures, date), its metrics followed as they grow, and how runs differ; and a
run forked from one of its kept checkpoints (`fork_run`).

Everything here only reads, but `fork_run`, which writes only in a new run folder. A run being trained by
another process (the CLI, another window) is followed without disturbing it: its lock is never taken (whether
it is held is read from the kernel's lock table), metrics.jsonl is read incrementally (`MetricsReader`: only
new complete lines, a half-written last line is read once it is complete, a log cut back on resume is read
again from the start), and files in the middle of an atomic write (engine/fileio.py temp names) are never
listed.

Status of a run:
    running    its lock is held (or, where locks cannot be seen, its metrics grew in the last GROWING_S
               seconds and the process that locked it is alive)
    failed     the last thing logged is a failure record (`failure_record`, written by the trainer)
    finished   it reached its configured number of steps
    stopped    none of these: stopped before the end (Stop, Ctrl+C, a killed process)
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from ddpm_gui.engine.checkpoint import CKPT_RE, checkpoint_dir, list_checkpoints
from ddpm_gui.engine.config import SETTINGS, TrainConfig, load_run_config
from ddpm_gui.engine.fileio import atomic_write_bytes, is_own_temp
from ddpm_gui.engine.runfolder import MARKER, METRICS, RunFolder, is_run_dir
from ddpm_gui.errors import CheckpointError, ConfigError, DDPMError

RUNNING, FINISHED, STOPPED, FAILED = "running", "finished", "stopped", "failed"
FAILED_EVENT = "failed"  # the "event" of the record a failed run ends with
GROWING_S = 30.0  # metrics written this recently by a live process: running, where locks cannot be seen
EVALS = "evals"  # <run>/evals/*.json: quality-check results (EvalResult.to_dict()), also *.json in the run
FORK_NAME = "{run}-from-{step}"  # the folder a run forked from an older checkpoint gets, beside the run
_PREVIEW_RE = CKPT_RE.pattern.replace("safetensors", "png")


def default_runs_root() -> Path:
    """Where the app puts new runs (and the training queue) unless told otherwise."""
    return Path.home() / "DDPM Studio" / "runs"


def failure_record(step: int, message: str) -> dict:
    """The metrics.jsonl record a run that failed ends with. A resume cuts it away with the rest of the log
    after the resumed step, so a run that went on is no longer 'failed'."""
    return {"step": int(step), "event": FAILED_EVENT, "message": str(message), "time": time.time()}


# ----------------------------------------------------------------------------- metrics, followed


def _record(line: bytes) -> dict | None:
    try:
        rec = json.loads(line)
    except (ValueError, RecursionError):
        return None  # a damaged line (a crash mid-write long ago): skipped
    return rec if isinstance(rec, dict) and type(rec.get("step")) is int else None


def _number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def loss_of(rec: dict) -> float | None:
    """The training loss a record holds (None: an event, a validation record or a damaged value)."""
    loss = rec.get("loss")
    if isinstance(loss, bool) or not isinstance(loss, int | float) or "event" in rec:
        return None
    if any(k.startswith("val") for k in rec):
        return None
    return float(loss)


class MetricsReader:
    """Follows one metrics.jsonl appended to by another process. `poll()` returns (new records, reset):
    only lines complete since the last poll (a half-written last line waits for its newline); `reset` is
    True when the file was replaced or shrank (a resume cuts the log back; a restart sets it aside), and the
    records are then the whole new file. Reads only; never takes the run's lock."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._offset = 0
        self._ident: tuple[int, int] | None = None

    def poll(self) -> tuple[list[dict], bool]:
        try:
            f = open(self.path, "rb")
        except FileNotFoundError:
            reset = self._ident is not None
            self._offset, self._ident = 0, None
            return [], reset
        except OSError:
            return [], False
        with f:
            st = os.fstat(f.fileno())
            ident = (st.st_dev, st.st_ino)
            reset = False
            if ident != self._ident or st.st_size < self._offset:
                reset = self._ident is not None
                self._offset, self._ident = 0, ident
            if st.st_size <= self._offset:
                return [], reset
            f.seek(self._offset)
            chunk = f.read(st.st_size - self._offset)
        end = chunk.rfind(b"\n")
        if end < 0:
            return [], reset  # only a half-written line so far
        self._offset += end + 1
        recs = [_record(line) for line in chunk[: end + 1].splitlines() if line.strip()]
        return [r for r in recs if r is not None], reset


@dataclass
class RunMetrics:
    """What a run's metrics.jsonl says, kept up to date by `update()` (incremental)."""

    path: Path
    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smooth: list[float] = field(default_factory=list)  # the trainer's own smoothed loss, where logged
    val: list[dict] = field(default_factory=list)  # validation records ("val..." keys)
    events: list[dict] = field(default_factory=list)  # settings changed on resume, data changes, failure
    last_time: float | None = None  # the "time" of the newest loss record

    def __post_init__(self):
        self._reader = MetricsReader(self.path)

    @classmethod
    def of(cls, run_dir: str | Path) -> RunMetrics:
        m = cls(Path(run_dir) / METRICS)
        m.update()
        return m

    def update(self) -> bool:
        """Read what was appended since the last call; True when anything changed."""
        recs, reset = self._reader.poll()
        if reset:
            self.steps, self.losses, self.smooth, self.val, self.events = [], [], [], [], []
            self.last_time = None
        for rec in recs:
            loss = loss_of(rec)
            if loss is not None:
                self.steps.append(rec["step"])
                self.losses.append(loss)
                s = rec.get("loss_smooth")
                self.smooth.append(
                    float(s) if isinstance(s, int | float) and not isinstance(s, bool) else loss
                )
                t = rec.get("time")
                self.last_time = float(t) if isinstance(t, int | float) else self.last_time
            elif "event" in rec:
                self.events.append(rec)
            elif any(k.startswith("val") for k in rec):
                self.val.append(rec)
        return bool(recs) or reset

    def curve(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(steps, losses, smoothed losses) as arrays."""
        return (
            np.asarray(self.steps, np.int64),
            np.asarray(self.losses, np.float64),
            np.asarray(self.smooth, np.float64),
        )

    def val_curve(self) -> tuple[np.ndarray, np.ndarray]:
        """(steps, validation losses) of the validation records, as arrays."""
        pts = [(r["step"], float(r["val"])) for r in self.val if _number(r.get("val"))]
        return np.asarray([p[0] for p in pts], np.int64), np.asarray([p[1] for p in pts], np.float64)

    @property
    def last_step(self) -> int:
        return max(self.steps[-1] if self.steps else 0, max((e["step"] for e in self.events), default=0))

    @property
    def failure(self) -> dict | None:
        """The failure record the log ends with (no loss logged after it), else None."""
        for e in reversed(self.events):
            if e.get("event") == FAILED_EVENT:
                return e if not self.steps or self.steps[-1] <= e["step"] else None
        return None


# ----------------------------------------------------------------------------- one run


def lock_holder(run_dir: str | Path) -> bool | None:
    """Whether a process holds the run's lock (flock on `.lock`), read from /proc/locks without touching the
    lock: True, False, or None where the kernel's lock table cannot be read (not Linux)."""
    lock = Path(run_dir) / ".lock"
    try:
        st = os.stat(lock)
    except OSError:
        return False  # never locked
    try:
        table = Path("/proc/locks").read_text()
    except OSError:
        return None
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    pid = _lock_pid(lock)
    for line in table.splitlines():
        parts = line.split()
        if len(parts) >= 6 and parts[1] == "FLOCK":
            where, who = parts[5], parts[4]
            # the device of a file on an overlay file system may be shown as the lower one's: the inode and
            # the locking process (the pid the lock file holds) identify it then
            if where == dev or (where.endswith(f":{st.st_ino}") and who == str(pid)):
                return True
    return False


def _lock_pid(lock: Path) -> int | None:
    try:
        text = lock.read_bytes()[:64].decode(errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _alive(pid: int | None) -> bool:
    if pid is None or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def previews(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of the preview grids in samples/, oldest first (files mid-write are not listed)."""
    pat = re.compile(_PREVIEW_RE)
    try:
        entries = list(os.scandir(Path(run_dir) / "samples"))
    except OSError:
        return []
    out = []
    for e in entries:
        m = pat.match(e.name)
        if m and not is_own_temp(e.name):
            try:
                if e.is_file(follow_symlinks=False):
                    out.append((int(m.group(1)), Path(e.path)))
            except OSError:
                pass
    return sorted(out)


def checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of the kept checkpoints, oldest first; a checkpoint being written (its temp file) is not
    one yet."""
    return [(s, p) for s, p in list_checkpoints(run_dir) if not is_own_temp(p.name)]


def run_of_checkpoint(path: str | Path) -> Path | None:
    """The run folder a model file belongs to: `path` itself when it is a run folder, the run of a checkpoint
    in a run's checkpoints/ folder; None for anything else (a checkpoint copied elsewhere)."""
    p = Path(path).expanduser()
    for cand in (p, p.parent.parent):
        try:
            if (cand == p or p.parent == checkpoint_dir(cand)) and is_run_dir(cand):
                return cand
        except (OSError, DDPMError):
            continue
    return None


QUALITY_KEYS = ("frechet_distance", "model_step")


def quality_results(run_dir: str | Path) -> list[dict]:
    """The quality-check results a run holds (EvalResult.to_dict() JSON files in the run folder or its
    evals/ folder, as `ddpm-gui eval` and the Train tab keep them: record_eval), by the step of the model
    they scored, then by when they were recorded."""
    run = Path(run_dir)
    found = []
    for d in (run, run / EVALS):
        try:
            names = sorted(e.name for e in os.scandir(d) if e.name.endswith(".json") and e.is_file())
        except OSError:
            continue
        for name in names:
            try:
                d_ = json.loads((d / name).read_bytes())
            except (OSError, ValueError, RecursionError):
                continue
            if isinstance(d_, dict) and all(isinstance(d_.get(k), int | float) for k in QUALITY_KEYS):
                found.append(d_)
    return sorted(found, key=lambda r: (r["model_step"], r["time"] if _number(r.get("time")) else 0.0))


def val_text(rec: dict | None) -> str:
    """A validation record in a few characters: its loss and step."""
    return f"{rec['val']:.4g} @{int(rec['step']):,}" if rec else ""


def quality_text(res: dict | None) -> str:
    """One quality result in a few characters: the Fréchet distance, and the headline accuracy."""
    if not res:
        return ""
    text = f"FD {res['frechet_distance']:.3g}"
    acc = res.get("sample_accuracy")
    if isinstance(acc, int | float) and math.isfinite(acc):
        text += f", {100 * acc:.0f}%"
    return text + f" @{int(res['model_step']):,}"


@dataclass
class RunInfo:
    """One run folder as the Runs tab lists it."""

    path: Path
    status: str
    config: TrainConfig | None
    error: str = ""  # why the settings could not be read, or the failure message
    step: int = 0  # the furthest step reached (logged or checkpointed)
    last_loss: float | None = None
    quality_last: dict | None = None
    quality_best: dict | None = None  # the lowest Fréchet distance
    evals: list[dict] = field(default_factory=list)  # every quality result kept in the run, by model step
    val_last: dict | None = None  # the newest validation record ({"step", "val", "val_low", ...})
    val_best: dict | None = None  # the validation record with the lowest "val"
    created: float = 0.0  # seconds since the epoch
    updated: float = 0.0  # when the metrics (or the config) last changed
    checkpoints: list[tuple[int, Path]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def total_steps(self) -> int | None:
        return self.config.steps if self.config is not None else None

    @property
    def preset(self) -> str:
        return self.config.preset if self.config is not None else "?"

    @property
    def data(self) -> str:
        return self.config.data if self.config is not None else "?"


def _created(run: Path) -> float:
    try:
        created = str(json.loads((run / MARKER).read_bytes())["created"])
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        created = ""
    try:  # ISO 8601 with microseconds and the UTC offset; older markers: to the second, "+0100"
        return datetime.fromisoformat(created).timestamp()
    except (ValueError, OverflowError, OSError):
        pass
    try:
        return time.mktime(time.strptime(created[:19], "%Y-%m-%dT%H:%M:%S"))
    except (ValueError, OverflowError):
        pass
    for name in ("config.toml", "config.json", METRICS):
        try:
            return (run / name).stat().st_mtime
        except OSError:
            continue
    return 0.0


def read_run(run_dir: str | Path, metrics: RunMetrics | None = None) -> RunInfo:
    """What a run folder says now. `metrics`: the run's RunMetrics kept by a caller that follows it (brought
    up to date here); else the log is read whole."""
    run = Path(run_dir)
    if metrics is None:
        metrics = RunMetrics.of(run)
    else:
        metrics.update()
    try:
        config, error = load_run_config(run), ""
    except DDPMError as exc:
        config, error = None, str(exc)
    kept = checkpoints(run)
    step = max(metrics.last_step, kept[-1][0] if kept else 0)
    try:
        updated = (run / METRICS).stat().st_mtime
    except OSError:
        updated = _created(run)
    evals = quality_results(run)
    vals = [r for r in metrics.val if _number(r.get("val"))]
    info = RunInfo(
        path=run, status=STOPPED, config=config, error=error, step=step,
        last_loss=metrics.losses[-1] if metrics.losses else None,
        quality_last=evals[-1] if evals else None,
        quality_best=min(evals, key=lambda r: r["frechet_distance"]) if evals else None, evals=evals,
        val_last=vals[-1] if vals else None, val_best=min(vals, key=lambda r: r["val"]) if vals else None,
        created=_created(run), updated=updated, checkpoints=kept,
    )  # fmt: skip
    info.status = _status(run, info, metrics)
    if info.status == FAILED and metrics.failure is not None:
        info.error = str(metrics.failure.get("message", ""))
    return info


def _status(run: Path, info: RunInfo, metrics: RunMetrics) -> str:
    held = lock_holder(run)
    if held:
        return RUNNING
    done = info.total_steps is not None and info.step >= info.total_steps
    if metrics.failure is None and not done:
        pid = _lock_pid(run / ".lock")
        growing = time.time() - info.updated < GROWING_S and _alive(pid)
        if growing and (held is None or pid != os.getpid()):
            return RUNNING  # a live process writes it, on a file system whose locks are not shown
    if metrics.failure is not None:
        return FAILED
    return FINISHED if done else STOPPED


def run_dirs(folder: str | Path) -> list[Path]:
    """The run folders directly in `folder` (and `folder` itself when it is one), by name."""
    root = Path(folder).expanduser()
    try:
        children = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []
    found = [root] if is_run_dir(root) else []
    return found + [p for p in children if is_run_dir(p)]


def scan_runs(folder: str | Path) -> list[RunInfo]:
    """Every run in a runs folder, newest first."""
    return sorted((read_run(p) for p in run_dirs(folder)), key=lambda r: r.created, reverse=True)


# ----------------------------------------------------------------------------- a run forked from a checkpoint


def free_path(folder: Path, stem: str, suffix: str = "") -> Path:
    """folder/<stem><suffix>, else <stem>-2<suffix>, -3...: the first name nothing holds yet."""
    for i in range(1, 10000):
        cand = folder / (f"{stem}{suffix}" if i == 1 else f"{stem}-{i}{suffix}")
        if not os.path.lexists(cand):
            return cand
    raise ConfigError(f"No free name for {stem}{suffix} in {folder}: tidy that folder up.")


def fork_run(run_dir: str | Path, step: int, dest: str | Path | None = None) -> Path:
    """A new run that goes on from the kept checkpoint of `step` of `run_dir`: in `dest` (new or empty; by
    default <run>-from-<step> beside it), a new run folder with the run's settings file, that checkpoint, and
    its metrics log as a resume at `step` cuts it back (RunFolder.history). Resume it as any run. The original
    run is only read; a fork that fails half-way is removed again. Returns the new run folder."""
    run = Path(run_dir).expanduser()
    if not is_run_dir(run):
        raise CheckpointError(f"{run} is not a DDPM Studio run folder: choose a run to fork.")
    kept = dict(checkpoints(run))
    if step not in kept:
        have = ", ".join(f"{s:,}" for s in kept) or "none"
        raise CheckpointError(
            f"{run.name} keeps no checkpoint of step {step:,} (it keeps: {have}): pick one of those."
        )
    settings = RunFolder(run).config_file()
    if settings is None:
        raise ConfigError(f"{run} has no settings file to fork: resume it instead.")
    name = FORK_NAME.format(run=run.name, step=int(step))
    new = RunFolder(Path(dest).expanduser() if dest is not None else free_path(run.parent, name))
    made = not new.path.exists()
    new.create()  # refuses a folder that is neither new nor empty
    try:
        atomic_write_bytes(new.path / settings.name, _read(settings))
        atomic_write_bytes(new.checkpoint_path(step), _read(kept[step]))
        atomic_write_bytes(new.metrics, _read(run / METRICS, missing_ok=True))
        new.history(step)
    except BaseException:
        _remove_fork(new, settings.name, step, made)
        raise
    finally:
        new.release()
    return new.path


def _read(path: Path, missing_ok: bool = False) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        if missing_ok:
            return b""
        raise CheckpointError(
            f"{path} is gone (pruned by the training meanwhile?): pick a checkpoint the run still keeps."
        ) from None
    except OSError as exc:
        raise CheckpointError(f"{path} cannot be read ({exc.strerror or exc}).") from None


def _remove_fork(new: RunFolder, settings_name: str, step: int, made: bool) -> None:
    """Delete what fork_run wrote (those names only) and its folders when empty (the run folder itself only
    when fork_run `made` it)."""
    names = (new.checkpoint_path(step), new.metrics, new.path / settings_name, new.path / MARKER)
    for p in (*names, new.path / ".lock"):
        with contextlib.suppress(OSError):
            p.unlink(missing_ok=True)
    new.remove_temp_files()
    for d in (new.checkpoints, new.samples, new.path) if made else (new.checkpoints, new.samples):
        with contextlib.suppress(OSError):
            d.rmdir()


# ----------------------------------------------------------------------------- comparing runs


def setting_text(name: str, value) -> str:
    """A setting's value as the Runs tab shows it (a schedule by its preset name where it is one)."""
    if name == "schedule":
        from ddpm_gui.core.spec import SCHEDULE_PRESETS

        for preset, s in SCHEDULE_PRESETS.items():
            if s == value:
                return preset
        d = value.to_dict()
        return ", ".join(f"{k}={v}" for k, v in d.items())
    if value is None:
        return "—"
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class DiffRow:
    name: str  # the TrainConfig field
    label: str  # the Train tab's label
    values: tuple[str, ...]  # one per run, in the order given ("?" where the run's settings are unreadable)


def settings_diff(runs: Iterable[RunInfo | TrainConfig | None]) -> list[DiffRow]:
    """The settings that differ between the runs (RunInfo or TrainConfig), in the Train tab's order."""
    configs = [r.config if isinstance(r, RunInfo) else r for r in runs]
    rows = []
    for name, s in SETTINGS.items():
        values = tuple("?" if c is None else setting_text(name, getattr(c, name)) for c in configs)
        if len(set(values)) > 1:
            rows.append(DiffRow(name, s.label, values))
    return rows


def common_step(step_lists: Iterable[Iterable[int]]) -> int | None:
    """The newest step every run has a preview of (None: none in common)."""
    sets = [set(s) for s in step_lists]
    if not sets:
        return None
    both = set.intersection(*sets)
    return max(both) if both else None


def nearest_preview(run_dir: str | Path, step: int) -> tuple[int, Path] | None:
    """The preview grid of a run at `step`, else the newest one before it, else the first one."""
    grids = previews(run_dir)
    before = [g for g in grids if g[0] <= step]
    return before[-1] if before else (grids[0] if grids else None)


def timestep_loss(checkpoint: str | Path) -> np.ndarray | None:
    """The mean loss per timestep (the trainer's running statistics, nan where unseen) a checkpoint holds;
    None when it holds none or cannot be read (pruned meanwhile)."""
    from safetensors import safe_open

    try:
        with safe_open(str(checkpoint), framework="numpy") as f:
            keys = set(f.keys())
            if not {"stats.t_loss_sum", "stats.t_loss_cnt"} <= keys:
                return None
            s = f.get_tensor("stats.t_loss_sum").astype(np.float64)
            c = f.get_tensor("stats.t_loss_cnt").astype(np.float64)
    except Exception:  # safetensors raises its own error types for a truncated or vanished file
        return None
    return np.divide(s, c, out=np.full(s.shape, np.nan), where=c > 0)


def learning_frames(
    ckpts: list[tuple[int, Path]],
    n: int = 16,
    seed: int = 0,
    steps: int = 20,
    device: str = "auto",
    stop=None,
) -> Iterator[tuple[int, np.ndarray]]:
    """(step, images (n, H, W, 3) uint8) for each checkpoint: the same fixed noise sampled through each
    (DDIM, `steps` steps), so the images show what the model learnt between them. A checkpoint that cannot
    be loaded (pruned meanwhile) is skipped."""
    from ddpm_gui.engine.sampler import SampleConfig, load_bundle, sample_images
    from ddpm_gui.errors import CheckpointError

    cfg = SampleConfig(n=n, sampler="ddim", steps=steps, seed=seed)
    for step, path in ckpts:
        if stop is not None and stop.is_set():
            return
        try:
            bundle = load_bundle(path, device=device)
        except CheckpointError:
            continue
        yield step, sample_images(bundle, cfg)
