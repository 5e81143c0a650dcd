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
