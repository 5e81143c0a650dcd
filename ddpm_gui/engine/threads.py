"""The CPU thread count for sampling, chosen the way training chooses it (device.ThreadChooser).

torch's CPU kernels wait for their slowest thread, so on a core another program is using, every step of a
sampling chain waits for it: a 20-step DDIM preview measured 6-8x slower with torch's default two threads
than with one on a 2-core machine running other work (`ddpm-gui bench --sections busy`). A sampling chain
is hundreds of small steps, which makes it the worst case. The count is process-wide in torch, so it is set
for the chain and given back after it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from ddpm_gui.engine.device import ThreadChooser

RECHECK_SECONDS = 2.0  # a chain re-measures this often (the trainer: every 30 s of a much longer run)

# torch's own count when the engine loads (before a run or a chain changes it): OMP_NUM_THREADS and a user's
# set_num_threads stay upper bounds
_TORCH_DEFAULT = torch.get_num_threads()
_lock = threading.Lock()
_chooser: ThreadChooser | None = None  # one per process: it measures the time between two chains too
_fixed = 0  # > 0: chains use this count instead (fixed_sampling_threads)


def _the_chooser() -> ThreadChooser:
    global _chooser
    with _lock:
        if _chooser is None:
            _chooser = ThreadChooser(0, cap=_TORCH_DEFAULT)
        return _chooser


@contextmanager
def fixed_sampling_threads(n: int) -> Iterator[None]:
    """Chains started within the block use `n` threads, not the chosen count (the bench's comparison)."""
    global _fixed
    old, _fixed = _fixed, int(n)
    try:
        yield
    finally:
        _fixed = old


@contextmanager
def sampling_threads(device: torch.device) -> Iterator[Callable[[], None]]:
    """Within the block torch uses the thread count the app chooses now (on the CPU; elsewhere nothing
    changes). The block calls the yielded function between steps: at most every RECHECK_SECONDS it
    measures again. The count before the block is restored after it."""
    if device.type != "cpu":
        yield lambda: None
        return
    chooser = _the_chooser()
    old = torch.get_num_threads()
    torch.set_num_threads(_fixed or chooser.check())
    last = time.monotonic()

    def recheck() -> None:
        nonlocal last
        now = time.monotonic()
        if not _fixed and now - last >= RECHECK_SECONDS:
            last = now
            n = chooser.check()
            if n != torch.get_num_threads():
                torch.set_num_threads(n)

    try:
        yield recheck
    finally:
        torch.set_num_threads(old)
