"""Image grids, PNG, GIF and animated WebP output (Pillow), shared by the CLI, the trainer and the GUI's
exports.

Every PNG, GIF and WebP the app writes goes through save_png or save_animation (GIF or WebP by
suffix, or save_gif / save_webp): atomic writes (a failure leaves the previous file as it was; see
engine.fileio.atomic_write_bytes).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ddpm_gui.engine.fileio import atomic_write_bytes
from ddpm_gui.errors import ConfigError

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


ANIMATION_FORMATS = {".gif": "GIF", ".webp": "WEBP"}  # file suffix -> Pillow format
WEBP_MAX_SIDE = 16383  # the WebP format's largest width or height


def animation_bytes(
    frames: Sequence,
    duration_ms: int = 60,
    hold_last_ms: int = 1000,
    render: Callable[[Any], np.ndarray] | None = None,
    progress: ProgressFn | None = None,
    fmt: str = "GIF",
) -> bytes:
    """A looping animation ("GIF", or "WEBP": lossless, so every pixel is kept) of HxWx3 uint8 frames; the
    last frame is held a little longer.

    render: when given, frames[i] is anything it turns into such a frame (e.g. a batch into its mosaic,
    or a frame into its upscaled copy). Frames are rendered one at a time as the encoder takes them and
    `progress` is called as each one is; the GIF encoder takes them one by one (its palette conversion is
    the slow part), so the big frames are never all in memory. Pillow's WebP encoder lists them first.
    Identical consecutive frames become one frame showing for their summed time (both encoders)."""
    n = len(frames)
    if n == 0:
        raise ValueError("an animation needs at least one frame")
    if fmt not in ANIMATION_FORMATS.values():
        raise ValueError(f"unknown animation format {fmt!r}")

    def pil(i: int) -> Image.Image:
        if progress is not None:
            progress(i + 1, n)
        frame = frames[i] if render is None else render(frames[i])
        return Image.fromarray(np.ascontiguousarray(frame))

    durations = [duration_ms] * (n - 1) + [hold_last_ms]
    first = pil(0)
    rest = (pil(i) for i in range(1, n))
    buf = io.BytesIO()
    if fmt == "GIF":
        first.save(buf, format="GIF", save_all=True, append_images=rest, duration=durations, loop=0,
                   optimize=False, disposal=1)  # fmt: skip
    else:
        if max(first.size) > WEBP_MAX_SIDE:
            raise ConfigError(
                f"A WebP image is at most {WEBP_MAX_SIDE} pixels wide and high; this animation is "
                f"{first.size[0]}x{first.size[1]}: save it as a GIF, or use fewer images."
            )
        first.save(buf, format="WEBP", save_all=True, append_images=rest, duration=durations, loop=0,
                   lossless=True)  # fmt: skip
    return buf.getvalue()


def save_animation(
    path: str | Path,
    frames: Sequence,
    duration_ms: int = 60,
    hold_last_ms: int = 1000,
    render: Callable[[Any], np.ndarray] | None = None,
    progress: ProgressFn | None = None,
    fmt: str | None = None,
) -> None:
    """animation_bytes written atomically to `path` (CheckpointError if it cannot be; the old file is kept),
    as `fmt` ("GIF" or "WEBP"), or by the suffix of `path` when fmt is None (.gif or .webp; ConfigError for
    any other)."""
    if fmt is None:
        suffix = Path(path).suffix.lower()
        if suffix not in ANIMATION_FORMATS:
            raise ConfigError(
                f"{Path(path).name}: an animation is saved as .gif or .webp; pick one of those."
            )
        fmt = ANIMATION_FORMATS[suffix]
    atomic_write_bytes(path, animation_bytes(frames, duration_ms, hold_last_ms, render, progress, fmt))


# One format whatever the suffix: animation_bytes and save_animation with their other arguments.
gif_bytes = partial(animation_bytes, fmt="GIF")
save_gif = partial(save_animation, fmt="GIF")
save_webp = partial(save_animation, fmt="WEBP")  # lossless
