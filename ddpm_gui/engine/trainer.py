"""The Trainer: the tutorial's training loop made live, resumable and safe. No Qt.

    trainer = Trainer(config, run_dir)
    for event in trainer.run(): ...          # events.py; the generator does all the work
    trainer.pause() / resume() / stop()      # from any thread: threading.Events, not signals
    trainer.request_step(), change_settings()  # while paused: one step at a time, live edits (control.py)

The model, optimizer and one step are the Learner's (learner.py); the Trainer adds the run folder
(runfolder.py), resuming, the events and the loop, which reads the loss from the device only every
`log_every` steps.

Safety (see docs/reliability.md): the run folder is locked, and only files the app wrote are ever deleted or
rewritten; checkpoints carry digests; a non-finite loss or gradient never reaches the weights, the EMA or a
checkpoint (on the CPU it is checked every step, where a read costs nothing; on CUDA the fused AdamW skips
the update on the device and the run stops at the next read); out of memory in the forward/backward pass
(CUDA, MPS or the CPU's allocator) halves the batch and goes on; stop() ends with a checkpoint; resume
continues step, optimizer, EMA, RNG, batch size and loss curve exactly, takes the settings that may change
(lr, steps, batch size, ...) and records them, and refuses other settings or other training data.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ddpm_gui.engine import distributed, init_weights, tb
from ddpm_gui.engine import events as ev
from ddpm_gui.engine import validation as val
from ddpm_gui.engine.async_save import BackgroundCheckpoints, BackgroundWriter, snapshot
from ddpm_gui.engine.config import TrainConfig, load_run_config
from ddpm_gui.engine.control import RunControl
from ddpm_gui.engine.device import ThreadChooser, device_label
from ddpm_gui.engine.fileio import WriteFailed, write_advice
from ddpm_gui.engine.fits import check_fits, settings_changes
from ddpm_gui.engine.images import make_grid, png_bytes
from ddpm_gui.engine.learner import Learner, NonFiniteStep, free_cached_memory, is_oom
from ddpm_gui.engine.runfolder import RunFolder, data_change, refuse_data_change
from ddpm_gui.engine.runs import failure_record
from ddpm_gui.engine.text import fmt_duration
from ddpm_gui.errors import ConfigError, DDPMError

__all__ = ["NonFiniteStep", "Trainer", "is_oom"]


@dataclass
class _Loop:
    """What the training loop keeps between steps."""

    t0: float  # when the loop started (monotonic)
    last_ckpt_t: float
    logged_to: int  # the last step the resumed history had logged
    pending: list[tuple[int, torch.Tensor]] = field(default_factory=list)  # losses not read yet
    told_estimate: bool = False
    due_ckpt: bool = False
    due_preview: bool = False
    due_val: bool = False
    told_val_cost: bool = False
    reads: int = 0  # loss reads so far in this session: the first ones also draw the loss by timestep
    previewed: bool = False  # a preview was drawn in this session
    threads_checked: float = 0.0  # when the CPU thread count was last re-checked (monotonic)
    stop_agreed: bool = False  # several processes: a stop all of them agreed on at a loss read


class Trainer(RunControl, BackgroundCheckpoints, Learner):
    def __init__(
        self,
        config: TrainConfig,
        run_dir: str | Path,
        resume: bool = False,
        data=None,
        data_progress: Callable[[int, int, str], None] | None = None,
        restart: bool = False,
        allow_data_change: bool = False,
    ):
        """`resume`: continue the run in `run_dir` from its newest checkpoint. `restart`: the run's
        checkpoints are gone: train it again from step 0, keeping its old metrics. `allow_data_change`: go on
        although the training data differs from the run's (with a warning, recorded in the run)."""
        super().__init__(config, data, data_progress)
        self.folder = RunFolder(run_dir)  # a ConfigError for an empty path, before anything runs
        self.run_dir = self.folder.path
        self.source = f"training run {self.run_dir}"
        self.resume_requested = resume or restart
        self.restart = restart
        self.allow_data_change = allow_data_change
        self._init_control()
        self.last_checkpoint: Path | None = None
        # periodic checkpoints written by a worker thread from a snapshot: None = on CUDA (where a synchronous
        # write stalls the GPU for seconds), off on the CPU (where the write is small beside the steps).
        # The last checkpoint of a run is always written before Finished.
        self.background_checkpoints: bool | None = None
        self._writer = BackgroundWriter()
        self._told_compile = False
        self._pending_events: list[ev.Event] = []  # CheckpointSaved of background writes not yet yielded
        # fault injection for tests (reliability): called with the step number before each step
        self.fault_hook: Callable[[int], None] | None = None
        self._started = False  # past setup: a failure from now on is not the input's
        self.notes: list[ev.Notice] = []  # what setup had to skip, repair or change, shown after it
        self._val_last: val.ValResult | None = None  # the latest (a checkpoint of its step may be best)
        self._tb: tb.TBMirror | None = None  # the TensorBoard log, when the tensorboard setting is on
        self._saved_best = False  # the last checkpoint saved became the best
        self.dist = distributed.current()  # one of several processes: rank 0 alone touches the run
        distributed.check_batch(config.batch_size, self.dist.world_size)
        self._rank_rng: dict[str, torch.Tensor] = {}  # the other ranks' random states, for the checkpoint
        self._shared = False  # rank 0 has shared the starting state (or tried to)

    def save_checkpoint(self, background: bool = False) -> Path | None:
        """Save this step; when it was just validated with the lowest loss so far it becomes the run's best
        checkpoint (best.json), which pruning keeps. `background`: write a snapshot in the worker thread
        and return None (its CheckpointSaved comes from `_written` once the file is there)."""
        new = val.new_best(self._val_last, self.step, self.val_best)
        self.val_best = new or self.val_best
        tensors, meta = self.state_dict()
        if self.dist.active:
            tensors.update(self._rank_rng)
            meta["world_size"] = self.dist.world_size
        protect = [self.folder.checkpoint_path(self.val_best["step"])] if self.val_best else []
        step, keep, run_dir = self.step, self.config.keep_checkpoints, self.run_dir
        self._saved_best = new is not None

        def write() -> Path:
            path = self.folder.save_checkpoint(step, tensors, meta, keep, protect=protect)
            if new:
                val.write_best(run_dir, new, path)
            return path

        if background:
            tensors = snapshot(tensors)
            self._pending_events += self._written(self._writer.submit(write, (step, new is not None)))
            return None
        self._pending_events += self._written(self._writer.wait())  # files are written in step order
        self.last_checkpoint = write()
        return self.last_checkpoint

    def _checkpoint_event(self) -> ev.CheckpointSaved:
        self._rank_rng = self.dist.gather_rng(self.gen)  # all ranks take part; rank 0 saves
        if not self.dist.leader:
            self.last_checkpoint = self.folder.checkpoint_path(self.step)  # rank 0's, never touched here
            return ev.CheckpointSaved(self.step, str(self.last_checkpoint))
        path = self.save_checkpoint()
        return ev.CheckpointSaved(self.step, str(path), best=self._saved_best)

    def _log(self, rec: dict) -> None:
        """A metrics.jsonl record, mirrored to TensorBoard when that is on (rank 0 only)."""
        if self.dist.leader:
            self.folder.log(rec)
        if self._tb is not None:  # rank 0's only
            self._tb.record(rec)

    # ------------------------------------------------------------------ the run folder and resuming

    def _open_folder(self) -> None:
        """Lock the run folder (creating a new run, or opening one to resume) and refuse what cannot go on."""
        if not self.resume_requested:
            self.folder.create()
            # written now, so that a run killed while loading its data still says what it was
            self.folder.write_config(self.config)
            return
        self.notes += [ev.Notice(n, "warning") for n in self.folder.open()]
        if self.folder.config_file() is not None:
            # a damaged settings file, or one of a newer version, is refused (and so never overwritten)
            load_run_config(self.run_dir)
        has_checkpoints = bool(self.folder.list_checkpoints())
        if self.restart and has_checkpoints:
            raise ConfigError(
                f"{self.run_dir} has checkpoints: resume it without restarting, or start a new run folder."
            )
        if not self.restart:
            self.folder.check_history()  # no checkpoint but a history: ask before starting over

    def _resume_or_start(self) -> tuple[np.ndarray, np.ndarray]:
        """Restore the newest checkpoint, or start at step 0; cut the log back to this step and record what
        changed. Returns the logged (steps, losses) so far."""
        records: list[dict] = []
        if not self.resume_requested:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        if self.folder.list_checkpoints():
            records = self._restore()
        elif self.restart:
            kept = self.folder.set_aside_history()
            where = f"; its earlier history is kept in {kept.name}" if kept else ""
            self.notes.append(ev.Notice(f"This run starts again from step 0{where}."))
        elif self.folder.config_file() is not None:
            self.notes.append(ev.Notice("This run has no checkpoint yet: training starts from step 0."))
        history = self.folder.history(self.step)
        for rec in records:
            self.folder.log(rec)
        self.folder.write_config(self.config)
        if self.last_checkpoint is not None:  # best.json says what the resumed state says
            best = self.folder.checkpoint_path(self.val_best["step"]) if self.val_best else None
            val.write_best(self.run_dir, self.val_best, best)
        return history

    def _restore(self) -> list[dict]:
        """Load the newest checkpoint that loads, after checking that it fits this run and its data; returns
        the records of what changed (settings that may change, allowed data changes)."""
        ckpt, tensors, meta, notes = self.folder.load_latest()
        self.notes += [ev.Notice(n, "warning") for n in notes]
        changed = check_fits(self.config, self.model_config, self.num_classes, ckpt, meta)
        step = int(meta["step"])
        records = []
        change = data_change(meta.get("data_fingerprint"), self.data_fingerprint())
        if change and not self.allow_data_change:
            raise refuse_data_change(step, change)
        if change:
            msg = f"The training data changed since step {step} ({change}); going on with it, as allowed."
            self.notes.append(ev.Notice(msg, "warning"))
            records.append(
                {"step": step, "event": "data_changed", "message": msg, "data": self.data_fingerprint()}
            )
        self.notes += [ev.Notice(n, "warning") for n in self.load_state_dict(tensors, meta, ckpt.name)]
        self.last_checkpoint = ckpt
        self._rank_rng, note = distributed.rank_rng(tensors, meta, self.dist.world_size)
        self.notes += [ev.Notice(note)] if note else []
        if self.batch_size % self.dist.world_size:  # halved by an earlier run: the batch asked for
            self.batch_size = self.config.batch_size
        if "batch_size" in changed:  # asked for: replaces a batch size halved after running out of memory
            self.batch_size = self.config.batch_size
        if changed:
            texts, rec = settings_changes(changed, step)
            self.notes += [ev.Notice(t) for t in texts]
            records.insert(0, rec)
        return records

    # ------------------------------------------------------------------ running

    def run(self) -> Iterator[ev.Event]:
        """Set up and train, yielding events. Every failure ends in a Failed event, never a traceback."""
        old_threads = torch.get_num_threads()
        try:
            yield from self._run()
        except WriteFailed as exc:  # a run file: the advice is about the run folder, and resuming
            hint = (
                "free some disk space"
                if "disk space" in write_advice(exc.errno)
                else "choose a writable run folder"
            )
            yield self._failed(
                f"Could not write {exc.path} ({exc.reason}): {hint} and resume; the previous files were kept."
            )
        except DDPMError as exc:
            yield self._failed(str(exc), bad_input=not self._started and not _disk_failure(exc))
        except Exception as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if self.dist.active and distributed.is_comm_failure(exc):
                yield self._failed(self.dist.explain(exc, self.step, self.last_checkpoint))
            elif is_oom(exc):
                msg = (
                    f"Out of memory ({msg}): lower the batch size or the number of images, or choose a "
                    "smaller preset."
                )
                yield self._failed(msg)
            else:
                yield self._failed(f"Training failed: {type(exc).__name__}: {msg}")
        finally:
            try:  # a write in flight finishes before the folder is released (a failed one kept the old files)
                self._writer.wait()
            except Exception:
                pass
            torch.set_num_threads(old_threads)  # process-wide: give back what the run changed
            if self._tb is not None:
                self._tb.close()
            self.folder.release()

    def _failed(self, message: str, bad_input: bool = False) -> ev.Failed:
        checkpoint = str(self.last_checkpoint) if self.last_checkpoint else None
        if self.dist.active and self.dist.leader and not self._shared:  # the others wait for the start
            self._shared = True
            self.dist.share_failure(message)
        # a run that trained and failed says so in its history (the Runs tab tells it from a stopped one); a
        # refused start or resume leaves the history exactly as it was
        if self._started and self.folder.locked:
            try:
                self.folder.log(failure_record(self.step, message))
            except OSError:
                pass  # the failure itself may be a full or vanished disk: the message still reaches the user
        return ev.Failed(message, self.step, checkpoint, bad_input=bad_input)

    def _prepare(self):
        """Open the run folder (rank 0), load the data, build, resume or start, and share the start with the
        other processes (all ranks). Returns the logged (steps, losses) so far."""
        c = self.config
        lead = self.dist.leader
        if lead:
            self._open_folder()
            if c.tensorboard:
                tb.require_tensorboard()  # missing: a ConfigError now, not after loading the data
        # measures what other programs use while the data loads; a fixed --threads N is taken as it is
        self._threads = ThreadChooser(c.threads, cap=torch.get_num_threads())
        yield ev.Notice("Loading data…")
        self.setup()
        self.notes += [ev.Notice(n, "warning") for n in self.setup_notes]
        if self.device.type == "cpu":
            torch.set_num_threads(self._threads.check())
        hist = self._resume_or_start() if lead else (np.zeros(0, np.int64), np.zeros(0, np.float32))
        if lead and c.init_from and self.last_checkpoint is None:  # a fresh model: the weights it starts from
            self.notes += init_weights.start_from(self, c.init_from)
        self._tb = tb.TBMirror.open(self.run_dir, self.step) if lead and c.tensorboard else None
        if self.dist.active:
            self._shared = True
            distributed.share_learner_state(self, self._rank_rng)
            if not lead and self.step:  # rank 0's newest checkpoint (its name: it is never opened here)
                self.last_checkpoint = self.folder.checkpoint_path(self.step)
        return hist

    def _run(self) -> Iterator[ev.Event]:
        c = self.config
        hist_steps, hist_losses = yield from self._prepare()
        yield from self.notes
        self.notes = []
        yield self._started_event(resumed=self.last_checkpoint is not None)
        self._started = True
        if self.batch_size != c.batch_size:
            yield ev.Notice(
                f"Batch size is {self.batch_size} (halved earlier after running out of memory).", "warning"
            )
        if len(hist_steps):
            last = float(hist_losses[-1])
            lr = self._lr(self.step)
            if self._smooth is None:
                self._smooth = last
            # the smoothed loss the checkpoint restored (what the stats line and the plot carry on from)
            yield ev.Progress(self.step, c.steps, last, self._smooth, 0.0, 0.0, 0.0, self.batch_size, lr,
                              hist_steps, hist_losses)  # fmt: skip
        if self.last_checkpoint is not None and self.dist.leader:  # the validation curve so far
            for v in val.val_history(self.folder.metrics):
                yield val.validation_event(v, self.val_best, replayed=True)
        now = time.monotonic()
        loop = _Loop(t0=now, last_ckpt_t=now, logged_to=int(hist_steps[-1]) if len(hist_steps) else 0)
        self._rate, self._last_read = 0.0, (now, self.step)
        self.model.train()
        while self.step < self.config.steps:  # a paused run may change its steps
            wait = yield from self._wait_while_paused(loop)  # "step": one step, looked at, while paused
            if wait == "failed":
                return
            if loop.stop_agreed if self.dist.active else self._stop.is_set():
                break
            stepped = yield from self._guarded_step(loop, look=wait == "step")
            if stepped is None:
                return
            if stepped and self._read_due(loop) and not (yield from self._after_read(loop)):
                return
        yield from self._finish(loop)

    def _started_event(self, resumed: bool) -> ev.Started:
        from ddpm_gui.models.presets import flops_per_image

        try:
            flops = float(flops_per_image(self.model_config, self.config.image_size)["train"])
        except Exception:
            flops = None
        note = (
            "Training on the CPU: the estimated time appears after the first steps."
            if self.device.type == "cpu"
            else ""
        )
        return ev.Started(
            step=self.step,
            total_steps=self.config.steps,
            device=device_label(self.device),
            n_params=self.n_params,
            flops_per_image=flops,
            dataset=self.data.name,
            n_images=len(self.data),
            run_dir=str(self.run_dir),
            resumed=resumed,
            batch_size=self.batch_size,
            estimate_note=note,
            threads=torch.get_num_threads() if self.device.type == "cpu" else 0,
            threads_auto=self.device.type == "cpu" and not self.config.threads,
        )

    def _guarded_step(self, loop: _Loop, look: bool = False):
        """One step with its failures handled; `look`: keep what it worked on (a StepInspected event).
        Returns True (a step was made), False (out of memory: the batch was halved, no step made) or None
        (the run failed; the Failed event was yielded)."""
        oom = False
        try:
            if self.fault_hook is not None:
                self.fault_hook(self.step)
            self.inspect = {} if look else None
            loss = self.train_step(self.images, self.labels)
        except NonFiniteStep as bad:  # host guard: nothing was updated
            if loop.pending:
                yield from self._read(loop)
            yield self._failed(self._nonfinite_message(bad.step, bad.what, bad.value, bad.loss))
            return None
        except Exception as exc:
            if not is_oom(exc) or self.batch_size <= 1 or self.dist.active:  # all ranks keep one batch
                raise
            oom = True  # clean up outside the except block, so the traceback's tensors are freed first
        if oom:
            self.optim.zero_grad(set_to_none=True)
            free_cached_memory(self.device)
            self.batch_size = max(1, self.batch_size // 2)
            yield ev.Notice(
                f"Out of memory: batch size halved to {self.batch_size}; training goes on.", "warning"
            )
            return False
        loop.pending.append((self.step, loss))
        if look:
            yield self._step_event(self.inspect or {})
            self.inspect = None
        return True

    def _read_due(self, loop: _Loop) -> bool:
        """Whether the losses are to be read now (and what follows a read: checkpoint, preview)."""
        c = self.config
        # several processes agree on the timer and on stopping at the next read (see _read): the rest is
        # decided by the step alone, the same on every rank
        loop.due_ckpt = bool(
            (c.checkpoint_every and self.step % c.checkpoint_every == 0)
            or (self._timed_checkpoint(loop) and not self.dist.active)
        )
        # the first preview comes early (a short run shows one too), then every preview_every steps
        first = not loop.previewed and self.step % c.log_every == 0 and self.step >= min(c.preview_every, 20)
        loop.due_preview = bool(
            c.preview_every
            and (self.step % c.preview_every == 0 or first or (self.step >= c.steps and not loop.previewed))
        )
        # at each checkpoint too, so that every saved checkpoint can be compared (the best is kept)
        loop.due_val = bool(
            c.val_every
            and self.validator is not None
            and (self.step % c.val_every == 0 or loop.due_ckpt or self.step >= c.steps)
        )
        return bool(
            self.step % c.log_every == 0
            or loop.due_ckpt
            or loop.due_preview
            or loop.due_val
            or self.step >= c.steps
            or (self._stop.is_set() and not self.dist.active)
        )

    def _timed_checkpoint(self, loop: _Loop) -> bool:
        m = self.config.checkpoint_minutes
        return bool(m and time.monotonic() - loop.last_ckpt_t > 60 * m)

    def _after_read(self, loop: _Loop):
        """The one host-device sync: read the pending losses; nothing is saved before this read says that
        every step since the last one was finite. Then the figures, preview and checkpoint that are due.
        Returns False when the run failed (the Failed event was yielded)."""
        c = self.config
        yield from self._written(self._writer.poll())
        if self.compile_fallback is not None and not self._told_compile:
            self._told_compile = True
            yield ev.Notice(self.compile_fallback, "warning")
        read = self._read(loop)
        yield from read
        progress = read[-1]
        if not isinstance(progress, ev.Progress):
            return False  # Failed
        if not loop.told_estimate and self.step - loop.logged_to >= 2 * c.log_every and self._rate > 0:
            loop.told_estimate = True
            if self.device.type == "cpu":
                yield ev.Notice(
                    f"On this CPU the run goes at about {self._rate:.0f} images/s: the remaining "
                    f"{c.steps - self.step} steps take about {fmt_duration(progress.eta_s)}."
                )
        loop.reads += 1
        if self.step % (c.log_every * 5) == 0 or self.step >= c.steps:
            yield ev.TimestepLoss(self.step, self.loss_by_t())
        elif loop.reads <= 3:  # a short run's plot fills early; these looks do not decay the statistics
            yield ev.TimestepLoss(self.step, self.loss_by_t(decay=False))
        if loop.due_preview:
            loop.previewed = True
            if self.dist.leader:
                yield self._preview_event()
        if loop.due_val and self.dist.leader:
            yield from self._validation(loop)
        note = self._recheck_threads(loop)
        if note is not None:
            yield note
        if loop.due_ckpt and self.step < c.steps:
            yield from self._periodic_checkpoint()
            loop.last_ckpt_t = time.monotonic()
        return True

    def _validation(self, loop: _Loop) -> Iterator[ev.Event]:
        """The validation loss now (logged), and once per session what it costs."""
        try:
            v = self.validate()
        except Exception as exc:
            if not is_oom(exc):
                raise
            free_cached_memory(self.device)
            yield ev.Notice("Out of memory while computing the validation loss: skipped; training goes on.",
                            "warning")  # fmt: skip
            return
        self._val_last = v
        self._log(v.record())
        yield val.validation_event(v, self.val_best)
        if not loop.told_val_cost and self._rate > 0:
            loop.told_val_cost = True
            yield ev.Notice(val.cost_note(v.seconds, self.batch_size / self._rate, self.config.val_every))

    def _recheck_threads(self, loop: _Loop) -> ev.Notice | None:
        """Auto threads on a CPU: every 30 s, follow what other programs leave free (a Notice on a change)."""
        now = time.monotonic()
        if self.device.type != "cpu" or self.config.threads or now - loop.threads_checked < 30:
            return None
        loop.threads_checked = now
        n, old = self._threads.check(), torch.get_num_threads()
        if n == old:
            return None
        torch.set_num_threads(n)
        return ev.Notice(
            f"CPU threads {old} -> {n} (auto: {'other programs now use' if n < old else 'freed'} "
            f"{'some of ' if n < old else ''}the CPU)."
        )

    def _finish(self, loop: _Loop) -> Iterator[ev.Event]:
        """Completed or stopped: always leave a checkpoint of the last good state."""
        if loop.pending:  # not read yet (stopped between two reads)
            read = self._read(loop)
            yield from read
            if isinstance(read[-1], ev.Failed):
                return
        yield from self._flush_pending()
        yield from self._written(self._writer.wait())
        if self.last_checkpoint is None or self.last_checkpoint.name != f"step_{self.step:08d}.safetensors":
            yield self._checkpoint_event()
        reason = "completed" if self.step >= self.config.steps else "stopped"
        yield ev.Finished(self.step, str(self.run_dir), reason, str(self.last_checkpoint))

    def _preview_event(self) -> ev.Preview | ev.Notice:
        grid = None
        try:
            grid = self.preview()
        except Exception as exc:
            if not is_oom(exc):
                raise
        if grid is None:
            free_cached_memory(self.device)
            return ev.Notice("Out of memory while drawing the preview: skipped; training goes on.", "warning")
        image = make_grid(grid)
        self.folder.save_preview(self.step, png_bytes(image))
        if self._tb is not None:
            self._tb.image(self.step, image)
        return ev.Preview(self.step, grid)

    def _read(self, loop: _Loop) -> list[ev.Event]:
        """Read the pending losses (one sync), log them, and return [Progress]; when one is not finite (the
        device guard kept it out of the weights), [Progress of the good ones before it, if any, Failed]."""
        losses = torch.stack([loss for _, loss in loop.pending]).float()
        if self.dist.active:  # the mean over the ranks, and what they agree on (one all-reduce)
            losses, loop.stop_agreed, timed = self.dist.reduce_read(
                losses, self._stop.is_set(), self._timed_checkpoint(loop)
            )
            loop.due_ckpt = loop.due_ckpt or timed
        vals = losses.cpu().numpy()
        steps = np.asarray([s for s, _ in loop.pending], np.int64)
        loop.pending.clear()
        bad = ~np.isfinite(vals)
        if bad.any():
            first = int(np.argmax(bad))
            good = [self._record(steps[:first], vals[:first], loop.t0)] if first else []
            msg = self._nonfinite_message(
                int(steps[first]), "The loss or its gradient", float(vals[first]), None
            )
            return [*good, self._failed(msg)]
        return [self._record(steps, vals, loop.t0)]

    def _record(self, steps: np.ndarray, vals: np.ndarray, t0: float) -> ev.Progress:
        c = self.config
        now = time.monotonic()
        last_t, last_step = self._last_read
        step = int(steps[-1])
        if now > last_t and step > last_step:
            inst = (step - last_step) * self.batch_size / (now - last_t)
            self._rate = inst if self._rate == 0 else 0.8 * self._rate + 0.2 * inst
        self._last_read = (now, step)
        smooth = self._smoothed(vals)
        eta = (c.steps - step) * self.batch_size / self._rate if self._rate > 0 else float("nan")
        lr = self._lr(step - 1)
        loss = float(vals[-1])
        self._log({"step": step, "loss": loss, "loss_smooth": smooth, "img_per_s": self._rate, "lr": lr,
                         "batch_size": self.batch_size, "time": time.time()})  # fmt: skip
        return ev.Progress(step, c.steps, loss, smooth, self._rate, eta, now - t0, self.batch_size, lr, steps,
                           vals.astype(np.float32))  # fmt: skip

    def _smoothed(self, vals: np.ndarray) -> float:
        """The exponential moving average of the loss, taken through `vals` (never empty)."""
        smooth = self._smooth
        for v in vals.tolist():
            smooth = v if smooth is None else ev.LOSS_SMOOTHING * smooth + (1 - ev.LOSS_SMOOTHING) * v
        self._smooth = smooth
        return float("nan") if smooth is None else smooth


def _disk_failure(exc: BaseException) -> bool:
    """A write that failed for the disk's sake (full, quota, I/O error): not the user's input."""
    cause = exc.__cause__
    return isinstance(cause, OSError) and cause.errno in (
        errno.ENOSPC,
        getattr(errno, "EDQUOT", -1),
        errno.EIO,
    )
