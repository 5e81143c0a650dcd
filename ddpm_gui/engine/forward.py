"""The forward (noising) process of one image as uint8 frames, for the Forward tab and `ddpm-gui forward`.

Two processes from the same x_0 and the same seed:
- iterative, DDPM eq. 2: q(x_t | x_(t-1)) applied t times, a fresh z every step (`core.diffusion.q_step`);
- closed form, DDPM eq. 4: x_t = sqrt(ab_t) x_0 + sqrt(1 - ab_t) eps (`core.diffusion.q_sample`), with
  ONE eps for every t, so that an animation over t is smooth.

The generator draws eps first, then the iterative noise, whichever processes are asked for: a seed gives
the same frames in the GUI and the CLI. No Qt.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ddpm_gui.core.schedule import NoiseSchedule
from ddpm_gui.errors import ConfigError

MAX_FRAME_BYTES = 256 * 1024 * 1024  # above this, keep every k-th step only (see kept_steps)
PROCESSES = ("iterative", "closed")
_STOP_CHECK_EVERY = 64  # iterative steps between two looks at the stop event


@dataclass
class ForwardFrames:
    """Frame i of each process is step ts[i]; ts[0] = 0 is the clean image itself."""

    ts: np.ndarray  # (F,) int64, increasing, within 0..T
    iterative: np.ndarray | None  # (F, H, W, 3) uint8, or None when not asked for
    closed: np.ndarray | None  # (F, H, W, 3) uint8, or None when not asked for


def kept_steps(T: int, step_bytes: int, max_bytes: int = MAX_FRAME_BYTES) -> np.ndarray:
    """Steps 0..T, or every k-th of them (and T itself) so that their frames take at most max_bytes."""
    stride = max(1, math.ceil((T + 1) * step_bytes / max(max_bytes, 1)))
    keep = list(range(0, T + 1, stride))
    if keep[-1] != T:
        keep.append(T)
    return np.asarray(keep, np.int64)


def forward_frames(
    image: np.ndarray,
    sched: NoiseSchedule,
    seed: int = 0,
    steps: Sequence[int] | np.ndarray | None = None,
    processes: Sequence[str] = PROCESSES,
    stop: threading.Event | None = None,
    max_bytes: int = MAX_FRAME_BYTES,
) -> ForwardFrames | None:
    """The forward process of an (H, W, 3) uint8 image at `steps` (default: kept_steps within max_bytes).

    Returns None when `stop` is set before the end.
    """
    import torch

    from ddpm_gui.core.diffusion import from_uint8, q_sample, to_uint8

    image = np.array(image)  # a private, writable copy (torch.from_numpy shares its memory)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ConfigError(f"The image must be an H x W x 3 uint8 array, got {image.dtype} {image.shape}.")
    unknown = set(processes) - set(PROCESSES)
    if unknown or not processes:
        raise ConfigError(f"Unknown forward process {sorted(unknown)}: use 'iterative' and/or 'closed'.")
    T = sched.T
    if steps is None:
        ts = kept_steps(T, image.nbytes * len(set(processes)), max_bytes)
    else:
        ts = np.unique(np.asarray(steps, np.int64))
        if len(ts) == 0 or ts[0] < 0 or ts[-1] > T:
            raise ConfigError(f"The steps to show must lie in 0..{T}.")
    x0 = from_uint8(torch.from_numpy(image)[None])  # (1, 3, H, W) in [-1, 1]
    g = torch.Generator().manual_seed(int(seed))
    eps = torch.randn(x0.shape, generator=g, dtype=x0.dtype)  # drawn first: see the module docstring
    # Frames are converted to uint8 in big chunks: every to_uint8 call costs a parallel region (its
    # round() wakes torch's thread pool, ~10 ms on a busy 2-core CPU), the arithmetic itself is tiny.
    chunk = max(1, (16 << 20) // (x0.numel() * 4))
    first = image[None]  # step 0: the clean image itself, not a round trip through [-1, 1]
    closed = iterative = None
    with torch.no_grad():
        if "closed" in processes:
            closed = [first[:0]] if ts[0] else [first]
            t_idx = torch.from_numpy(ts[ts > 0] - 1)  # step t uses alpha_bars[t - 1] (0-based arrays)
            for part in torch.split(t_idx, chunk):
                n = len(part)
                xs, _ = q_sample(x0.expand(n, -1, -1, -1), part, sched, noise=eps.expand(n, -1, -1, -1))
                closed.append(to_uint8(xs).numpy())
        if "iterative" in processes:
            iterative = _iterate(x0, first, ts, sched, g, chunk, stop)
            if iterative is None:
                return None
    return ForwardFrames(
        ts,
        None if iterative is None else np.concatenate(iterative),
        None if closed is None else np.concatenate(closed),
    )


def _iterate(x0, first, ts, sched, g, chunk, stop) -> list[np.ndarray] | None:
    """The iterative process up to max(ts), keeping the steps in ts; None when stopped."""
    import torch

    from ddpm_gui.core.diffusion import q_step, to_uint8

    out = [first] if ts[0] == 0 else []
    pending: list = []
    wanted = set(int(t) for t in ts if t > 0)
    x = x0
    for t in range(int(ts[-1])):
        if stop is not None and t % _STOP_CHECK_EVERY == 0 and stop.is_set():
            return None
        x = q_step(x, t, sched, generator=g)
        if t + 1 in wanted:
            pending.append(x)
            if len(pending) >= chunk:
                out.append(to_uint8(torch.cat(pending)).numpy())
                pending = []
    if pending:
        out.append(to_uint8(torch.cat(pending)).numpy())
    return out
