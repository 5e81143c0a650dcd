"""The decoded-array cache: each source is decoded once into one uint8 `.npz` file and reused.

A cache file is named `<slug>-<key>.npz`, where the key hashes everything that changes the result
(the source resolved to an absolute path, the size and mtime of local files, split, image size,
limit, and CACHE_FORMAT_VERSION). It holds plain arrays only, so it loads with `allow_pickle=False`:

    images       (N, H, W, 3) uint8
    labels       (N,) int64             absent when the source has no labels
    class_names  (K,) unicode           absent when the source has no labels
    meta         0-d unicode, JSON: name, skipped (a count), skipped_items ([name, reason] pairs), format

Writes are atomic (engine.fileio: a temporary file in the same folder, then a rename), so a reader never
sees half a file. A file that cannot be read or does not look right is deleted and
rebuilt: a broken cache must never stop anyone from loading their data.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ddpm_gui.data.skips import Skipped
from ddpm_gui.engine.fileio import WriteFailed, atomic_write_bytes

log = logging.getLogger(__name__)

# Bump when the decoding changes (resizing, colour conversion, what is skipped, file layout): old files
# stop matching.
CACHE_FORMAT_VERSION = 2


def default_cache_dir() -> Path:
    """Where decoded arrays live: $DDPM_GUI_CACHE, else $XDG_CACHE_HOME/ddpm_gui/data, else ~/.cache/ddpm_gui/data."""
    env = os.environ.get("DDPM_GUI_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(base).expanduser() / "ddpm_gui" / "data"


def cache_key(parts: dict) -> str:
    """A short stable hash of `parts` (JSON-able) plus the cache format version."""
    blob = json.dumps({"format": CACHE_FORMAT_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:20]


def cache_path(cache_dir: str | Path | None, slug: str, key: str) -> Path:
    """The file for (slug, key); `slug` is only there to make the folder readable by people."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", slug).strip("._-")[:60] or "data"
    return Path(cache_dir if cache_dir is not None else default_cache_dir()) / f"{slug}-{key}.npz"


@dataclass
class Cached:
    images: np.ndarray
    labels: np.ndarray | None
    class_names: list[str] | None
    name: str
    skipped: int  # how many files, folders or rows were left out
    skipped_items: tuple[Skipped, ...] = ()  # the first of them (skips.MAX_LISTED), with the reasons


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def read_cache(path: Path, image_size: int) -> Cached | None:
    """The cached arrays at `path`, or None when there is none; a corrupt file is deleted."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            meta = json.loads(str(f["meta"][()]))
            if meta.get("format") != CACHE_FORMAT_VERSION:
                raise ValueError(f"format {meta.get('format')!r}")
            images = f["images"]
            labels = f["labels"] if "labels" in f.files else None
            names = [str(s) for s in f["class_names"]] if "class_names" in f.files else None
        items = tuple(Skipped(str(n), str(r)) for n, r in meta.get("skipped_items", []))
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (image_size, image_size, 3):
            raise ValueError(f"images {images.dtype} {images.shape}")
        if labels is not None and (labels.dtype != np.int64 or labels.shape != (len(images),)):
            raise ValueError(f"labels {labels.dtype} {labels.shape}")
        return Cached(
            np.ascontiguousarray(images), labels, names, str(meta["name"]), int(meta["skipped"]), items
        )
    except Exception as e:  # any unreadable cache is rebuilt, whatever numpy/zipfile raised
        log.warning(
            "Cache file %s is unreadable (%s: %s); deleting it and decoding again.", path, type(e).__name__, e
        )
        _remove(path)
        return None


def write_cache(path: Path, c: Cached) -> bool:
    """Write atomically (temporary file + os.replace); False (and a log line) when it cannot be written."""
    meta = {
        "format": CACHE_FORMAT_VERSION,
        "name": c.name,
        "skipped": int(c.skipped),
        "skipped_items": [list(s) for s in c.skipped_items],
    }
    arrays: dict[str, np.ndarray] = {"images": c.images, "meta": np.array(json.dumps(meta))}
    if c.labels is not None:
        arrays["labels"] = c.labels.astype(np.int64, copy=False)
        arrays["class_names"] = np.array(list(c.class_names or []), dtype=str)
    try:
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        atomic_write_bytes(path, buf.getbuffer())  # the app's own temp name, the umask respected
        return True
    except (OSError, WriteFailed) as e:
        log.warning(
            "Could not write the cache file %s (%s); the data will be decoded again next time.", path, e
        )
        return False
