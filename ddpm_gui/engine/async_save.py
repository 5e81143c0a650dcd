"""Checkpoints written in the background, from a snapshot, while training goes on.

On a GPU a checkpoint of the tutorial UNet (its weights, EMA and AdamW moments: 645 MiB) takes seconds to
serialise, hash and fsync, while a step takes milliseconds: written in the training thread every 500 steps
it would stall the GPU for a large share of the run. Here the training thread only copies the state to host
memory (on CUDA that copy is the snapshot; on the CPU the tensors are cloned, since a state dict there
shares storage with the live weights) and a worker thread writes it. One write at a time: a checkpoint
that falls due while the previous one is still being written waits for it, so at most one snapshot is held.

A write's error is raised in the training thread at the next `poll`/`wait`, where the synchronous save
would have raised it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch

from ddpm_gui.engine import events as ev

if TYPE_CHECKING:
    from pathlib import Path

    from ddpm_gui.engine.distributed import Dist


def snapshot(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Host copies of `tensors` that later training steps cannot change."""
    out = {}
    for k, v in tensors.items():
        v = v.detach()
        out[k] = v.to("cpu", copy=True) if v.device.type != "cpu" else v.clone()
    return out


class BackgroundWriter:
    """Runs one write at a time in a daemon thread; `poll` hands back finished results in the caller's
    thread."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._result: Any = None
        self._error: BaseException | None = None
        self._tag: Any = None

    @property
    def busy(self) -> bool:
        return self._thread is not None

    def submit(self, write: Callable[[], Any], tag: Any = None) -> list[tuple[Any, Any]]:
        """Start `write()` in the background; first waits for the write in flight. Returns the finished
        writes' (tag, result), in order."""
        done = self.wait()
        self._tag, self._result, self._error = tag, None, None

        def run() -> None:
            try:
                self._result = write()
            except BaseException as exc:  # handed to the training thread by poll/wait
                self._error = exc

        self._thread = threading.Thread(target=run, name="checkpoint-writer", daemon=True)
        self._thread.start()
        return done

    def poll(self) -> list[tuple[Any, Any]]:
        """The finished write's (tag, result), if it has finished; [] while one is in flight or none was
        started. Raises the write's error."""
        if self._thread is None or self._thread.is_alive():
            return []
        return self._collect()

    def wait(self) -> list[tuple[Any, Any]]:
        """Wait for the write in flight; its (tag, result), or [] when there is none."""
        if self._thread is None:
            return []
        self._thread.join()
        return self._collect()

    def _collect(self) -> list[tuple[Any, Any]]:
        self._thread = None
        if self._error is not None:
            err, self._error = self._error, None
            raise err
        return [(self._tag, self._result)]


class BackgroundCheckpoints:
    """The Trainer's periodic checkpoints, written by a BackgroundWriter where that is on, and the
    CheckpointSaved events of the writes that finished (a mixin: the Trainer's attributes)."""

    if TYPE_CHECKING:
        background_checkpoints: bool | None
        device: torch.device
        dist: Dist
        gen: torch.Generator
        last_checkpoint: Path | None
        _rank_rng: dict[str, torch.Tensor]
        _pending_events: list[ev.Event]

        def save_checkpoint(self, background: bool = False) -> Path | None: ...
        def _checkpoint_event(self) -> ev.CheckpointSaved: ...

    def _written(self, done: list) -> list[ev.CheckpointSaved]:
        """CheckpointSaved for the background writes that finished."""
        out = []
        for (step, best), path in done:
            self.last_checkpoint = path
            out.append(ev.CheckpointSaved(step, str(path), best=best))
        return out

    def _periodic_checkpoint(self) -> Iterator[ev.Event]:
        """The checkpoint that falls due during a run: in the background where that is on."""
        background = self.background_checkpoints
        if background is None:
            background = self.device.type == "cuda"
        if not (background and self.dist.leader):
            saved = self._checkpoint_event()
            yield from self._flush_pending()  # a background write it waited for came first
            yield saved
            return
        self._rank_rng = self.dist.gather_rng(self.gen)
        self.save_checkpoint(background=True)
        yield from self._flush_pending()

    def _flush_pending(self) -> Iterator[ev.Event]:
        events, self._pending_events = self._pending_events, []
        yield from events
