"""The built-in dataset: coloured shapes, generated procedurally, no download.

Ten classes, each a clearly distinct *shape* drawn in a random saturated colour on a random darker,
plainer background, with position and size jitter that keeps the whole shape inside the image. It is
the default source everywhere because it needs no network, a small CPU UNet learns it within minutes,
and a small classifier tells the classes apart (so class-conditional sampling can be checked by eye).

How it is drawn (vectorised numpy, no per-pixel Python):
- every shape is a mask on a coordinate grid normalised to the shape's centre and radius, computed
  at 2x resolution and box-filtered down (2x2 mean): the mask becomes a coverage fraction, so edges
  are anti-aliased;
- colours are blended at the target resolution, `bg + (fg - bg) * coverage`, which is the same as
  drawing at 2x and downsampling because each image has one foreground and one background colour.

Determinism: images come in blocks of `_BLOCK` images, each drawn from its own generator seeded by
`(seed, stream, block)`. The same seed gives the same arrays, and the first k images of
`generate_builtin(n)` are the images of `generate_builtin(k)` for any n >= k (prefix-stable), so a
`limit` never changes which images you get. Labels: every aligned run of 10 images holds each class
once, in a random order, so classes are balanced and any slice of >= 10 images shows all of them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

# Bump when the drawing changes: it is part of the cache key, so old cached arrays are not reused.
BUILTIN_VERSION = 1

# The number of images "builtin" means when no count is given ("builtin:N" asks for N). 20,000 images
# take about 2 s to generate on a 2-core CPU and 61 MB of memory at 32x32, and are cached after the
# first load; enough variety for a small UNet, and quick to start.
BUILTIN_DEFAULT_COUNT = 20_000

BUILTIN_CLASSES: list[str] = [
    "circle",
    "square",
    "triangle",
    "plus",
    "ring",
    "horizontal stripes",
    "vertical stripes",
    "checkerboard",
    "diamond",
    "x",
]

_BLOCK = 1000  # images per independently seeded block (keeps the generator prefix-stable)
_MIN_SIZE = 8  # below this the stripes and checkerboard stop being recognisable

ProgressFn = Callable[[int, int, str], None]


def _masks(k: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean mask of class `k` on coordinates normalised so the shape spans about [-1, 1]."""
    au, av = np.abs(u), np.abs(v)
    box = np.maximum(au, av)
    if k == 0:  # circle
        return u * u + v * v <= 1.0
    if k == 1:  # square
        return box <= 0.8
    if k == 2:  # triangle, apex up, base at v = 0.8
        return (v <= 0.8) & (au <= (v + 1.0) / 1.8)
    if k == 3:  # plus
        return ((au <= 0.3) & (av <= 1.0)) | ((av <= 0.3) & (au <= 1.0))
    if k == 4:  # ring
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= 0.55**2)
    if k == 5:  # horizontal stripes: 5 bands in a square patch, 3 of them coloured
        return (box <= 0.9) & (np.floor((v + 0.9) / 0.36).astype(np.int32) % 2 == 0)
    if k == 6:  # vertical stripes
        return (box <= 0.9) & (np.floor((u + 0.9) / 0.36).astype(np.int32) % 2 == 0)
    if k == 7:  # checkerboard, 4x4 cells
        cells = np.floor((u + 0.9) / 0.45).astype(np.int32) + np.floor((v + 0.9) / 0.45).astype(np.int32)
        return (box <= 0.9) & (cells % 2 == 0)
    if k == 8:  # diamond
        return au + av <= 1.0
    if k == 9:  # x: the two diagonals, each about 0.4 wide
        return (box <= 0.85) & ((np.abs(u - v) <= 0.3) | (np.abs(u + v) <= 0.3))
    raise ValueError(f"no builtin class {k}")


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB, all inputs in [0, 1]; returns (..., 3) float32."""
    i = np.floor(h * 6.0).astype(np.int32) % 6
    f = h * 6.0 - np.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = np.zeros((*h.shape, 3), np.float32)
    for idx, (r, g, b) in enumerate(choices):
        sel = i == idx
        out[sel, 0], out[sel, 1], out[sel, 2] = r[sel], g[sel], b[sel]
    return out


def _block(count: int, seed: int, stream: int, block: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `count` images of block number `block` (each block is _BLOCK images)."""
    rng = np.random.default_rng([seed, stream, block])
    # Draw every parameter for the whole block, then keep the first `count`: the draws never depend on
    # `count`, which is what makes the generator prefix-stable.
    labels = np.concatenate([rng.permutation(10) for _ in range(_BLOCK // 10)])
    radius = rng.uniform(0.24, 0.34, _BLOCK) * size  # pixels at the target size
    room = size / 2 - radius - 1.0  # how far the centre may move and keep the shape inside
    cx = size / 2 + rng.uniform(-1, 1, _BLOCK) * room
    cy = size / 2 + rng.uniform(-1, 1, _BLOCK) * room
    fg_h = rng.uniform(0, 1, _BLOCK)
    fg = _hsv_to_rgb(fg_h, rng.uniform(0.65, 1.0, _BLOCK), rng.uniform(0.8, 1.0, _BLOCK))
    bg_h = (fg_h + rng.uniform(0.25, 0.75, _BLOCK)) % 1.0  # a different hue
    bg = _hsv_to_rgb(bg_h, rng.uniform(0.15, 0.6, _BLOCK), rng.uniform(0.08, 0.35, _BLOCK))
    # Keep the background at most half as bright (Rec. 601 luma) as the shape: a saturated blue is
    # dark, and would otherwise sit on a background as bright as itself.
    luma = np.array([0.299, 0.587, 0.114], np.float32)
    fg_y, bg_y = fg @ luma, bg @ luma
    bg *= np.minimum(1.0, 0.5 * fg_y / np.maximum(bg_y, 1e-6))[:, None]

    labels, radius, cx, cy, fg, bg = (a[:count] for a in (labels, radius, cx, cy, fg, bg))
    big = 2 * size  # masks are drawn at 2x and box-filtered down
    grid = ((np.arange(big, dtype=np.float32) + 0.5) / 2.0)[None, :]  # pixel centres, target units
    coverage = np.empty((count, size, size), np.float32)
    for k in range(10):
        sel = np.flatnonzero(labels == k)
        if sel.size == 0:
            continue
        r = radius[sel, None, None].astype(np.float32)
        u = (grid[None, :, :] - cx[sel, None, None].astype(np.float32)) / r  # (n, 1, big): x
        v = (grid[None, :, :].transpose(0, 2, 1) - cy[sel, None, None].astype(np.float32)) / r  # (n, big, 1)
        u, v = np.broadcast_arrays(u, v)
        m = _masks(k, u, v).astype(np.float32)  # (n, big, big)
        coverage[sel] = m.reshape(sel.size, size, 2, size, 2).mean(axis=(2, 4))
    img = bg[:, None, None, :] + (fg - bg)[:, None, None, :] * coverage[..., None]
    images = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    return images, labels.astype(np.int64)


def generate_builtin(
    n: int,
    seed: int = 0,
    size: int = 32,
    *,
    stream: int = 0,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Generate `n` shape images: (n, size, size, 3) uint8 and (n,) int64 labels into BUILTIN_CLASSES.

    `stream` picks an independent set of images for the same seed (the loader uses 0 for the "train"
    split and another number for any other split). `progress(done, total, message)` is called after
    each block of 1,000 images; when `cancel` is set, generation stops with `ddpm_gui.data.Cancelled`.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if size < _MIN_SIZE:
        raise ValueError(f"size must be >= {_MIN_SIZE}, got {size}")
    images = np.empty((n, size, size, 3), np.uint8)
    labels = np.empty((n,), np.int64)
    for block, start in enumerate(range(0, n, _BLOCK)):
        if cancel is not None and cancel.is_set():
            from ddpm_gui.data.sources import Cancelled

            raise Cancelled(
                "Generating the built-in dataset was cancelled; start it again when you are ready."
            )
        count = min(_BLOCK, n - start)
        images[start : start + count], labels[start : start + count] = _block(
            count, seed, stream, block, size
        )
        if progress is not None:
            progress(start + count, n, "Generating built-in shapes")
    return images, labels
