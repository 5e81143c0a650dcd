"""A run's controls, from any thread: pause, resume and stop, and while paused one training step at a time
(with what the step worked on) and edits of the settings that may change without a restart. No Qt.

    trainer.pause(); trainer.request_step()        # the loop makes one step: a StepInspected event
    trainer.change_settings(lr=1e-4)               # applied in the loop while paused: SettingsChanged
    trainer.resume()

The Trainer (trainer.py) mixes RunControl in; commands are queued here and carried out by the training
loop itself, in its own thread, between two steps: a Step is the loop's next iteration, run by the
trainer's own step code with its intermediates kept (Learner.inspect), and a setting is changed where no
step is running.

A change is recorded so that resuming stays exact: the checkpoint of the step it is made at (saved first,
with the settings it was trained with), a {"step", "event": "settings", "changed"} record in
metrics.jsonl and the run's config.toml. Resumed from that checkpoint, the run finds the change again
(fits.check_fits) and applies it from the same step; resumed from a later one, the checkpoint carries it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Generator
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from ddpm_gui.engine import events as ev
from ddpm_gui.engine.config import RESUMABLE, TrainConfig
from ddpm_gui.engine.fits import settings_changes
from ddpm_gui.errors import ConfigError

if TYPE_CHECKING:
    from pathlib import Path

    from ddpm_gui.engine.distributed import Dist
    from ddpm_gui.engine.runfolder import RunFolder

# what a paused run may change in place: the optimizer's and the loss's numbers, how long it runs, what it
# shows and keeps. The batch, the model, the schedule and the device need a restart (through a checkpoint).
LIVE_SETTINGS = RESUMABLE & frozenset(
    {
        "lr", "warmup_steps", "lr_schedule", "weight_decay", "grad_clip", "min_snr_gamma", "ema_decay", "steps",
        "log_every", "preview_every", "preview_n", "preview_steps", "checkpoint_every",
        "checkpoint_minutes", "keep_checkpoints",
    }
)  # fmt: skip
INSPECT_IMAGES = 16  # the images of an inspected step's batch that its event carries (t and loss: all)


def live_changes(old: TrainConfig, new: TrainConfig) -> dict | None:
    """{name: new value} of the settings `new` changes from `old` when a paused run can take all of them in
    place (LIVE_SETTINGS; the EMA neither turned on nor off: that builds or drops a model); None when one
    of them needs a restart through a checkpoint."""
    changed = {k: getattr(new, k) for k in RESUMABLE if getattr(new, k) != getattr(old, k)}
    if any(k not in LIVE_SETTINGS for k in changed):
        return None
    if "ema_decay" in changed and (old.ema_decay > 0) != (new.ema_decay > 0):
        return None
    return changed


def grad_norms(model: nn.Module) -> dict[str, torch.Tensor]:
    """Each parameter's gradient norm (on the device, not synced), by parameter name."""
    return {n: torch.linalg.vector_norm(p.grad.detach().float()) for n, p in model.named_parameters()
            if p.grad is not None}  # fmt: skip


def _images(x: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) -> (N, H, W, C) float32 numpy, the first INSPECT_IMAGES."""
    return x[:INSPECT_IMAGES].detach().float().permute(0, 2, 3, 1).cpu().numpy()


class RunControl:
    """Pause, resume, stop, Step and settings edits of a Trainer, callable from any thread (threading
    Events and a queue: a paused loop waits for them in its own thread)."""

    if TYPE_CHECKING:  # the Trainer's, which mixes this in
        config: TrainConfig
        step: int
        optim: torch.optim.AdamW
        folder: RunFolder
        last_checkpoint: Path | None
        dist: Dist
        _last_read: tuple[float, int]

        def _lr(self, step: int) -> float: ...
        def _log(self, rec: dict) -> None: ...
        def _read(self, loop) -> list[ev.Event]: ...
        def _checkpoint_event(self) -> ev.CheckpointSaved: ...

    def _init_control(self) -> None:
        self._stop = threading.Event()
        self._running = threading.Event()  # set = not paused
        self._running.set()
        self._commands: deque[tuple[str, dict]] = deque()  # ("step", {}) or ("settings", changes)
        self._told_paused = False  # the Paused event of this pause was yielded

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def stop(self) -> None:
        self._stop.set()
        self._running.set()  # wake a paused loop so it can stop

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def request_step(self) -> None:
        """Make one training step while paused (a StepInspected event follows it). ConfigError unless
        paused."""
        self._need_paused("take a single step")
        self._commands.append(("step", {}))

    def change_settings(self, **values) -> None:
        """Change settings of a paused run in place (LIVE_SETTINGS): checked now (a ConfigError says what
        to change), applied by the loop before its next step (a SettingsChanged event)."""
        self._need_paused("change its settings")
        bad = sorted(set(values) - LIVE_SETTINGS)
        if bad:
            raise ConfigError(
                f"{', '.join(bad)} cannot change in a paused run: stop it and continue it from its "
                f"checkpoint with the new value (only {', '.join(sorted(LIVE_SETTINGS))} change in place)."
            )
        cfg = self.config.replace(**values).validate()
        if live_changes(self.config, cfg) is None:
            raise ConfigError(
                "The EMA cannot be turned on or off in a paused run: continue it from its checkpoint."
            )
        self._commands.append(("settings", values))

    def _need_paused(self, what: str) -> None:
        if self.dist.active:  # every process would have to take part: not offered
            raise ConfigError(f"A run on several GPUs cannot {what} while paused: stop it and continue it.")
        if not self.paused or self.stopping:
            raise ConfigError(f"Pause the run to {what}.")

    # ------------------------------------------------------------------ in the training loop's thread

    def _wait_while_paused(self, loop) -> Generator[ev.Event, None, str]:
        """Wait while paused, carrying out the queued commands. Returns "step" (make one inspected step,
        still paused), "go" (resumed or stopping) or "failed" (a Failed event was yielded)."""
        if self._running.is_set() and not self._commands and not self._told_paused:
            return "go"
        if not self._told_paused and not self._running.is_set():
            self._told_paused = True
            yield ev.Paused(self.step)
        while True:
            while self._commands:
                kind, values = self._commands.popleft()
                if kind == "step":
                    self._last_read = (time.monotonic(), self.step)
                    return "step"
                if not (yield from self._apply_settings(loop, values)):
                    return "failed"
            if self._running.wait(0.1) and not self._commands:
                break
        if self._told_paused and not self._stop.is_set():
            yield ev.Resumed(self.step)
        self._told_paused = False
        self._last_read = (time.monotonic(), self.step)
        return "go"

    def _apply_settings(self, loop, values: dict) -> Generator[ev.Event, None, bool]:
        """Change the settings now, recorded (see the module's docstring). False after a Failed event."""
        new = self.config.replace(**values).validate()
        changed = {k: (getattr(self.config, k), v) for k, v in values.items() if getattr(self.config, k) != v}
        if not changed:
            return True
        if loop.pending:  # nothing is saved before the losses since the last read are known to be finite
            read = self._read(loop)
            yield from read
            if isinstance(read[-1], ev.Failed):
                return False
        if self.last_checkpoint is None or self.last_checkpoint != self.folder.checkpoint_path(self.step):
            yield self._checkpoint_event()
            loop.last_ckpt_t = time.monotonic()
        self.config = new
        for g in self.optim.param_groups:
            g["lr"], g["weight_decay"] = self._lr(self.step), new.weight_decay
        texts, rec = settings_changes(changed, self.step)
        self._log(rec)
        self.folder.write_config(new)
        yield ev.SettingsChanged(self.step, {k: list(v) for k, v in changed.items()}, texts)
        return True

    def _step_event(self, captured: dict) -> ev.StepInspected:
        """The StepInspected event of the step just made, from what Learner.inspect kept of it."""
        per = captured["per"].float().cpu().numpy()
        norms = captured["grads"]
        values = torch.stack(list(norms.values())).cpu().numpy() if norms else np.zeros(0)
        return ev.StepInspected(
            step=self.step,
            t=captured["t"].cpu().numpy().astype(np.int64),
            loss_per_image=per.astype(np.float32),
            loss=float(per.mean()),
            x0=_images(captured["x0"]),
            noise=_images(captured["noise"]),
            xt=_images(captured["xt"]),
            prediction=_images(torch.cat(captured["out"])),
            target=_images(captured["target"]),
            prediction_kind=self.config.prediction,
            grad_norms={n: float(v) for n, v in zip(norms, values, strict=True)},
            grad_norm=float(np.sqrt(np.sum(np.square(values, dtype=np.float64)))),
            grad_clip=self.config.grad_clip,
            lr=float(self.optim.param_groups[0]["lr"]),
        )
