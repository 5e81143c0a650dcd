"""Image folders: one sub-folder per class, or the images directly inside for unlabelled data.

    pets/cat/001.jpg, pets/cat/more/002.png, pets/dog/003.webp  ->  classes ["cat", "dog"]
    photos/a.jpg, photos/b.png                                  ->  no labels

Rules (the same as torchvision's ImageFolder where they overlap):
- the class is the first-level sub-folder; deeper folders belong to it;
- only files with an image extension (IMAGE_EXTENSIONS, any case) are considered; other files
  (.txt, .csv, ...) are ignored and *not* counted as skipped;
- hidden files and folders (starting with '.') are ignored, not counted;
- folders that a NAS or an operating system writes beside the images (SYSTEM_DIRS: Synology's @eaDir
  thumbnails, recycle bins, __MACOSX...) are never a class nor images of one, at any depth: skipped;
- when class sub-folders exist, images lying directly in the root are skipped (LOOSE_REASON);
- each file is decoded by the app's one image loader (`imageio.load_image`: its crop policy, its EXIF
  and colour-mode handling); files it refuses (corrupt, truncated, unsupported, over its MAX_FILE_BYTES
  or MAX_PIXELS) are skipped, and so are links to missing files and folders that cannot be listed.
Every skip is recorded with its reason (`skips.SkipLog`): ImageData.skipped_items names them.

Order: the files of each class are sorted by path, then taken from the classes in turn (one of each
class, then the next of each...), so that a `limit` keeps every class.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from itertools import zip_longest

import numpy as np

from ddpm_gui.data.cache import Cached
from ddpm_gui.data.imageio import load_image
from ddpm_gui.data.skips import SkipLog, Skipped
from ddpm_gui.data.sources import IMAGE_EXTENSIONS, Reporter, stack
from ddpm_gui.errors import DataError

_BATCH = 256  # images decoded between two progress reports / cancel checks

# Folders written beside the images by a NAS or an operating system (compared in lower case): what they are.
SYSTEM_DIRS = {
    "@eadir": "Synology's thumbnail folder",
    "#recycle": "Synology's recycle bin",
    "#snapshot": "Synology's snapshot folder",
    "@recycle": "QNAP's recycle bin",
    "@recently-snapshot": "QNAP's snapshot folder",
    "$recycle.bin": "the Windows recycle bin",
    "system volume information": "a Windows system folder",
    "lost+found": "a file-system repair folder",
    "__macosx": "macOS archive metadata",
}
LOOSE_REASON = "an image beside the class folders: move it into a class folder"


@dataclass
class FolderScan:
    root: str
    files: list[str]  # absolute paths, in loading order
    labels: list[int] | None  # one per file, or None for an unlabelled folder
    class_names: list[str] | None
    digest: str  # hash of (path, size, mtime) of every image file and of what was skipped: the cache key
    skipped: list[Skipped] = field(default_factory=list)  # left out before decoding, with the reasons


def _shown(path: str, root: str) -> str:
    """`path` relative to `root`, printable (a name that is not valid UTF-8 gets replacement characters)."""
    rel = os.path.relpath(path, root)
    return rel.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _why(err: OSError) -> str:
    return err.strerror or type(err).__name__


def _visit(e: os.DirEntry, root: str, found: list, skipped: list[Skipped], pending: list[str]) -> None:
    """Sort one directory entry: a folder to walk, an image file found, or something skipped."""
    if e.name.startswith("."):
        return
    try:
        if e.is_dir():
            what = SYSTEM_DIRS.get(e.name.lower())
            if what is None:
                pending.append(e.path)
            else:
                skipped.append(Skipped(_shown(e.path, root), f"{what}: not a class, left out"))
            return
        if os.path.splitext(e.name)[1].lower() not in IMAGE_EXTENSIONS:
            return
        if e.is_file():
            st = e.stat()
            found.append((os.path.relpath(e.path, root), st.st_size, st.st_mtime_ns))
        elif e.is_symlink() and not os.path.exists(e.path):
            skipped.append(Skipped(_shown(e.path, root), "a link to a file that is missing"))
        else:
            skipped.append(Skipped(_shown(e.path, root), "not a regular file (a pipe, socket or device)"))
    except OSError as err:  # a file removed while we look, or one we may not read
        skipped.append(Skipped(_shown(e.path, root), f"cannot be read ({_why(err)})"))


def _walk(root: str, rep: Reporter) -> tuple[list[tuple[str, int, int]], list[Skipped]]:
    """(relative path, size, mtime_ns) of every image file under root, sorted by path; and what was skipped."""
    found: list[tuple[str, int, int]] = []
    skipped: list[Skipped] = []
    pending = [root]
    seen: set[str] = set()  # real paths: a link back up the tree is not followed twice
    while pending:
        rep.check()
        d = pending.pop()
        real = os.path.realpath(d)
        if real in seen:
            continue
        seen.add(real)
        try:
            entries = list(os.scandir(d))
        except OSError as err:
            skipped.append(Skipped(_shown(d, root), f"cannot be listed ({_why(err)}): check its permissions"))
            continue
        for e in entries:
            _visit(e, root, found, skipped, pending)
    found.sort()
    skipped.sort()
    return found, skipped


def scan_folder(root: str, rep: Reporter) -> FolderScan:
    """List the image files of `root`, their classes and what is left out (no decoding)."""
    found, skipped = _walk(root, rep)
    if not found:
        raise DataError(
            f"No images found in '{root}': put {', '.join(IMAGE_EXTENSIONS)} files in it, "
            "or in one sub-folder per class."
        )
    h = hashlib.sha256()
    for rel, size, mtime in found:
        h.update(f"{rel}\0{size}\0{mtime}\n".encode("utf-8", "surrogateescape"))
    for s in skipped:
        h.update(f"skipped\0{s.name}\0{s.reason}\n".encode())
    by_class: dict[str, list[str]] = {}
    in_root: list[str] = []
    for rel, _, _ in found:
        parts = rel.split(os.sep)
        (in_root if len(parts) == 1 else by_class.setdefault(parts[0], [])).append(os.path.join(root, rel))
    if not by_class:
        return FolderScan(root, in_root, None, None, h.hexdigest(), skipped)
    loose = [Skipped(_shown(f, root), LOOSE_REASON) for f in in_root]
    names = sorted(by_class)
    files: list[str] = []
    labels: list[int] = []
    for row in zip_longest(*(by_class[n] for n in names)):  # the classes in turn
        for label, f in enumerate(row):
            if f is not None:
                files.append(f)
                labels.append(label)
    return FolderScan(root, files, labels, names, h.hexdigest(), loose + skipped)


def decode_folder(scan: FolderScan, size: int, limit: int | None, rep: Reporter) -> Cached:
    """Decode the scanned files (the first `limit`) to (N, size, size, 3) uint8.

    One thread: a thread pool measured no faster here (2 cores; 32x32 PNGs and 640x480 JPEGs alike),
    the per-image cost being mostly Python inside PIL, under the GIL.
    """
    files = scan.files if limit is None else scan.files[:limit]
    total = len(files)
    skips = SkipLog(scan.skipped)
    out: list[np.ndarray] = []
    keep: list[int] = []
    first = ""  # the first refusal, for the message when nothing decodes
    for start in range(0, total, _BATCH):
        rep(start, total, f"Decoding images in {os.path.basename(scan.root)}")
        for i, f in enumerate(files[start : start + _BATCH], start):
            name = _shown(f, scan.root)
            try:
                out.append(load_image(f, size, name=name))
                keep.append(i)
            except DataError as e:  # every refusal of the loader, one line each
                skips.add_error(name, e)
                first = first or str(e).rstrip(".")
    rep.check()
    if not out:
        raise DataError(
            f"None of the {total} image files in '{scan.root}' could be decoded (the first: {first}): check "
            f"that they are valid {', '.join(IMAGE_EXTENSIONS)} images."
        )
    labels = None if scan.labels is None else np.asarray(scan.labels, np.int64)[keep]
    name = f"{os.path.basename(os.path.normpath(scan.root))} (folder)"
    return Cached(stack(out, size), labels, scan.class_names, name, skips.count, tuple(skips.items))
