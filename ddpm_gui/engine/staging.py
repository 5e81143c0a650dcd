"""Batches from a dataset kept in host memory, for a GPU that cannot hold it.

A batch gathered from a host tensor is a new, pageable tensor: copying it to the GPU is then a blocking
copy that waits for the GPU to finish all queued work, once per step. Here each batch is gathered straight
into one of two pinned buffers (`torch.index_select(..., out=)`) and copied with `non_blocking=True`, so the
host runs ahead of the GPU as it does when the data is on the device. A buffer is written again two steps
later, only after the event recorded behind its copy has passed (the host waits only when it is two steps
ahead). The batch indices must be on the host already: moving device indices to the host is itself a sync.

The pinning, copying and event functions are parameters so that a test double can count them on a
machine without CUDA.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch


class Event(Protocol):
    """What torch.cuda.Event offers that this module uses."""

    def record(self) -> None: ...
    def synchronize(self) -> None: ...


class HostBatches:
    """Gathers batches of `images` (a host tensor, pinned where possible) into pinned buffers and copies
    them to `device` asynchronously."""

    def __init__(
        self,
        images: torch.Tensor,
        device: torch.device,
        pin: Callable[[torch.Tensor], torch.Tensor] | None = None,
        new_event: Callable[[], Event] | None = None,
    ):
        self.images = images
        self.device = device
        self._pin = pin or (lambda t: t.pin_memory())
        self._new_event = new_event or (lambda: torch.cuda.Event())
        self._buffers: list[torch.Tensor] = []
        self._events: list[Event | None] = []
        self._next = 0

    def _buffer(self, count: int) -> tuple[int, torch.Tensor]:
        shape = (count, *self.images.shape[1:])
        if not self._buffers or self._buffers[0].shape != shape:  # a batch halved after running out of memory
            for ev in self._events:
                if ev is not None:
                    ev.synchronize()
            self._buffers = [self._pin(torch.empty(shape, dtype=self.images.dtype)) for _ in range(2)]
            self._events = [None, None]
            self._next = 0
        i, self._next = self._next, 1 - self._next
        pending = self._events[i]
        if pending is not None:
            pending.synchronize()  # its previous copy has left the buffer
        return i, self._buffers[i]

    def gather(self, idx: torch.Tensor) -> torch.Tensor:
        """images[idx] on the device. `idx`: host indices (a device tensor here would cost a sync)."""
        if idx.device.type != "cpu":
            raise ValueError("HostBatches.gather takes host indices")
        i, buf = self._buffer(idx.numel())
        torch.index_select(self.images, 0, idx, out=buf)
        out = buf.to(self.device, non_blocking=True)
        ev = self._new_event()
        ev.record()
        self._events[i] = ev
        return out

    def to_device(self, idx: torch.Tensor) -> torch.Tensor:
        """Host indices on the device without a blocking copy (for the labels kept there)."""
        return self._pin(idx).to(self.device, non_blocking=True)
