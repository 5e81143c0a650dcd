"""CIFAR-10 and CIFAR-100 from the files their authors distribute (and torchvision downloads), offline.

    archive                  its folder            its files
    cifar-10-python.tar.gz   cifar-10-batches-py   pickles: data_batch_1..5, test_batch, batches.meta
    cifar-10-binary.tar.gz   cifar-10-batches-bin  data_batch_1..5.bin, test_batch.bin, batches.meta.txt
    cifar-100-python.tar.gz  cifar-100-python      pickles: train, test, meta
    cifar-100-binary.tar.gz  cifar-100-binary      train.bin, test.bin, fine/coarse_label_names.txt

The spec is the archive or the folder, optionally followed by ':train' (the default) or ':test', and for
CIFAR-100 by ':fine' (the default: 100 classes) or ':coarse' (the 20 superclasses):
"cifar-100-python.tar.gz:test:coarse". The class names come from the archive's own meta file.

Safety: the archive is read member by member with `tarfile`, never extracted to disk; links and
anything but the expected file names are ignored. Every member's size is checked against what CIFAR
can hold (LAYOUTS' max_images) before it is read, and an archive with more than MAX_MEMBERS entries
is refused. The pickles of the python format are read by `_CifarUnpickler`, which rebuilds numpy arrays
and plain Python values and nothing else: any other global a pickle names (os.system...) is refused
before it is looked up, with a DataError that names the file.
"""

from __future__ import annotations

import io
import os
import pickle
import posixpath
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ddpm_gui.data.cache import Cached
from ddpm_gui.data.imageio import fit_square
from ddpm_gui.data.sources import Reporter
from ddpm_gui.errors import DataError

CIFAR_ARCHIVE_EXTENSIONS = (".tar.gz", ".tgz", ".tar")
SPLITS = ("train", "test")
LABEL_SETS = ("fine", "coarse")  # CIFAR-100's two labellings; fine is the default
DOWNLOAD = "https://www.cs.toronto.edu/~kriz/cifar.html"
SIDE, PIXELS = 32, 32 * 32 * 3  # every CIFAR image: 32x32 RGB, stored as 1024 R, 1024 G, 1024 B bytes
MAX_MEMBERS = 1000  # the real archives hold about ten entries
_MAX_META_BYTES = 1 << 20  # batches.meta, meta and the label-name .txt files are a few kB
_PICKLE_ROW_BYTES = PIXELS + 128  # a pickled image: its pixels, its file name and its label(s)
_RESIZE_BATCH = 256  # images resized between two progress reports / cancel checks


@dataclass(frozen=True, eq=False)  # hashed by identity: the four layouts are the only ones
class Layout:
    """One of the four distributed formats: its file names and how big each file can be."""

    title: str  # "CIFAR-10"
    folder: str  # the folder the archive holds (and torchvision extracts)
    splits: dict[str, tuple[str, ...]]  # split -> its files, in order
    meta: tuple[str, ...]  # the class-name files
    binary: bool
    max_images: dict[str, int]  # split -> images per file, at most

    @property
    def record(self) -> int:
        """Bytes per image in a binary file: the label byte(s), then the pixels."""
        return PIXELS + (2 if self.title == "CIFAR-100" else 1)

    def max_bytes(self, name: str) -> int:
        """The largest size a genuine `name` of this layout can have."""
        if name in self.meta:
            return _MAX_META_BYTES
        split = next(s for s, files in self.splits.items() if name in files)
        rows = self.max_images[split]
        return rows * self.record if self.binary else rows * _PICKLE_ROW_BYTES + _MAX_META_BYTES


_C10 = {"train": 10_000, "test": 10_000}
LAYOUTS = (
    Layout("CIFAR-10", "cifar-10-batches-py",
           {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
           ("batches.meta",), False, _C10),
    Layout("CIFAR-10", "cifar-10-batches-bin",
           {"train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)), "test": ("test_batch.bin",)},
           ("batches.meta.txt",), True, _C10),
    Layout("CIFAR-100", "cifar-100-python", {"train": ("train",), "test": ("test",)}, ("meta",), False,
           {"train": 50_000, "test": 10_000}),
    Layout("CIFAR-100", "cifar-100-binary", {"train": ("train.bin",), "test": ("test.bin",)},
           ("fine_label_names.txt", "coarse_label_names.txt"), True, {"train": 50_000, "test": 10_000}),
)  # fmt: skip
# every file name belongs to one layout: a name alone says which format a member is
_OWNER = {n: lay for lay in LAYOUTS for n in (*lay.meta, *(f for fs in lay.splits.values() for f in fs))}


# ---------------------------------------------------------------------------------------------------
# Telling a CIFAR spec apart


def is_archive_name(path: str) -> bool:
    return path.lower().endswith(CIFAR_ARCHIVE_EXTENSIONS)


def folder_layout(path: str) -> Layout | None:
    """The layout of an extracted folder: its meta file(s) and at least one data file are there."""
    try:
        names = set(os.listdir(path))
    except OSError:
        return None
    for lay in LAYOUTS:
        data = {f for files in lay.splits.values() for f in files}
        if set(lay.meta) <= names and data & names:
            return lay
    return None


def split_spec(spec: str) -> tuple[str, list[str]] | None:
    """(path, options) when `spec` is a CIFAR archive or folder followed by up to two ':option's, else None.

    Only the file system is checked. Any file named like a tar archive counts (loading it says what is
    wrong with it), even one that does not exist (loading it says it is missing)."""
    path, options = os.path.expanduser(spec.strip()), []
    for _ in range(3):
        if os.path.isdir(path):
            return (path, options) if folder_layout(path) else None
        if is_archive_name(path):
            return path, options
        if os.path.isfile(path):
            return None
        head, sep, tail = path.rpartition(":")
        if not sep or not tail or "/" in tail or os.sep in tail:
            return None
        path, options = head, [tail, *options]
    return None


def parse_options(spec: str, options: list[str], split: str) -> tuple[str, str]:
    """(split, label set) from the spec's options, `split` (load_data's) when it names none."""
    chosen = {"split": [o for o in options if o in SPLITS], "labels": [o for o in options if o in LABEL_SETS]}
    unknown = [o for o in options if o not in SPLITS + LABEL_SETS]
    if unknown or len(chosen["split"]) > 1 or len(chosen["labels"]) > 1:
        raise DataError(
            f"'{spec}' ends with an option this app does not know: after a CIFAR archive or folder write "
            "':train' or ':test', and for CIFAR-100 ':fine' or ':coarse' "
            "(e.g. 'cifar-100-python.tar.gz:test')."
        )
    split = chosen["split"][0] if chosen["split"] else split
    if split not in SPLITS:
        raise DataError(f"CIFAR has no split '{split}': choose 'train' or 'test' (e.g. '{spec}:test').")
    return split, chosen["labels"][0] if chosen["labels"] else "fine"


# ---------------------------------------------------------------------------------------------------
# The pickles


class _ArrayType:
    """What a pickle's `numpy.ndarray` resolves to: only `_reconstruct` takes it, as numpy's own pickles do.
    Calling it (numpy.ndarray(shape) would allocate whatever shape the pickle asks for) is refused."""

    def __new__(cls, *args, **kwargs):
        raise pickle.UnpicklingError("numpy.ndarray called directly")


_NUMPY_RECONSTRUCT = np.empty(0).__reduce__()[0]  # numpy.core / numpy._core, whichever this numpy has


def _reconstruct(subtype, shape, dtype):
    """numpy's `_reconstruct` as numpy's pickles call it: an empty array whose __setstate__ then brings the
    data, so that its size is that of the bytes in the pickle (numpy checks they match)."""
    if subtype is not _ArrayType or tuple(shape) != (0,):
        raise pickle.UnpicklingError("an array rebuilt in a way numpy's pickles never use")
    return _NUMPY_RECONSTRUCT(np.ndarray, (0,), dtype)


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,  # written by numpy 1.x (the real archives)
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,  # written by numpy 2
    ("numpy", "ndarray"): _ArrayType,
    ("numpy", "dtype"): np.dtype,
}


def _not_genuine(what: str, why: str) -> DataError:
    return DataError(f"{what} is not a genuine CIFAR archive ({why}): download it again from {DOWNLOAD}.")


class _CifarUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays and plain values (dicts, lists, strings, numbers) only."""

    def __init__(self, raw: bytes, what: str):
        super().__init__(io.BytesIO(raw), encoding="latin1")  # the real files were pickled by Python 2
        self.what = what

    def find_class(self, module: str, name: str):
        found = _ALLOWED.get((module, name))
        if found is None:
            asked = ascii(f"{module}.{name}")[1:-1][:80]
            raise _not_genuine(self.what, f"it asks for {asked}, which a CIFAR file never holds")
        return found

    def persistent_load(self, pid):
        raise _not_genuine(self.what, "it refers to outside objects")


def _unpickle(raw: bytes, what: str) -> dict:
    try:
        obj = _CifarUnpickler(raw, what).load()
    except DataError:
        raise
    except Exception as e:  # truncated or malformed: the unpickler and numpy raise many types
        raise _not_genuine(what, f"its pickle cannot be read: {_first_line(e)}") from None
    if not isinstance(obj, dict):
        raise _not_genuine(what, f"it holds a {type(obj).__name__}, not a dict")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _names(values: object, what: str) -> list[str]:
    if not isinstance(values, list) or not 0 < len(values) <= 1000:
        raise _not_genuine(what, "its class names are not a list of names")
    out = [v.decode("latin1") if isinstance(v, bytes) else v for v in values]
    if not all(isinstance(v, str) and 0 < len(v) <= 200 for v in out):
        raise _not_genuine(what, "its class names are not a list of names")
    return out


def _labels(values: object, n: int, what: str) -> np.ndarray:
    ok = isinstance(values, list) and len(values) == n and all(type(v) is int for v in values)
    if not ok:
        raise _not_genuine(what, f"it does not hold one whole-number label per image ({n} images)")
    return np.asarray(values, np.int64)


# ---------------------------------------------------------------------------------------------------
# One file of a layout -> images and labels, or class names


def _pixels(rows: np.ndarray) -> np.ndarray:
    """(N, 3072) channel-planar rows -> (N, 32, 32, 3) uint8."""
    return np.ascontiguousarray(rows.reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1))


def _python_batch(raw: bytes, what: str, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    d = _unpickle(raw, what)
    data = d.get("data")
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != PIXELS
    ):
        raise _not_genuine(what, "its 'data' is not an array of 32x32 colour images")
    return _pixels(data), _labels(d.get(label_key), len(data), what)


def _binary_batch(raw: bytes, what: str, layout: Layout, coarse: bool) -> tuple[np.ndarray, np.ndarray]:
    rec = layout.record
    if not raw or len(raw) % rec:
        raise DataError(
            f"{what} is {len(raw):,} bytes, not a whole number of {rec:,}-byte CIFAR records: it is "
            f"truncated or damaged; download it again from {DOWNLOAD}."
        )
    a = np.frombuffer(raw, np.uint8).reshape(-1, rec)
    label_col = 1 if layout.title == "CIFAR-100" and not coarse else 0  # CIFAR-100: coarse byte, fine byte
    return _pixels(a[:, rec - PIXELS :]), a[:, label_col].astype(np.int64)


def _decode_member(
    name: str, raw: bytes, what: str, labels: str
) -> tuple[np.ndarray, np.ndarray] | list[str]:
    """A data file -> (images, labels); a meta file -> the class names of the label set `labels`."""
    lay = _OWNER[name]
    coarse = labels == "coarse"
    if name in lay.meta:
        if lay.binary:  # one name a line
            text = raw.decode("utf-8", errors="replace")
            return _names([ln.strip() for ln in text.splitlines() if ln.strip()], what)
        meta = _unpickle(raw, what)
        key = "label_names" if lay.title == "CIFAR-10" else f"{labels}_label_names"
        return _names(meta.get(key), what)
    if lay.binary:
        return _binary_batch(raw, what, lay, coarse)
    key = "labels" if lay.title == "CIFAR-10" else f"{labels}_labels"
    return _python_batch(raw, what, key)


# ---------------------------------------------------------------------------------------------------
# Reading the files: from a tar archive, or from a folder


def _needed(lay: Layout, split: str, labels: str) -> tuple[str, ...]:
    """The files of `lay` that a load of `split` reads: its class names (CIFAR-100 binary: those of the
    label set `labels`), then the split's data files in order."""
    meta = (f"{labels}_label_names.txt",) if lay.binary and lay.title == "CIFAR-100" else lay.meta
    return (*meta, *lay.splits[split])


def _wanted(split: str, labels: str) -> set[str]:
    """The file names, of any layout, that a load of `split` with `labels` reads."""
    return {n for lay in LAYOUTS for n in _needed(lay, split, labels)}


def _read_member(tf: tarfile.TarFile, m: tarfile.TarInfo, limit: int, what: str) -> bytes:
    if m.size > limit:
        raise _not_genuine(what, f"it is {m.size:,} bytes, more than CIFAR's {limit:,}")
    f = tf.extractfile(m)
    raw = f.read(m.size) if f is not None else b""
    if len(raw) != m.size:
        raise DataError(f"{what} is truncated: download the archive again from {DOWNLOAD}.")
    return raw


def _tar_files(path: str, wanted: set[str], rep: Reporter) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of each wanted regular member, in the archive's order, in one pass, nothing extracted."""
    archive = os.path.basename(path)
    try:
        tf = tarfile.open(path, "r:*")
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise DataError(
            f"{archive} cannot be opened as a tar archive ({_first_line(e)}): give a CIFAR archive as "
            f"downloaded (cifar-10-python.tar.gz...) or its extracted folder; download it again from "
            f"{DOWNLOAD}."
        ) from None
    with tf:
        members = iter(tf)
        for count in range(1, MAX_MEMBERS + 2):
            try:
                m = next(members, None)
                if m is None:
                    return
                name = posixpath.basename(m.name)
                if count > MAX_MEMBERS:
                    raise _not_genuine(archive, f"it holds more than {MAX_MEMBERS:,} entries")
                if not m.isreg() or name not in wanted:
                    continue
                rep(0, 0, f"Reading {name} from {archive}")
                raw = _read_member(tf, m, _OWNER[name].max_bytes(name), f"{archive}: {name}")
            except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
                why = _first_line(e)
                raise DataError(
                    f"{archive} is truncated or damaged ({why}): download it again from {DOWNLOAD}."
                ) from None
            yield name, raw


def _first_line(e: BaseException) -> str:
    """ "TypeError: what it says", on one line of at most about 120 printable characters (the text may
    come from the file)."""
    text = " ".join(ascii(str(e))[1:-1].split())[:120]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _folder_files(path: str, wanted: set[str], rep: Reporter) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of each wanted file of an extracted folder, sizes checked before reading."""
    for name in sorted(wanted):
        full = os.path.join(path, name)
        if not os.path.isfile(full):
            continue
        what = f"{os.path.basename(os.path.normpath(path))}: {name}"
        limit = _OWNER[name].max_bytes(name)
        try:
            if os.path.getsize(full) > limit:
                raise _not_genuine(what, f"it is more than CIFAR's {limit:,} bytes")
            rep(0, 0, f"Reading {what}")
            with open(full, "rb") as f:
                raw = f.read(limit + 1)
        except OSError as e:
            raise DataError(f"Cannot read {full} ({e.strerror or e}): check that it is readable.") from None
        yield name, raw


# ---------------------------------------------------------------------------------------------------
# The entry point


def _pick_layout(found: dict, origin: str, split: str, labels: str) -> Layout:
    """The one layout whose files were found, all of them that this load needs."""
    layouts = {_OWNER[n] for n in found}
    if not layouts:
        raise DataError(
            f"{origin} holds no CIFAR files (such as data_batch_1 or cifar-100-python/train): give "
            "cifar-10-python.tar.gz, cifar-10-binary.tar.gz, cifar-100-python.tar.gz or their extracted "
            "folder."
        )
    if len(layouts) > 1:
        folders = ", ".join(sorted(lay.folder for lay in layouts))
        raise DataError(f"{origin} holds the files of several CIFAR formats ({folders}): give one of them.")
    lay = layouts.pop()
    if labels == "coarse" and lay.title != "CIFAR-100":
        raise DataError(f"{origin}: only CIFAR-100 has coarse labels; drop ':coarse' for {lay.title}.")
    missing = [n for n in _needed(lay, split, labels) if n not in found]
    if missing:
        raise DataError(
            f"{origin} lacks {', '.join(missing)} of {lay.folder}: it is incomplete or truncated; download "
            f"it again from {DOWNLOAD}."
        )
    return lay


def _resized(images: np.ndarray, size: int, rep: Reporter) -> np.ndarray:
    """The images at size x size, through the app's one crop-and-resize policy (imageio.fit_square)."""
    if size == SIDE:
        return images
    total = len(images)
    try:
        out = np.empty((total, size, size, 3), np.uint8)
    except MemoryError:
        raise DataError(
            f"{total:,} images at {size}x{size} do not fit in memory: choose a smaller image size or a limit."
        ) from None
    for start in range(0, total, _RESIZE_BATCH):
        rep(start, total, f"Resizing to {size}x{size}")
        for i in range(start, min(start + _RESIZE_BATCH, total)):
            out[i] = fit_square(images[i], size)
    return out


def load_cifar(path: str, split: str, labels: str, size: int, limit: int | None, rep: Reporter) -> Cached:
    """The images, labels and class names of one split ("train" or "test") of the CIFAR archive or extracted
    folder at `path`; `labels` is "fine" or "coarse" (CIFAR-100's, see `parse_options`). The first `limit`
    images of the split are kept (the files are shuffled: every class is among them)."""
    origin = os.path.basename(os.path.normpath(path))
    wanted = _wanted(split, labels)
    files = _folder_files(path, wanted, rep) if os.path.isdir(path) else _tar_files(path, wanted, rep)
    found: dict = {}
    try:
        for name, raw in files:
            if name in found:
                raise _not_genuine(origin, f"it holds {name} twice")
            found[name] = _decode_member(name, raw, f"{origin}: {name}", labels)
            rep.check()
    finally:
        files.close()  # the archive, when a refusal stops the reading half-way
    lay = _pick_layout(found, origin, split, labels)
    needed = _needed(lay, split, labels)
    class_names = found[needed[0]]
    images = np.concatenate([found[n][0] for n in needed[1:]])
    y = np.concatenate([found[n][1] for n in needed[1:]])
    if len(y) and (y.min() < 0 or y.max() >= len(class_names)):
        span = f"{int(y.min())} to {int(y.max())}"
        raise _not_genuine(origin, f"its labels run from {span} but it names {len(class_names)} classes")
    if limit is not None:
        images, y = images[:limit], y[:limit]
    what = split if lay.title == "CIFAR-10" else f"{split}, {len(class_names)} {labels} classes"
    return Cached(_resized(images, size, rep), y, class_names, f"{lay.title} ({what})", 0)
