"""What a load left out, and why: one record per skipped file, folder or table row.

Every source collects its refusals in a `SkipLog` (a count, and the first MAX_LISTED names with their
reasons); `ImageData.skipped` / `skipped_items` carry them to the Data tab and the command line, and the
cache file keeps them, so that a dataset read from the cache tells the same story.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import NamedTuple

from ddpm_gui.errors import DataError

log = logging.getLogger(__name__)

MAX_LISTED = 20  # names kept per load; the count goes on past them
SHOWN = 3  # names in a one-line summary


class Skipped(NamedTuple):
    name: str  # a path relative to the folder loaded ("cat/broken.png"), or "row 17" of a table
    reason: str  # why, and what to do: "an image beside the class folders: move it into a class folder"


def reason_of(error: DataError, name: str) -> str:
    """The image loader's message about `name`, without the name it starts with and the final full stop:
    "broken.png is not an image ..." -> "is not an image ..."."""
    text = str(error).strip()
    if text.startswith(name + " "):
        text = text[len(name) + 1 :]
    return text.rstrip(".")


class SkipLog:
    """Collects what a load leaves out: `count` of them, the first MAX_LISTED in `items`."""

    def __init__(self, items: Sequence[Skipped] = ()):
        self.items: list[Skipped] = []
        self.count = 0
        for s in items:
            self.add(s.name, s.reason)

    def add(self, name: str, reason: str) -> None:
        self.count += 1
        if len(self.items) < MAX_LISTED:
            self.items.append(Skipped(name, reason))
        log.info("Skipped %s: %s", name, reason)

    def add_error(self, name: str, error: DataError) -> None:
        """A refusal of the image loader, whose message names the image as `name`."""
        self.add(name, reason_of(error, name))


def describe_skipped(count: int, items: Sequence[Skipped], shown: int = SHOWN) -> str:
    """ "none", or "3 — loose.png (an image beside the class folders: ...), x.png (...), and 1 more"."""
    if count <= 0:
        return "none"
    parts = [f"{s.name} ({s.reason})" for s in items[:shown]]
    if count > len(parts):
        parts.append(f"and {count - len(parts):,} more")
    return f"{count:,} — " + ", ".join(parts)
