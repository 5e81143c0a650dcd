"""Plain-text figures shared by the GUI and the command line (no Qt here)."""

from __future__ import annotations

import math


def fmt_duration(s: float | None) -> str:
    """A duration for people: "5s", "2m 05s", "3h 01m"; "–" when unknown (None, nan, negative)."""
    if s is None or not math.isfinite(s) or s < 0:
        return "–"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    if h:
        return f"{h}h {m:02d}m"
    if m:
        return f"{m}m {sec:02d}s"
    return f"{sec}s"


def fmt_count(n: float | None) -> str:
    """A large count with a unit prefix: "725.3M", "1.2G", "950"; "?" when unknown."""
    if n is None:
        return "?"
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.1f}{unit}"
    return f"{n:.0f}"


def describe_data(data) -> str:
    """One line about an ImageData: how many images, and its classes (or that it has no labels)."""
    labelled = data.labels is not None and data.num_classes
    return f"{len(data):,} images" + (f", {data.num_classes} classes" if labelled else ", no labels")
