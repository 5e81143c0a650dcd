"""Image grids, PNG and GIF output (Pillow), shared by the CLI, the trainer and the GUI's exports."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image


def make_grid(images: np.ndarray, columns: int | None = None, pad: int = 1, scale: int = 1) -> np.ndarray:
    """(N, H, W, 3) uint8 -> one (rows*H, cols*W, 3) uint8 mosaic with `pad` pixels between images."""
    images = np.asarray(images)
    n, h, w, c = images.shape
    cols = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    out = np.zeros((rows * (h + pad) + pad, cols * (w + pad) + pad, c), np.uint8)
    for i in range(n):
        r, k = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + k * (w + pad)
        out[y : y + h, x : x + w] = images[i]
    if scale > 1:
        out = out.repeat(scale, 0).repeat(scale, 1)
    return out


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def save_png(path: str | Path, image: np.ndarray) -> None:
    from ddpm_gui.engine.checkpoint import atomic_write_bytes

    atomic_write_bytes(path, png_bytes(image))


def gif_bytes(frames: Sequence[np.ndarray], duration_ms: int = 60, hold_last_ms: int = 1000) -> bytes:
    """An animated GIF (looping) of HxWx3 uint8 frames; the last frame is held a little longer."""
    pil = [Image.fromarray(f) for f in frames]
    durations = [duration_ms] * (len(pil) - 1) + [hold_last_ms]
    buf = io.BytesIO()
    pil[0].save(buf, format="GIF", save_all=True, append_images=pil[1:], duration=durations, loop=0,
                optimize=False, disposal=1)
    return buf.getvalue()


def save_gif(path: str | Path, frames: Sequence[np.ndarray], duration_ms: int = 60) -> None:
    from ddpm_gui.engine.checkpoint import atomic_write_bytes

    atomic_write_bytes(path, gif_bytes(frames, duration_ms))
