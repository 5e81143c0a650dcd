"""A local run on several GPUs for the Train tab: torchrun as a child process (one process per GPU, DDP; see
engine/distributed.py), followed through the run folder its rank 0 writes. No Qt here: it offers the
Trainer's face that the Train tab's worker iterates (run() yields engine events; stop()).

    n = gpus_offered()                   # > 1: the tab shows "GPUs: n"
    run = MultiGpuRun(cfg, run_dir, n)   # then, in the worker thread: for e in run.run(): ...
    run.stop()                           # every rank stops at the next loss read; rank 0 saves a checkpoint
"""

from __future__ import annotations

import json
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ddpm_gui.engine import events as ev
from ddpm_gui.engine.config import RESUMABLE, SETTINGS, TrainConfig, config_toml, load_run_config


def gpus_offered(count: int | None = None) -> int:
    """How many GPUs the Train tab offers to train on at once: the CUDA devices when more than one, else 0
    (no choice to show). `count`: the device count (default: torch's)."""
    if count is None:
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return count if count > 1 else 0


def _flag_value(v) -> str:
    return repr(v) if isinstance(v, float) else str(v)


class MultiGpuRun:
    """`nproc` processes training `cfg` in `run_dir` (new, or resumed with the settings that may change)."""

    def __init__(self, cfg: TrainConfig, run_dir: str | Path, nproc: int, resume: bool = False,
                 poll_s: float = 0.5):  # fmt: skip
        self.cfg, self.run_dir, self.nproc, self.resume = cfg, Path(run_dir), nproc, resume
        self.poll_s = poll_s
        self.proc: subprocess.Popen | None = None
        self.last_checkpoint: Path | None = None
        self.paused = False  # pausing is not offered: the processes wait on each other
        self._stopping = False
        self._tmp = tempfile.TemporaryDirectory(prefix="ddpm-gui-multi-")

    def train_args(self) -> list[str]:
        """The `ddpm-gui train` arguments: a new run's settings as a TOML file; a resumed run's changes."""
        args = ["train", "--out", str(self.run_dir)]
        if not self.resume:
            path = Path(self._tmp.name) / "settings.toml"
            path.write_text(config_toml(self.cfg), encoding="utf-8")
            return [*args, "--config", str(path)]
        saved = load_run_config(self.run_dir)
        args.append("--resume")
        for name in sorted(RESUMABLE):
            new, old = getattr(self.cfg, name), getattr(saved, name)
            if new == old or new is None:
                continue
            s = SETTINGS[name]
            args += [s.flag if new else s.negative] if isinstance(new, bool) else [s.flag, _flag_value(new)]
        return args

    def stop(self) -> None:
        """Ctrl+C for torchrun, which passes it to every process: they stop at the same step and rank 0
        saves a checkpoint."""
        if self._stopping:  # once: a second one would make torchrun end them without a checkpoint
            return
        self._stopping = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)

    def pause(self) -> None:
        return None

    def run(self) -> Iterator[ev.Event]:
        from ddpm_gui.engine.distributed import torchrun_command

        log = Path(self._tmp.name) / "stderr.txt"
        with open(log, "wb") as err:
            self.proc = subprocess.Popen(torchrun_command(self.nproc, self.train_args()), stdout=subprocess.DEVNULL,
                                         stderr=err, start_new_session=True)  # fmt: skip
        yield self._started()
        follow = _Follower(self.run_dir, self.cfg)
        while self.proc.poll() is None:
            time.sleep(self.poll_s)
            yield from follow.events()
        yield from follow.events()
        self.last_checkpoint = follow.last_checkpoint
        ckpt = str(follow.last_checkpoint) if follow.last_checkpoint else None
        if self.proc.returncode == 0:
            reason = "completed" if follow.step >= self.cfg.steps else "stopped"
            yield ev.Finished(follow.step, str(self.run_dir), reason, ckpt)
        elif self._stopping and ckpt and follow.last_checkpoint_step == follow.step:
            yield ev.Finished(follow.step, str(self.run_dir), "stopped", ckpt)
        else:
            errors = [
                ln[7:] for ln in log.read_text("utf-8", "replace").splitlines() if ln.startswith("error: ")
            ]
            msg = (
                errors[0]
                if errors
                else f"The {self.nproc} training processes ended (exit code {self.proc.returncode})."
            )
            yield ev.Failed(msg, follow.step, ckpt)
        self._tmp.cleanup()

    def _started(self) -> ev.Started:
        from ddpm_gui.models.presets import build_model, count_parameters, get_preset

        try:
            n_params = count_parameters(build_model(get_preset(self.cfg.preset)))
        except Exception:
            n_params = 0
        return ev.Started(step=0, total_steps=self.cfg.steps, device=f"{self.nproc} GPUs (DDP)", n_params=n_params,
                          flops_per_image=None, dataset=self.cfg.data, n_images=0, run_dir=str(self.run_dir),
                          resumed=self.resume, batch_size=self.cfg.batch_size)  # fmt: skip


class _Follower:
    """What rank 0 wrote since the last look: loss records (Progress), checkpoints (CheckpointSaved)."""

    def __init__(self, run_dir: Path, cfg: TrainConfig):
        self.run_dir, self.cfg = run_dir, cfg
        self.offset = 0
        self.step = 0
        self.t0 = time.monotonic()
        self.seen: set[Path] = set(self._checkpoints())
        self.last_checkpoint: Path | None = max(self.seen, default=None)
        self.last_checkpoint_step = int(self.last_checkpoint.stem[5:]) if self.last_checkpoint else -1

    def _checkpoints(self) -> list[Path]:
        return sorted((self.run_dir / "checkpoints").glob("step_*.safetensors"))

    def events(self) -> Iterator[ev.Event]:
        recs = self._new_records()
        losses = [r for r in recs if isinstance(r.get("loss"), float) and isinstance(r.get("step"), int)]
        if losses:
            last = losses[-1]
            self.step = last["step"]
            rate = float(last.get("img_per_s") or 0.0)
            eta = (self.cfg.steps - self.step) * self.cfg.batch_size / rate if rate > 0 else float("nan")
            yield ev.Progress(self.step, self.cfg.steps, last["loss"], float(last.get("loss_smooth", last["loss"])),
                              rate, eta, time.monotonic() - self.t0, int(last.get("batch_size") or 0),
                              float(last.get("lr") or 0.0), np.asarray([r["step"] for r in losses], np.int64),
                              np.asarray([r["loss"] for r in losses], np.float32))  # fmt: skip
        for path in self._checkpoints():
            if path not in self.seen:
                self.seen.add(path)
                self.last_checkpoint, self.last_checkpoint_step = path, int(path.stem[5:])
                yield ev.CheckpointSaved(self.last_checkpoint_step, str(path))

    def _new_records(self) -> list[dict]:
        """The complete lines appended to metrics.jsonl since the last look (a half-written one waits)."""
        try:
            with open(self.run_dir / "metrics.jsonl", "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except OSError:
            return []
        end = chunk.rfind(b"\n") + 1
        self.offset += end
        out = []
        for line in chunk[:end].splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                out.append(rec)
        return out
