"""Image grids, PNG and GIF output (Pillow), shared by the CLI, the trainer and the GUI's exports.

Every PNG and GIF the app writes goes through save_png / save_gif: atomic writes (a failure leaves the
previous file as it was; see engine.fileio.atomic_write_bytes).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ddpm_gui.engine.fileio import atomic_write_bytes

ProgressFn = Callable[[int, int], None]  # (frames done, total)


def upscale(images: np.ndarray, scale: int) -> np.ndarray:
    """(..., H, W, C) -> (..., H*scale, W*scale, C), nearest neighbour: pixels stay crisp squares."""
    images = np.asarray(images)
    if scale <= 1:
        return images
    return images.repeat(scale, axis=-3).repeat(scale, axis=-2)


def make_grid(images: np.ndarray, columns: int | None = None, pad: int = 1, scale: int = 1) -> np.ndarray:
    """(N, H, W, 3) uint8 -> one (rows*H, cols*W, 3) uint8 mosaic with `pad` pixels between images,
    the whole mosaic (gaps included) then upscaled `scale` times."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    n, h, w, c = images.shape
    cols = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    out = np.zeros((rows * (h + pad) + pad, cols * (w + pad) + pad, c), np.uint8)
    for i in range(n):
        r, k = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + k * (w + pad)
        out[y : y + h, x : x + w] = images[i]
    return upscale(out, scale)


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def save_png(path: str | Path, image: np.ndarray) -> None:
    """png_bytes written atomically to `path` (CheckpointError if it cannot be; the old file is kept)."""
    atomic_write_bytes(path, png_bytes(image))


def gif_bytes(
    frames: Sequence,
    duration_ms: int = 60,
    hold_last_ms: int = 1000,
    render: Callable[[Any], np.ndarray] | None = None,
    progress: ProgressFn | None = None,
) -> bytes:
    """An animated GIF (looping) of HxWx3 uint8 frames; the last frame is held a little longer.

    render: when given, frames[i] is anything it turns into such a frame (e.g. a batch into its mosaic,
    or a frame into its upscaled copy). Frames are rendered and handed to Pillow one at a time (its
    palette conversion is the slow part), so the big frames are never all in memory; `progress` is called
    as each one is taken."""
    n = len(frames)
    if n == 0:
        raise ValueError("a GIF needs at least one frame")

    def pil(i: int) -> Image.Image:
        if progress is not None:
            progress(i + 1, n)
        frame = frames[i] if render is None else render(frames[i])
        return Image.fromarray(np.ascontiguousarray(frame))

    durations = [duration_ms] * (n - 1) + [hold_last_ms]
    buf = io.BytesIO()
    pil(0).save(buf, format="GIF", save_all=True, append_images=(pil(i) for i in range(1, n)),
                duration=durations, loop=0, optimize=False, disposal=1)  # fmt: skip
    return buf.getvalue()


def save_gif(
    path: str | Path,
    frames: Sequence,
    duration_ms: int = 60,
    hold_last_ms: int = 1000,
    render: Callable[[Any], np.ndarray] | None = None,
    progress: ProgressFn | None = None,
) -> None:
    """gif_bytes written atomically to `path` (CheckpointError if it cannot be; the old file is kept)."""
    atomic_write_bytes(path, gif_bytes(frames, duration_ms, hold_last_ms, render, progress))
