"""TensorBoard logs of a run (an optional extra: `pip install 'ddpm-gui[tensorboard]'`).

    RUN/tb/events.out.tfevents...     what `tensorboard --logdir RUN/tb` shows

A TensorBoard log is a mirror of the run's own records, never a second source: every scalar is a field of
a metrics.jsonl record (`record`, the one mapping from record keys to tags, TAGS) or of a quality-check
result the run keeps (engine/runs.py `quality_results`: quality/<figure>, written by the export), and every
image a preview grid as saved in samples/. A run trained with the `tensorboard` setting on writes the log live (TBMirror);
`export_tb` writes the same log afterwards from metrics.jsonl and samples/ for a run trained without it.

The writer is torch's own `torch.utils.tensorboard.SummaryWriter`, which needs the `tensorboard` package:
the package that also reads the log back (EventAccumulator) and shows it (`tensorboard --logdir`).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ddpm_gui.errors import ConfigError

TB_DIR = "tb"
# metrics.jsonl key -> TensorBoard tag
TAGS = {
    "loss": "loss/train",
    "loss_smooth": "loss/train_smoothed",
    "val": "val/total",
    "val_low": "val/low_noise",
    "val_mid": "val/mid_noise",
    "val_high": "val/high_noise",
    "lr": "train/lr",
    "img_per_s": "train/img_per_s",
    "batch_size": "train/batch_size",
}
PREVIEW_TAG = "preview"
INSTALL_HINT = "pip install 'ddpm-gui[tensorboard]'"
_PREVIEW_RE = re.compile(r"^step_(\d{8,})\.png$")


def tensorboard_available() -> bool:
    """Whether the tensorboard package (and so torch's SummaryWriter) can be imported."""
    try:
        require_tensorboard()
    except ConfigError:
        return False
    return True


def require_tensorboard():
    """torch's SummaryWriter class, or a ConfigError that says how to install it."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError(
            f"TensorBoard logging needs the tensorboard package: {INSTALL_HINT} (or turn the tensorboard "
            "setting off)."
        ) from None
    return SummaryWriter


def has_log(log_dir: str | Path) -> bool:
    """Whether `log_dir` already holds TensorBoard event files."""
    d = Path(log_dir)
    return d.is_dir() and any(p.name.startswith("events.out.tfevents.") for p in d.iterdir())


def _number(v) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


class TBLog:
    """A TensorBoard event writer that takes metrics.jsonl records and preview grids."""

    def __init__(self, log_dir: str | Path, purge_step: int | None = None):
        """`purge_step`: a resumed run's first new step; TensorBoard hides what an earlier session logged
        at or after it (the run's own log is cut back the same way)."""
        writer = require_tensorboard()
        self.log_dir = Path(log_dir)
        try:
            self.writer = writer(str(self.log_dir), purge_step=purge_step, flush_secs=10)
        except OSError as exc:
            raise ConfigError(
                f"Cannot write the TensorBoard log in {self.log_dir} ({exc.strerror or exc}): choose a "
                "writable folder."
            ) from None

    def record(self, rec: dict) -> int:
        """The scalars of one metrics.jsonl record (at its step, its time as the wall time); records of
        resume events carry none. Returns how many were written."""
        step = rec.get("step")
        if type(step) is not int or "event" in rec:
            return 0
        wall = _number(rec.get("time"))
        n = 0
        for key, tag in TAGS.items():
            v = _number(rec.get(key))
            if v is not None:
                self.writer.add_scalar(tag, v, step, walltime=wall)
                n += 1
        return n

    def quality(self, result: dict) -> int:
        """The figures of a quality-check result (EvalResult.to_dict(), as the run keeps it) at the step of
        the model it scored, as quality/<figure>. Returns how many were written."""
        step, wall = int(result["model_step"]), _number(result.get("time"))
        n = 0
        for key, v in result.items():
            if key not in ("model_step", "time") and _number(v) is not None:
                self.writer.add_scalar(f"quality/{key}", float(v), step, walltime=wall)
                n += 1
        return n

    def image(self, step: int, grid: np.ndarray, walltime: float | None = None) -> None:
        """A preview grid, (H, W, 3) uint8."""
        self.writer.add_image(PREVIEW_TAG, np.asarray(grid), step, dataformats="HWC", walltime=walltime)

    def close(self) -> None:
        self.writer.close()


class TBMirror(TBLog):
    """The live log of a training run: opened at the step the run starts from. A resumed run whose log
    holds nothing yet (trained without it until now) first gets its history up to that step."""

    @classmethod
    def open(cls, run_dir: str | Path, step: int) -> TBMirror:
        log_dir = Path(run_dir) / TB_DIR
        if not has_log(log_dir):
            mirror = cls(log_dir)
            if step > 0:
                _write_history(mirror, Path(run_dir), upto=step)
            return mirror
        # what an earlier session logged after this step (or all of it, for a run restarted from step 0)
        return cls(log_dir, purge_step=step + 1 if step > 0 else 0)


def _write_history(log: TBLog, run_dir: Path, upto: int | None = None) -> tuple[int, int]:
    """Every record of RUN/metrics.jsonl, every quality-check result the run keeps and every preview in
    RUN/samples (up to step `upto`) into `log`; returns (scalars, images) written."""
    import json

    from PIL import Image

    from ddpm_gui.engine.runs import quality_results

    scalars = images = 0
    try:
        text = (run_dir / "metrics.jsonl").read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        text = ""
    except OSError as exc:
        raise ConfigError(f"{run_dir / 'metrics.jsonl'} cannot be read ({exc.strerror or exc}).") from None
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except (ValueError, RecursionError):
            continue  # a line cut by a crash
        if isinstance(rec, dict) and (upto is None or (type(rec.get("step")) is int and rec["step"] <= upto)):
            scalars += log.record(rec)
    for res in quality_results(run_dir):
        if upto is None or res["model_step"] <= upto:
            scalars += log.quality(res)
    samples = run_dir / "samples"
    for p in sorted(samples.iterdir()) if samples.is_dir() else []:
        m = _PREVIEW_RE.match(p.name)
        if not m or (upto is not None and int(m.group(1)) > upto):
            continue
        try:
            with Image.open(p) as im:
                grid = np.asarray(im.convert("RGB"))
        except OSError:
            continue  # a damaged preview is not worth stopping the export for
        log.image(int(m.group(1)), grid, walltime=p.stat().st_mtime)
        images += 1
    return scalars, images


def export_tb(run_dir: str | Path, out: str | Path | None = None) -> tuple[Path, int, int]:
    """Write the TensorBoard log of a run from its metrics.jsonl and preview grids, into `out` (default
    RUN/tb), which must not hold a log already. Returns (log folder, scalars, images)."""
    from ddpm_gui.engine.runfolder import is_run_dir, run_path

    run = run_path(run_dir)
    if not is_run_dir(run):
        raise ConfigError(f"{run} is not a DDPM Studio run folder: give the folder a training run wrote.")
    log_dir = Path(out).expanduser() if out is not None else run / TB_DIR
    if log_dir.exists() and not log_dir.is_dir():
        raise ConfigError(f"{log_dir} is not a folder: give a folder for the TensorBoard log (--out).")
    if has_log(log_dir):
        raise ConfigError(
            f"{log_dir} already holds a TensorBoard log: give another folder (--out), so that no step is "
            "shown twice."
        )
    log = TBLog(log_dir)
    try:
        scalars, images = _write_history(log, run)
    finally:
        log.close()
    return log_dir, scalars, images
