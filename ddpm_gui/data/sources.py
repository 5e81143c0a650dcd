"""Load images from any source into one uint8 array: `load_data(spec) -> ImageData`.

A *spec* is one string, so that the CLI, the GUI's source box and a saved run config all say the
same thing:

    "builtin"            the generated shapes dataset, BUILTIN_DEFAULT_COUNT (20,000) images
    "builtin:N"          the same, N images
    an existing folder   a `save_to_disk` folder (`saved_layout` checks its whole signature),
                         otherwise an image folder: one sub-folder per class, or the images
                         directly inside it for an unlabelled dataset
    an existing file     a .parquet or .arrow file
    a CIFAR archive      cifar-10-python.tar.gz, cifar-10-binary.tar.gz, cifar-100-python.tar.gz (or
                         -binary), or the folder it extracts to; then ':test' for the test split and,
                         for CIFAR-100, ':coarse' for the 20 superclasses (see `cifar.py`)
    anything else        a Hugging Face Hub dataset id: "cifar10", "mnist", "uoft-cs/cifar10",
                         optionally with a config: "id:config"

Hub ids, parquet/arrow files and save_to_disk folders are read with `datasets`, the optional `hub`
extra (see `hub.require_datasets`); the built-in shapes and image folders need only Pillow.

Every image, of a folder or of a table row, is decoded by the app's one image loader (`imageio.py`: its
limits, its RGB conversion and its crop policy) at `image_size` (CIFAR's pixels are already RGB arrays:
only its resizing applies), and the result is written to a cache file (see `cache.py`); the next call
with the same arguments loads that file and decodes nothing. What could not be used is left out and
listed (`ImageData.skipped_items`, see `skips.py`). Nothing here imports Qt: the GUI runs `load_data` in
a worker thread, passes a `progress` callback and a `cancel` event, and shows errors (DataError) as they
are.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ddpm_gui.data.cache import Cached, cache_key, cache_path, read_cache, write_cache
from ddpm_gui.data.skips import Skipped, describe_skipped
from ddpm_gui.errors import DataError

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int, str], None]  # (done, total, message); total == 0: size not known yet

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
TABLE_EXTENSIONS = (".parquet", ".arrow")
# What datasets' save_to_disk writes: a Dataset folder holds the first two and the .arrow shards that
# state.json lists; a DatasetDict folder holds the third and one Dataset folder per split it names.
DATASET_INFO, DATASET_STATE, DATASET_DICT = "dataset_info.json", "state.json", "dataset_dict.json"
_MAX_JSON_BYTES = 1024 * 1024  # save_to_disk's JSON files are small; a larger one is someone else's
ACCEPTED = (
    f"a folder of images ({', '.join(IMAGE_EXTENSIONS)}; one sub-folder per class, or the images directly "
    "inside), a folder written by datasets' save_to_disk, a .parquet or .arrow file, a CIFAR-10/100 archive "
    "(cifar-10-python.tar.gz...) or its extracted folder, 'builtin' or a Hub id"
)
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 8, 1024

# A Hub dataset id: "name" or "namespace/name" (letters, digits, '-', '_', '.'), optional ":config".
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?(:[A-Za-z0-9._-]+)?$")


class Cancelled(DataError):
    """Raised by `load_data` when its `cancel` event is set; nothing is cached."""


@dataclass(eq=False)
class ImageData:
    """A decoded dataset: every image the same size, RGB, uint8."""

    images: np.ndarray  # (N, H, W, 3) uint8, C-contiguous
    labels: np.ndarray | None  # (N,) int64, or None when the source has no labels
    class_names: list[str] | None  # index -> name
    name: str  # for people: "builtin shapes (seed 0)", "cifar10 (train)"
    source: str  # the spec string it was loaded from
    cache_path: Path | None  # the cache file it came from or was written to
    # What was left out: files the image loader refused (damaged, too large), loose images beside class
    # folders, system folders (Synology's @eaDir...), table rows that did not decode. `skipped` counts
    # them all; `skipped_items` names the first of them (skips.MAX_LISTED) with the reason.
    skipped: int = 0
    skipped_items: tuple[Skipped, ...] = ()

    def __post_init__(self) -> None:
        imgs = np.ascontiguousarray(self.images)
        if imgs.dtype != np.uint8 or imgs.ndim != 4 or imgs.shape[-1] != 3:
            raise ValueError(f"images must be (N, H, W, 3) uint8, got {imgs.dtype} {imgs.shape}")
        self.images = imgs
        if self.labels is not None:
            self.labels = np.ascontiguousarray(self.labels, dtype=np.int64)
            if self.labels.shape != (len(imgs),):
                raise ValueError(f"labels must be ({len(imgs)},), got {self.labels.shape}")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def size(self) -> int:
        """Image height (= width) in pixels."""
        return int(self.images.shape[1])

    @property
    def num_classes(self) -> int:
        """Number of classes; 0 when the data has no labels."""
        if self.labels is None:
            return 0
        if self.class_names:
            return len(self.class_names)
        return int(self.labels.max()) + 1 if len(self.labels) else 0

    def subset(self, idx) -> ImageData:
        """The rows `idx` (a slice, an index array or a boolean mask), as a new ImageData."""
        if isinstance(idx, (int, np.integer)):
            idx = [int(idx)]
        labels = None if self.labels is None else self.labels[idx]
        return ImageData(
            np.ascontiguousarray(self.images[idx]),
            labels,
            None if self.class_names is None else list(self.class_names),
            self.name,
            self.source,
            self.cache_path,
            self.skipped,
            self.skipped_items,
        )

    def skipped_text(self, shown: int = 3) -> str:
        """ "none", or "3 — loose.png (an image beside the class folders: ...), ..., and 1 more"."""
        return describe_skipped(self.skipped, self.skipped_items, shown)

    def __repr__(self) -> str:
        return (
            f"ImageData({self.name!r}, {len(self)} images {self.size}x{self.size}, "
            f"{self.num_classes} classes, skipped={self.skipped}, source={self.source!r})"
        )


# ---------------------------------------------------------------------------------------------------
# Progress and cancellation


class Reporter:
    """Throttles `progress` to about 20 calls/s and raises Cancelled when `cancel` is set.

    The first report, every change of message and the final `done == total` always get through.
    """

    def __init__(self, progress: ProgressFn | None, cancel: threading.Event | None, interval: float = 0.05):
        self.progress, self.cancel, self.interval = progress, cancel, interval
        self._last = -1.0
        self._msg: str | None = None

    def check(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("Loading the data was cancelled; start it again when you are ready.")

    def __call__(self, done: int, total: int, message: str) -> None:
        self.check()
        if self.progress is None:
            return
        now = time.monotonic()
        final = total > 0 and done >= total
        if final or message != self._msg or now - self._last >= self.interval:
            self._last, self._msg = now, message
            self.progress(done, total, message)


# ---------------------------------------------------------------------------------------------------
# Decoded images


def stack(arrays: Sequence[np.ndarray], size: int) -> np.ndarray:
    if not arrays:
        return np.empty((0, size, size, 3), np.uint8)
    return np.ascontiguousarray(np.stack(arrays))


# ---------------------------------------------------------------------------------------------------
# Spec parsing


def _read_small_json(path: str) -> object:
    """The JSON in `path`, or None when it is missing, too large or not JSON."""
    import json

    try:
        if os.path.getsize(path) > _MAX_JSON_BYTES:
            return None
        with open(path, "rb") as f:
            return json.loads(f.read())
    except (OSError, ValueError):  # ValueError: not JSON, or not UTF-8
        return None


def _plain_name(name: object) -> bool:
    """A file or folder name inside the folder itself (no separators, not '.', '..' or hidden)."""
    return (
        isinstance(name, str) and bool(name) and os.path.basename(name) == name and not name.startswith(".")
    )


def _missing_shards(path: str) -> list[str] | None:
    """The .arrow shards that `path`/state.json lists and that are missing (an empty list: none is), or None
    when `path` lacks dataset_info.json or its state.json is not one that save_to_disk writes."""
    state = _read_small_json(os.path.join(path, DATASET_STATE))
    if not isinstance(state, dict) or not os.path.isfile(os.path.join(path, DATASET_INFO)):
        return None
    files = state.get("_data_files")
    if not isinstance(files, list) or not files:
        return None
    names = [f.get("filename") if isinstance(f, dict) else None for f in files]
    if not all(_plain_name(n) and n.endswith(".arrow") for n in names):
        return None
    return [n for n in names if not os.path.isfile(os.path.join(path, n))]


def saved_layout(path: str) -> str | None:
    """Which save_to_disk wrote the folder `path`: "dataset" (Dataset.save_to_disk), "dict"
    (DatasetDict.save_to_disk) or None (neither).

    Decided on the whole signature, never on one file name, so that an image folder holding a stray
    state.json (many tools write one) is still read as images: a Dataset folder has dataset_info.json
    and a state.json whose `_data_files` lists .arrow shards that are all there; a DatasetDict folder
    has a dataset_dict.json whose `splits` are sub-folders that are each a Dataset folder.
    """
    if _missing_shards(path) == []:
        return "dataset"
    info = _read_small_json(os.path.join(path, DATASET_DICT))
    splits = info.get("splits") if isinstance(info, dict) else None
    if (
        isinstance(splits, list)
        and splits
        and all(_plain_name(s) and _missing_shards(os.path.join(path, s)) == [] for s in splits)
    ):
        return "dict"
    return None


def _nothing_to_load(path: str) -> str:
    """The message for a folder that is neither an image folder nor a save_to_disk folder: what is
    accepted, and what in the folder looks close to it."""
    try:
        names = sorted(os.listdir(path))
    except OSError:
        names = []
    hint = ""
    tables = [n for n in names if n.lower().endswith(TABLE_EXTENSIONS)]
    for sub in names if not tables else []:  # a Hub snapshot keeps its files in data/ or <config>/
        if _plain_name(sub) and os.path.isdir(os.path.join(path, sub)):
            with contextlib.suppress(OSError):
                found = sorted(os.listdir(os.path.join(path, sub)))
                tables += [os.path.join(sub, n) for n in found if n.lower().endswith(TABLE_EXTENSIONS)]
    missing = _missing_shards(path)
    cifar = [n for n in names if describe_source(os.path.join(path, n)) == "cifar"]
    if cifar:
        hint = f" It holds {', '.join(cifar[:3])}: give that itself."
    elif tables:
        hint = f" It holds {', '.join(tables[:3])}: give that file itself."
    elif missing:
        hint = f" Its {DATASET_STATE} lists {', '.join(missing[:3])}, which is missing: save it again."
    elif any(n in (DATASET_INFO, DATASET_STATE, DATASET_DICT) for n in names):
        hint = " Its dataset JSON files are not a complete save_to_disk folder."
    return f"'{path}' holds no images and no dataset: give {ACCEPTED}.{hint}"


def describe_source(spec: str) -> str:
    """What `spec` points at: "builtin", "folder", "file", "saved" (a save_to_disk folder), "cifar" (a CIFAR
    archive or extracted folder, with its ':test'...) or "hub".

    Only checks the file system (no network, no decoding). A string that looks like a path but does
    not exist is reported as the "file" or "folder" it was meant to be; `load_data` then says it is
    missing.
    """
    s = spec.strip()
    if s == "builtin" or s.startswith("builtin:"):
        return "builtin"
    from ddpm_gui.data import cifar

    if cifar.split_spec(s) is not None:
        return "cifar"
    p = os.path.expanduser(s)
    if os.path.isdir(p):
        return "saved" if saved_layout(p) else "folder"
    if os.path.isfile(p):
        return "file"
    if _HUB_ID.match(s) and not s.lower().endswith(TABLE_EXTENSIONS + IMAGE_EXTENSIONS):
        return "hub"
    return "file" if os.path.splitext(s)[1].lower() in TABLE_EXTENSIONS + IMAGE_EXTENSIONS else "folder"


def _builtin_count(spec: str) -> int:
    from ddpm_gui.data.builtin import BUILTIN_DEFAULT_COUNT

    if spec == "builtin":
        return BUILTIN_DEFAULT_COUNT
    text = spec.split(":", 1)[1].strip().replace("_", "")
    if not text.isdigit() or int(text) < 1:
        raise DataError(
            f"'{spec}' is not a valid built-in dataset: write 'builtin' or 'builtin:N' with N >= 1."
        )
    return int(text)


def _file_stamp(path: str) -> list:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


def _tree_stamp(root: str) -> list:
    """(relative path, size, mtime) of every file under `root`: any change invalidates the cache."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for f in sorted(filenames):
            full = os.path.join(dirpath, f)
            out.append([os.path.relpath(full, root), *_file_stamp(full)])
    return out


# ---------------------------------------------------------------------------------------------------
# The entry point


@dataclass
class _Request:
    """One load_data call, its arguments checked: what to decode and under which cache key."""

    spec: str
    kind: str  # describe_source(spec)
    path: str  # the spec as an absolute path (for local sources)
    split: str
    size: int
    limit: int | None
    seed: int
    key: dict
    slug: str = ""
    scan: object = None  # the FolderScan of an image folder (its digest is the cache stamp)


def _checked(spec: object, image_size: object, limit: object) -> tuple[str, int, int | None]:
    if not isinstance(spec, str) or not spec.strip():
        raise DataError(
            "No data source given: use 'builtin', a folder of images, a parquet/arrow file or a Hub id."
        )
    if not isinstance(image_size, (int, np.integer)) or not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        raise DataError(
            f"Image size must be a whole number from {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE}, got {image_size!r}."
        )
    if limit is not None and (not isinstance(limit, (int, np.integer)) or limit < 1):
        raise DataError(f"The image limit must be a whole number >= 1 (or none), got {limit!r}.")
    return spec.strip(), int(image_size), None if limit is None else int(limit)


def _request(spec: str, split: str, size: int, limit: int | None, seed: int, rep: Reporter) -> _Request:
    """The request for `spec` with its cache key and slug; a local source that is missing is refused here."""
    kind = describe_source(spec)
    path = os.path.abspath(os.path.expanduser(spec))
    key = {"kind": kind, "split": split, "size": size, "limit": limit}
    r = _Request(spec, kind, path, split, size, limit, int(seed), key)
    if kind == "builtin":
        from ddpm_gui.data.builtin import BUILTIN_VERSION

        count = _builtin_count(spec)
        n = count if limit is None else min(count, limit)
        r.key.update(n=n, seed=r.seed, version=BUILTIN_VERSION, limit=None)
        r.slug = f"builtin-{n}-seed{seed}-{split}-{size}"
    elif kind == "hub":
        repo, _, config = spec.partition(":")
        r.key.update(id=repo, config=config or None)
        r.slug = f"hub-{repo.replace('/', '_')}-{config}-{split}-{size}"
    elif kind == "cifar":
        _cifar_request(r)
    elif not os.path.exists(path):
        raise DataError(
            f"'{spec}' does not exist: give an existing folder, .parquet/.arrow file or CIFAR archive, "
            "or 'builtin'."
        )
    elif kind == "file":
        if os.path.splitext(path)[1].lower() not in TABLE_EXTENSIONS:
            raise DataError(
                f"'{spec}' is not a dataset file: give a .parquet or .arrow file, a CIFAR archive "
                "(cifar-10-python.tar.gz...), or the folder that holds the images."
            )
        r.key.update(path=path, stamp=_file_stamp(path), split=None)  # a file has no splits
        r.slug = f"file-{os.path.basename(path)}-{size}"
    elif kind == "saved":
        r.key.update(path=path, stamp=_tree_stamp(path))
        r.slug = f"saved-{os.path.basename(path)}-{split}-{size}"
    else:  # folder: the stamp is computed by the scan, which the decoding reuses
        r.scan = _scan_images(path, rep)
        r.key.update(path=path, stamp=r.scan.digest, split=None)
        r.slug = f"folder-{os.path.basename(path)}-{size}"
    return r


def _cifar_request(r: _Request) -> None:
    """A CIFAR archive or folder: the path without its ':test'..., the split and label set it names."""
    from ddpm_gui.data import cifar

    path, options = cifar.split_spec(r.spec)
    r.path = os.path.abspath(path)
    if not os.path.exists(r.path):
        raise DataError(
            f"'{path}' does not exist: give a CIFAR archive (cifar-10-python.tar.gz...) or its extracted "
            "folder."
        )
    r.split, labels = cifar.parse_options(r.spec, options, r.split)
    stamp = _tree_stamp(r.path) if os.path.isdir(r.path) else _file_stamp(r.path)
    r.key.update(path=r.path, stamp=stamp, split=r.split, labels=labels)
    r.slug = f"cifar-{os.path.basename(os.path.normpath(r.path))}-{r.split}-{labels}-{r.size}"


def _decode(r: _Request, rep: Reporter) -> Cached:
    """Decode the request's source (nothing cached for it yet)."""
    if r.kind == "builtin":
        return _load_builtin(r.key["n"], r.seed, r.split, r.size, rep)
    if r.kind == "folder":
        from ddpm_gui.data.folder import decode_folder

        return decode_folder(r.scan, r.size, r.limit, rep)
    if r.kind == "cifar":
        from ddpm_gui.data.cifar import load_cifar

        return load_cifar(r.path, r.split, r.key["labels"], r.size, r.limit, rep)
    from ddpm_gui.data import hub

    if r.kind == "hub":
        return hub.load_hub(r.key["id"], r.key["config"], r.split, r.size, r.limit, rep)
    if r.kind == "saved":
        return hub.load_saved(r.path, r.split, r.size, r.limit, rep)
    return hub.load_file(r.path, r.split, r.size, r.limit, rep)


def load_data(
    spec: str = "builtin",
    image_size: int = 32,
    split: str = "train",
    limit: int | None = None,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    cache_dir: str | Path | None = None,
    seed: int = 0,
) -> ImageData:
    """Load `spec` (see the module docstring) as (N, image_size, image_size, 3) uint8 images.

    split:     which split of a Hub dataset, parquet/arrow DatasetDict or save_to_disk folder, or of a
               CIFAR archive when its spec names none (':test' in the spec wins); for the built-in
               data, "train" and any other name give two independent sets of images.
    limit:     keep only the first `limit` rows (of a folder: the first in an order that takes the
               classes in turn, so a limit keeps every class).
    progress:  called as progress(done, total, message), at most about 20 times a second, last with
               done == total; total == 0 while the size is not known (a download).
    cancel:    checked between batches; when set, Cancelled is raised and nothing is cached.
    cache_dir: where decoded arrays are kept (default: `default_cache_dir()`).
    seed:      which built-in dataset (ignored by the other sources).

    What was left out (ImageData.skipped, skipped_items) is also logged as one warning line, which the
    command line prints on stderr.
    """
    spec, image_size, limit = _checked(spec, image_size, limit)
    rep = Reporter(progress, cancel)
    rep.check()
    r = _request(spec, split, image_size, limit, seed, rep)
    file = cache_path(cache_dir, r.slug, cache_key(r.key))
    result = read_cache(file, image_size)
    if result is not None:
        rep(len(result.images), len(result.images), "Loaded from cache")
    else:
        result = _decode(r, rep)
        rep.check()
        if not write_cache(file, result):
            file = None
        total = len(result.images)
        rep(total, total, f"Loaded {total:,} images")
    c = result
    data = ImageData(c.images, c.labels, c.class_names, c.name, spec, file, c.skipped, c.skipped_items)
    if data.skipped:
        log.warning("%s: skipped %s", data.name, data.skipped_text())
    return data


def _scan_images(path: str, rep: Reporter):
    """The FolderScan of an image folder; a folder with no image in it is told what is accepted."""
    from ddpm_gui.data.folder import scan_folder

    rep(0, 0, f"Scanning {path}")
    try:
        return scan_folder(path, rep)
    except Cancelled:
        raise
    except DataError as e:  # no image file in it
        raise DataError(_nothing_to_load(path)) from e


def _load_builtin(n: int, seed: int, split: str, size: int, rep: Reporter) -> Cached:
    import zlib

    from ddpm_gui.data.builtin import BUILTIN_CLASSES, generate_builtin

    stream = 0 if split == "train" else zlib.crc32(split.encode("utf-8"))
    images, labels = generate_builtin(n, seed, size, stream=stream, progress=rep, cancel=rep.cancel)
    name = f"builtin shapes (seed {seed})" if split == "train" else f"builtin shapes (seed {seed}, {split})"
    return Cached(images, labels, list(BUILTIN_CLASSES), name, 0)
