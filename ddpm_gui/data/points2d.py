"""2D point clouds for the toy diffusion mode: two moons, a swiss roll, a mixture of Gaussians, or points a
person drew. Plain numpy, seeded, no Qt and no torch.

Every cloud is an (n, 2) float32 array scaled to lie in about [-1, 1] on both axes, the range the image
models' pixels use, so that the same noise schedules make sense for both: x_T ~ N(0, I) is then wider than
the data, as it is for images.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ddpm_gui.errors import DataError

MAX_POINTS = 100_000  # a cloud larger than this is slow to draw and adds nothing to a 2D picture
DRAWN_JITTER = 0.02  # the spread put around each drawn point, so a few clicks make a density, not spikes


def two_moons(n: int, rng: np.random.Generator, noise: float = 0.05) -> np.ndarray:
    """Two interleaved half circles (scikit-learn's make_moons): the upper one centred at (0, 0), the lower
    one at (1, 0.5) and flipped, with Gaussian noise of std `noise` relative to a radius of 1."""
    upper = n // 2
    a = rng.uniform(0, math.pi, n)
    x = np.where(np.arange(n) < upper, np.cos(a), 1 - np.cos(a))
    y = np.where(np.arange(n) < upper, np.sin(a), 0.5 - np.sin(a))
    pts = np.stack([x, y], 1) + rng.normal(0, noise, (n, 2))
    # the moons span x in [-1, 2], y in [-0.5, 1]: the same affine map for every n, unlike _fit
    return ((pts - [0.5, 0.25]) / 1.65).astype(np.float32)


def swiss_roll(n: int, rng: np.random.Generator, noise: float = 0.02) -> np.ndarray:
    """A spiral of 1.5 turns whose radius grows with the angle (scikit-learn's make_swiss_roll seen from
    above): angle a in [1.5 pi, 4.5 pi], point a * (cos a, sin a), then scaled to [-0.9, 0.9]."""
    a = 1.5 * math.pi * (1 + 2 * rng.uniform(0, 1, n))
    pts = np.stack([a * np.cos(a), a * np.sin(a)], 1) / (4.5 * math.pi)  # radius at most 1
    return (pts * 0.9 + rng.normal(0, noise, (n, 2))).astype(np.float32)


def mixture_centers(k: int, radius: float = 0.75) -> np.ndarray:
    """The means of the Gaussian mixture: k points evenly spaced on a circle (the first on the x axis)."""
    a = 2 * math.pi * np.arange(k) / k
    return (radius * np.stack([np.cos(a), np.sin(a)], 1)).astype(np.float32)


def gaussian_mixture(n: int, rng: np.random.Generator, k: int = 8, std: float = 0.06) -> np.ndarray:
    """k Gaussians of std `std` with equal weights, their means on a circle of radius 0.75."""
    comp = rng.integers(0, k, n)
    return (mixture_centers(k)[comp] + rng.normal(0, std, (n, 2))).astype(np.float32)


# name -> generator(n, rng); the 2D tab and the command line offer these, "drawn" comes from the mouse
GENERATORS: dict[str, Callable[[int, np.random.Generator], np.ndarray]] = {
    "moons": two_moons,
    "swiss-roll": swiss_roll,
    "gaussians": gaussian_mixture,
}
DRAWN = "drawn"
DATASETS = (*GENERATORS, DRAWN)


def _check_n(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or not 1 <= n <= MAX_POINTS:
        raise DataError(f"The number of points must be a whole number from 1 to {MAX_POINTS:,}, got {n!r}.")
    return int(n)


def make_points(name: str, n: int, seed: int = 0) -> np.ndarray:
    """n points of the built-in cloud `name` (see GENERATORS), the same ones for the same seed."""
    if name not in GENERATORS:
        hint = " (drawn points come from drawn_points)" if name == DRAWN else ""
        raise DataError(f"Unknown 2D dataset {name!r}{hint}: choose one of {', '.join(GENERATORS)}.")
    return GENERATORS[name](_check_n(n), np.random.default_rng(seed))


def check_drawn(points) -> np.ndarray:
    """Points a person drew, as an (m, 2) float32 array; a DataError says what is wrong with them."""
    try:
        pts = np.asarray(points, dtype=np.float32)
    except (TypeError, ValueError):
        raise DataError("Drawn points must be pairs of numbers (x, y).") from None
    if pts.size == 0:
        raise DataError("No points drawn yet: click on the plot to add points, then train.")
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise DataError(f"Drawn points must be pairs (x, y), got an array of shape {pts.shape}.")
    if not np.isfinite(pts).all():
        raise DataError("A drawn point is not a finite number: clear the points and draw them again.")
    return pts


def drawn_points(points, n: int, seed: int = 0, jitter: float = DRAWN_JITTER) -> np.ndarray:
    """n points around the drawn ones: each a drawn point picked uniformly (with replacement) plus Gaussian
    noise of std `jitter`. Drawn points keep their coordinates (the plot's), they are not rescaled."""
    pts = check_drawn(points)
    rng = np.random.default_rng(seed)
    picks = pts[rng.integers(0, len(pts), _check_n(n))]
    return (picks + rng.normal(0, jitter, picks.shape)).astype(np.float32)


def load_points(name: str, n: int, seed: int = 0, drawn=None) -> np.ndarray:
    """One entry for every dataset: a built-in cloud by name, or with name "drawn" the cloud around `drawn`."""
    if name == DRAWN:
        return drawn_points(drawn if drawn is not None else [], n, seed)
    return make_points(name, n, seed)
