"""Image folders: one sub-folder per class, or the images directly inside for unlabelled data.

    pets/cat/001.jpg, pets/cat/more/002.png, pets/dog/003.webp  ->  classes ["cat", "dog"]
    photos/a.jpg, photos/b.png                                  ->  no labels

Rules (the same as torchvision's ImageFolder where they overlap):
- the class is the first-level sub-folder; deeper folders belong to it;
- only files with an image extension (IMAGE_EXTENSIONS, any case) are considered; other files
  (.txt, .csv, ...) are ignored and *not* counted in `skipped`;
- hidden files and folders (starting with '.') and `__MACOSX` are ignored;
- when class sub-folders exist, images lying directly in the root are ignored (logged);
- each file is decoded by the app's one image loader (`imageio.load_image`: its crop policy, its EXIF
  and colour-mode handling); files it refuses (corrupt, truncated, unsupported, over its MAX_FILE_BYTES
  or MAX_PIXELS) are skipped, logged and counted in `skipped`.

Order: the files of each class are sorted by path, then taken from the classes in turn (one of each
class, then the next of each...), so that a `limit` keeps every class.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from itertools import zip_longest

import numpy as np

from ddpm_gui.data.cache import Cached
from ddpm_gui.data.imageio import load_image
from ddpm_gui.data.sources import IMAGE_EXTENSIONS, Reporter, stack
from ddpm_gui.errors import DataError

log = logging.getLogger(__name__)

_BATCH = 256  # images decoded between two progress reports / cancel checks
_IGNORED_DIRS = {"__MACOSX"}


@dataclass
class FolderScan:
    root: str
    files: list[str]  # absolute paths, in loading order
    labels: list[int] | None  # one per file, or None for an unlabelled folder
    class_names: list[str] | None
    digest: str  # hash of (path, size, mtime) of every image file: the cache key
    ignored_in_root: int = 0  # images directly in the root, ignored because class folders exist


def _walk(root: str, rep: Reporter) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime_ns) of every image file under root, sorted by path."""
    found: list[tuple[str, int, int]] = []
    stack_dirs = [root]
    seen: set[str] = set()  # real paths: a link back up the tree is not followed twice
    while stack_dirs:
        rep.check()
        d = stack_dirs.pop()
        real = os.path.realpath(d)
        if real in seen:
            continue
        seen.add(real)
        try:
            entries = list(os.scandir(d))
        except OSError as e:
            log.warning("Cannot list %s: %s", d, e)
            continue
        for e in entries:
            if e.name.startswith(".") or e.name in _IGNORED_DIRS:
                continue
            try:
                if e.is_dir():
                    stack_dirs.append(e.path)
                elif e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS:
                    st = e.stat()
                    found.append((os.path.relpath(e.path, root), st.st_size, st.st_mtime_ns))
            except OSError as err:  # a broken link or a file removed while we look
                log.warning("Cannot read %s: %s", e.path, err)
    found.sort()
    return found


def scan_folder(root: str, rep: Reporter) -> FolderScan:
    """List the image files of `root` and their classes (no decoding)."""
    found = _walk(root, rep)
    if not found:
        raise DataError(
            f"No images found in '{root}': put {', '.join(IMAGE_EXTENSIONS)} files in it, "
            "or in one sub-folder per class."
        )
    h = hashlib.sha256()
    for rel, size, mtime in found:
        h.update(f"{rel}\0{size}\0{mtime}\n".encode("utf-8", "surrogateescape"))
    by_class: dict[str, list[str]] = {}
    in_root: list[str] = []
    for rel, _, _ in found:
        parts = rel.split(os.sep)
        (in_root if len(parts) == 1 else by_class.setdefault(parts[0], [])).append(os.path.join(root, rel))
    if not by_class:
        return FolderScan(root, in_root, None, None, h.hexdigest())
    if in_root:
        log.warning("Ignoring %d images directly in %s: its sub-folders are the classes.", len(in_root), root)
    names = sorted(by_class)
    files: list[str] = []
    labels: list[int] = []
    for row in zip_longest(*(by_class[n] for n in names)):  # the classes in turn
        for label, f in enumerate(row):
            if f is not None:
                files.append(f)
                labels.append(label)
    return FolderScan(root, files, labels, names, h.hexdigest(), len(in_root))


def _decode_one(path: str, size: int) -> np.ndarray | None:
    try:
        return load_image(path, size)
    except DataError as e:  # every refusal of the loader, one line each
        log.warning("Skipping: %s", e)
    return None


def decode_folder(scan: FolderScan, size: int, limit: int | None, rep: Reporter) -> Cached:
    """Decode the scanned files (the first `limit`) to (N, size, size, 3) uint8.

    One thread: a thread pool measured no faster here (2 cores; 32x32 PNGs and 640x480 JPEGs alike),
    the per-image cost being mostly Python inside PIL, under the GIL.
    """
    files = scan.files if limit is None else scan.files[:limit]
    total = len(files)
    out: list[np.ndarray] = []
    keep: list[int] = []
    for start in range(0, total, _BATCH):
        rep(start, total, f"Decoding images in {os.path.basename(scan.root)}")
        for i, f in enumerate(files[start : start + _BATCH], start):
            a = _decode_one(f, size)
            if a is not None:
                out.append(a)
                keep.append(i)
    rep.check()
    skipped = total - len(out)
    if not out:
        raise DataError(
            f"None of the {total} image files in '{scan.root}' could be decoded: check that they are "
            f"valid {', '.join(IMAGE_EXTENSIONS)} images."
        )
    labels = None if scan.labels is None else np.asarray(scan.labels, np.int64)[keep]
    name = f"{os.path.basename(os.path.normpath(scan.root))} (folder)"
    return Cached(stack(out, size), labels, scan.class_names, name, skipped)
