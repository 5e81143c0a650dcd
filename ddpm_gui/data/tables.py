"""Image tables read with pyarrow: which column holds the images and which the labels, and their decoding.

Shared by the three `datasets` sources of `hub.py` (Hub ids, save_to_disk folders, parquet/arrow files).
The image column is the first `datasets.Image` feature (`img` in CIFAR-10, `image` in imagefolder
datasets), else an encoded-image struct ({bytes, path}) or a binary column; the labels are the first
`ClassLabel` (class names from it), else an integer or string column with a usual name (`label`,
`class`...). Each cell goes through the app's one image loader (`imageio.load_image`); a cell it refuses
is skipped and listed as "row N" with the loader's reason.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ddpm_gui.data.cache import Cached
from ddpm_gui.data.imageio import load_image
from ddpm_gui.data.skips import SkipLog
from ddpm_gui.data.sources import Reporter, stack
from ddpm_gui.errors import DataError

log = logging.getLogger(__name__)

BATCH = 256  # rows per Arrow batch: one progress report and one cancel check each
_LABEL_NAMES = ("label", "labels", "class", "category", "target", "fine_label")


def pick_columns(features, schema, what: str) -> tuple[str, str | None, list[str] | None]:
    """(image column, label column or None, class names or None for a non-ClassLabel label column)."""
    import datasets
    import pyarrow as pa

    img = next((k for k, f in features.items() if isinstance(f, datasets.Image)), None)
    if img is None:  # data written without datasets' metadata: an encoded-image struct, or raw bytes
        for field in schema:
            t = field.type
            if pa.types.is_struct(t) and t.get_field_index("bytes") >= 0:
                img = field.name
                break
        else:
            img = next(
                (f.name for f in schema if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)),
                None,
            )
    if img is None:
        cols = ", ".join(f"{f.name} ({f.type})" for f in schema)
        raise DataError(
            f"'{what}' has no image column (its columns are: {cols}): choose a dataset of images."
        )
    label = next((k for k, f in features.items() if isinstance(f, datasets.ClassLabel)), None)
    if label is not None:
        return img, label, list(features[label].names)
    for field in schema:
        if field.name.lower() in _LABEL_NAMES and (
            pa.types.is_integer(field.type)
            or pa.types.is_string(field.type)
            or pa.types.is_large_string(field.type)
        ):
            return img, field.name, None
    return img, None, None


def _image_cells(column) -> tuple[list, list]:
    """(bytes or None, path or None) per row of an Arrow image column (struct, binary or string)."""
    import pyarrow as pa

    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(arr)
    if pa.types.is_struct(arr.type):
        children = {arr.type.field(i).name: child for i, child in enumerate(arr.flatten())}
        data = children["bytes"].to_pylist() if "bytes" in children else [None] * n
        paths = children["path"].to_pylist() if "path" in children else [None] * n
        return data, paths
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        return [None] * n, arr.to_pylist()
    return arr.to_pylist(), [None] * n


def _resolve(path: str | None, base_dir: str | None) -> str | None:
    if path is None or os.path.isfile(path) or base_dir is None:
        return path
    return os.path.join(base_dir, path)


def _decode_cell(
    data: bytes | None, path: str | None, size: int, base_dir: str | None, name: str, skips: SkipLog
) -> np.ndarray | None:
    """One image cell (encoded bytes, or a path to the file) through the image loader; None when it was
    skipped (recorded in `skips` as `name`, with the loader's reason)."""
    source = data if data is not None else _resolve(path, base_dir)
    if source is None:
        skips.add(name, "holds no image (neither bytes nor a file path)")
        return None
    try:
        return load_image(source, size, name=name)
    except DataError as e:
        skips.add_error(name, e)
    return None


@dataclass
class Decoded:
    images: np.ndarray
    labels: np.ndarray | None
    class_names: list[str] | None
    skips: SkipLog

    def cached(self, name: str) -> Cached:
        return Cached(
            self.images, self.labels, self.class_names, name, self.skips.count, tuple(self.skips.items)
        )


def decode_tables(
    batches: Iterator,
    total: int,
    img_col: str,
    label_col: str | None,
    class_names: list[str] | None,
    size: int,
    rep: Reporter,
    what: str,
    base_dir: str | None = None,
) -> Decoded:
    """Decode Arrow batches holding (at least) the image and label columns, the first `total` rows."""
    out: list[np.ndarray] = []
    raw_labels: list = []
    skips = SkipLog()
    done = 0
    rep(0, total, f"Decoding {what}")
    for tbl in batches:
        if done >= total:
            break
        tbl = tbl.slice(0, total - done)
        data, paths = _image_cells(tbl.column(img_col))
        labels = tbl.column(label_col).to_pylist() if label_col is not None else [None] * len(data)
        for row, (d, p, y) in enumerate(zip(data, paths, labels, strict=True), done):
            name = f"row {row}" if not p else f"row {row}, {os.path.basename(p)}"
            a = _decode_cell(d, p, size, base_dir, name, skips)
            if a is not None:
                out.append(a)
                raw_labels.append(y)
        done += len(data)
        rep(done, total, f"Decoding {what}")
    if not out:
        first = skips.items[0] if skips.items else None
        example = f" ({first.name} {first.reason})" if first else ""
        raise DataError(
            f"None of the {done} images in '{what}' could be decoded{example}: check that the data holds "
            "valid images."
        )
    labels, names = _labels(raw_labels, label_col, class_names, what)
    return Decoded(stack(out, size), labels, names, skips)


def _labels(raw: list, col: str | None, class_names: list[str] | None, what: str):
    if col is None:
        return None, None
    if class_names is not None:  # a ClassLabel: integers into class_names
        y = np.array([-1 if v is None else v for v in raw], np.int64)
        if len(y) and (y.min() < 0 or y.max() >= len(class_names)):
            log.warning("'%s' has rows without a valid label (e.g. -1): loading it without labels.", what)
            return None, None
        return y, class_names
    if any(v is None for v in raw):
        log.warning("'%s' has rows without a label: loading it without labels.", what)
        return None, None
    values = sorted(set(raw))
    index = {v: i for i, v in enumerate(values)}
    return np.array([index[v] for v in raw], np.int64), [str(v) for v in values]


def _dataset_batches(ds, columns: list[str]) -> Iterator:
    """Arrow tables of BATCH rows from a datasets.Dataset (memory-mapped; honours indices)."""
    view = ds.select_columns(columns).with_format("arrow")
    for start in range(0, len(view), BATCH):
        yield view[start : start + BATCH]


def decode_dataset(
    ds, size: int, limit: int | None, rep: Reporter, what: str, base_dir: str | None = None
) -> Decoded:
    img, label, names = pick_columns(ds.features, ds.data.schema, what)
    total = len(ds) if limit is None else min(len(ds), limit)
    if total == 0:
        raise DataError(f"'{what}' holds no rows: choose another split or dataset.")
    cols = [img] + ([label] if label else [])
    return decode_tables(_dataset_batches(ds, cols), total, img, label, names, size, rep, what, base_dir)


def read_arrow(path: str):
    """An Arrow IPC file: the stream format `datasets` writes, or the random-access (Feather v2) format."""
    import pyarrow as pa

    source = pa.memory_map(path, "r")
    try:
        return pa.ipc.open_stream(source).read_all()
    except pa.ArrowInvalid:
        source.seek(0)
        return pa.ipc.open_file(source).read_all()
