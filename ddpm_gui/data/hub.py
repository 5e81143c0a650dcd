"""Sources read through Hugging Face `datasets`: Hub ids, save_to_disk folders, parquet/arrow files.

What `datasets` (5.2, the behaviour is the same since about 2.18) does, and how we use it:

- Offline is a module constant read at import: `datasets.config.HF_HUB_OFFLINE` (from HF_HUB_OFFLINE
  or HF_DATASETS_OFFLINE) and `huggingface_hub.constants.HF_HUB_OFFLINE`. Setting the environment
  after `import datasets` changes nothing, so when our own probes fail we set both constants for the
  duration of the call (`_offline`). Then `load_dataset_builder` fails at once on the network step
  and falls back to the local datasets cache (CachedDatasetModuleFactory + the "cache" builder),
  which holds the prepared Arrow files of any dataset loaded before. Without the offline flag it
  first retries the network: about 23 s when the name does not resolve, 6.6 minutes measured here
  against a server that accepts connections and never answers.
- Hence two probes: `hub_reachable` (a TCP connect, 1.5 s) and `_hub_answers` (one HTTP HEAD
  through huggingface_hub's own session, HTTP_PROBE_TIMEOUT s). Either failing means offline.
- That cache is keyed by the name passed: `cifar10` and `uoft-cs/cifar10` are two entries, so offline
  we also try the well-known alias of the name (`_ALIASES`).
- With no cached copy, offline it raises ConnectionError ("Couldn't reach 'x' on the Hub
  (OfflineModeIsEnabled)"), or ValueError ("Couldn't find cache for x for config 'y'") when another
  config is cached; online, DatasetNotFoundError for an unknown id.
- The image column is the first `datasets.Image` feature (`img` in CIFAR-10, `image` in imagefolder
  datasets), the labels the first `ClassLabel` (class names from it). Parquet and arrow files written
  by `datasets` keep those features in their schema metadata.

Decoding never goes through `datasets`' per-row Image decoding: batches are read as Arrow tables
(`with_format("arrow")`, or pyarrow directly for files) and the encoded bytes go to PIL, so a corrupt
row is skipped and counted instead of stopping the whole load.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Iterator
from urllib.parse import urlparse

import numpy as np

from ddpm_gui.data.cache import Cached
from ddpm_gui.data.sources import Reporter, Skip, decode_image, stack
from ddpm_gui.errors import DataError

log = logging.getLogger(__name__)

_BATCH = 256  # rows per Arrow batch: one progress report and one cancel check each
# Seconds the Hub gets to answer one HTTP request before we work offline. A TCP connect is not enough:
# a proxy or captive portal that accepts connections and never answers made `datasets` retry for
# 6.6 minutes here (10 s timeouts, 5 retries, several requests) before it fell back to the cache.
HTTP_PROBE_TIMEOUT = 5.0
_TRUE = {"1", "ON", "YES", "TRUE"}
_LABEL_NAMES = ("label", "labels", "class", "category", "target", "fine_label")

# The short names the Hub redirects to a namespaced repository; the datasets cache keeps them apart.
_ALIASES = {
    "cifar10": "uoft-cs/cifar10",
    "cifar100": "uoft-cs/cifar100",
    "mnist": "ylecun/mnist",
    "fashion_mnist": "zalando-datasets/fashion_mnist",
}
_ALIASES.update({v: k for k, v in list(_ALIASES.items())})


def _offline_requested() -> bool:
    return any(os.environ.get(v, "").upper() in _TRUE for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _probe_address() -> tuple[str, int]:
    """Where a connection has to get through: the HTTPS proxy when one is set, else the Hub endpoint."""
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    no_proxy = os.environ.get("NO_PROXY") or os.environ.get("no_proxy") or ""
    bypass = any(
        host.endswith(p.strip().lstrip(".")) for p in no_proxy.split(",") if p.strip() and p.strip() != "*"
    )
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy") or os.environ.get("ALL_PROXY")
    if proxy and not bypass and no_proxy.strip() != "*":
        p = urlparse(proxy if "://" in proxy else "http://" + proxy)
        if p.hostname:
            return p.hostname, p.port or 8080
    return host, port


def hub_reachable(timeout: float = 1.5) -> bool:
    """True when a TCP connection to the Hub (HF_ENDPOINT's host, or the HTTPS proxy) opens in `timeout` s.

    False at once when HF_HUB_OFFLINE=1 or HF_DATASETS_OFFLINE=1. The name lookup runs in a helper
    thread as well, because a DNS timeout is not bounded by the socket timeout.
    """
    if _offline_requested():
        return False
    host, port = _probe_address()
    ok = threading.Event()

    def probe() -> None:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
            ok.set()

    t = threading.Thread(target=probe, name="hub-probe", daemon=True)
    t.start()
    t.join(timeout)
    return ok.is_set()


def _hub_answers(repo: str, timeout: float | None = None) -> bool:
    """True when the Hub answers an HTTP request about `repo` (any status) within `timeout` seconds.

    Uses huggingface_hub's own session (its proxies, certificates and endpoint as `datasets` will),
    from a helper thread so that a slow name lookup cannot hold us either.
    """
    import datasets.config
    from huggingface_hub.utils import get_session

    timeout = HTTP_PROBE_TIMEOUT if timeout is None else timeout
    url = f"{datasets.config.HF_ENDPOINT.rstrip('/')}/api/datasets/{repo}"
    ok = threading.Event()

    def probe() -> None:
        try:
            get_session().head(url, timeout=timeout)  # a 401/404 still proves the Hub is there
            ok.set()
        except Exception as e:  # noqa: BLE001 - offline mode, timeouts, refused, TLS...: all "no answer"
            log.info("The Hub did not answer %s: %s: %s", url, type(e).__name__, e)

    t = threading.Thread(target=probe, name="hub-http-probe", daemon=True)
    t.start()
    t.join(timeout + 1.0)
    return ok.is_set()


@contextlib.contextmanager
def _offline(enabled: bool) -> Iterator[None]:
    """Switch datasets/huggingface_hub to offline mode for a while (their flags are read at import)."""
    if not enabled:
        yield
        return
    import datasets.config as dconf
    import huggingface_hub.constants as hconst

    saved = [
        (obj, attr, getattr(obj, attr))
        for obj, attr in (
            (dconf, "HF_HUB_OFFLINE"),
            (dconf, "HF_DATASETS_OFFLINE"),
            (hconst, "HF_HUB_OFFLINE"),
        )
        if hasattr(obj, attr)
    ]
    for obj, attr, _ in saved:
        setattr(obj, attr, True)
    try:
        yield
    finally:
        for obj, attr, value in saved:
            setattr(obj, attr, value)


def _hf_datasets_cache() -> str | None:
    """The datasets cache as the environment says *now* (datasets itself read it at import)."""
    if os.environ.get("HF_DATASETS_CACHE"):
        return os.path.expanduser(os.environ["HF_DATASETS_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "datasets")
    return None


def _offline_message(repo: str) -> str:
    return (
        f"Cannot reach the Hugging Face Hub to download '{repo}' and no cached copy was found. "
        "Use the built-in dataset ('builtin'), a local folder of images, or a parquet/arrow file; "
        "or connect and try again."
    )


def _choose_split(available: list[str], split: str, what: str) -> tuple[str, str]:
    """(split to use, text for the name): `split` itself, or the first one when 'train' is missing."""
    if split in available:
        return split, split
    if split == "train" and available:
        return available[0], f"{available[0]}; no 'train' split"
    raise DataError(f"'{what}' has no split '{split}': choose one of {', '.join(available) or '(none)'}.")


# ---------------------------------------------------------------------------------------------------
# Column detection and decoding


def _pick_columns(features, schema, what: str) -> tuple[str, str | None, list[str] | None]:
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


def _decode_cell(data: bytes | None, path: str | None, size: int, base_dir: str | None) -> np.ndarray | None:
    try:
        return decode_image(data, None if data is not None else _resolve(path, base_dir), size)
    except Skip as e:
        log.warning("Skipping row (%s): too large (%s).", path, e)
    except Exception as e:  # noqa: BLE001 - PIL raises many types on malformed data; each is one skip
        log.warning("Skipping row (%s): cannot decode it (%s: %s).", path, type(e).__name__, e)
    return None


def _decode_tables(
    batches: Iterator,
    total: int,
    img_col: str,
    label_col: str | None,
    class_names: list[str] | None,
    size: int,
    rep: Reporter,
    what: str,
    base_dir: str | None = None,
) -> tuple[np.ndarray, np.ndarray | None, list[str] | None, int]:
    """Decode Arrow batches holding (at least) the image and label columns, the first `total` rows."""
    import warnings

    from PIL import Image

    out: list[np.ndarray] = []
    raw_labels: list = []
    done = 0
    rep(0, total, f"Decoding {what}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        for tbl in batches:
            if done >= total:
                break
            tbl = tbl.slice(0, total - done)
            data, paths = _image_cells(tbl.column(img_col))
            labels = tbl.column(label_col).to_pylist() if label_col is not None else [None] * len(data)
            for d, p, y in zip(data, paths, labels, strict=True):
                a = _decode_cell(d, p, size, base_dir)
                if a is not None:
                    out.append(a)
                    raw_labels.append(y)
            done += len(data)
            rep(done, total, f"Decoding {what}")
    skipped = done - len(out)
    if not out:
        raise DataError(
            f"None of the {done} images in '{what}' could be decoded: check that the data holds valid images."
        )
    labels, names = _labels(raw_labels, label_col, class_names, what)
    return stack(out, size), labels, names, skipped


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
    """Arrow tables of _BATCH rows from a datasets.Dataset (memory-mapped; honours indices)."""
    view = ds.select_columns(columns).with_format("arrow")
    for start in range(0, len(view), _BATCH):
        yield view[start : start + _BATCH]


def _decode_dataset(ds, size: int, limit: int | None, rep: Reporter, what: str, base_dir: str | None = None):
    img, label, names = _pick_columns(ds.features, ds.data.schema, what)
    total = len(ds) if limit is None else min(len(ds), limit)
    if total == 0:
        raise DataError(f"'{what}' holds no rows: choose another split or dataset.")
    cols = [img] + ([label] if label else [])
    return _decode_tables(_dataset_batches(ds, cols), total, img, label, names, size, rep, what, base_dir)


# ---------------------------------------------------------------------------------------------------
# The three sources


def load_hub(
    repo: str, config: str | None, split: str, size: int, limit: int | None, rep: Reporter
) -> Cached:
    """A dataset from the Hub, or from the local datasets cache when the Hub cannot be reached."""
    online = hub_reachable() and _hub_answers(repo)
    label = repo + (f":{config}" if config else "")
    rep(
        0,
        0,
        f"Looking for '{label}' on the Hugging Face Hub"
        if online
        else f"Offline: looking for a cached copy of '{label}'",
    )
    import datasets  # after the probe: importing is fine offline, the first request is what waits

    try:
        from datasets.exceptions import DatasetNotFoundError
    except ImportError:  # older datasets
        DatasetNotFoundError = FileNotFoundError  # noqa: N806

    cache_dir = _hf_datasets_cache()
    names = [repo] + ([_ALIASES[repo]] if not online and repo in _ALIASES else [])
    with _offline(not online):
        builder, error = None, None
        for name in names:
            try:
                builder = datasets.load_dataset_builder(name, config, cache_dir=cache_dir)
                break
            except DatasetNotFoundError as e:  # unknown, private or gated: datasets' text says which
                raise DataError(
                    f"Cannot load '{repo}' from the Hugging Face Hub ({e}): check the name (e.g. 'cifar10', "
                    "'mnist', 'fashion_mnist', 'uoft-cs/cifar10') or use 'builtin' or a local folder."
                ) from e
            except ConnectionError as e:  # offline (or the network failed) and nothing cached
                error = e
            except ValueError as e:
                if "cache" in str(e).lower():  # offline: "Couldn't find cache for x for config 'y'"
                    error = e
                    continue
                raise DataError(
                    f"Cannot load '{label}' from the Hub ({e}); check the name and config."
                ) from e
            except FileNotFoundError as e:
                raise DataError(
                    f"'{label}' was not found on the Hugging Face Hub or in the cache: check the name."
                ) from e
        if builder is None:
            raise DataError(_offline_message(label)) from error

        features = builder.info.features
        if features is not None:  # known before downloading: refuse a dataset without images early
            _pick_columns(features, features.arrow_schema, label)
        rep.check()
        rep(
            0,
            0,
            f"Downloading '{label}' from the Hugging Face Hub"
            if online
            else f"Opening the cached copy of '{label}'",
        )
        try:
            builder.download_and_prepare()
        except ConnectionError as e:
            raise DataError(_offline_message(label)) from e
        rep.check()
        chosen, note = _choose_split(list(builder.info.splits or {}), split, label)
        ds = builder.as_dataset(split=chosen)
    images, labels, class_names, skipped = _decode_dataset(ds, size, limit, rep, label)
    return Cached(images, labels, class_names, f"{label} ({note})", skipped)


def load_saved(path: str, split: str, size: int, limit: int | None, rep: Reporter) -> Cached:
    """A folder written by Dataset.save_to_disk or DatasetDict.save_to_disk."""
    import datasets

    what = os.path.basename(os.path.normpath(path))
    rep(0, 0, f"Opening {what}")
    try:
        obj = datasets.load_from_disk(path)
    except (FileNotFoundError, ValueError, OSError) as e:
        raise DataError(
            f"'{path}' is not a readable save_to_disk folder ({e}); save it again with datasets."
        ) from e
    name = what
    if isinstance(obj, datasets.DatasetDict):
        chosen, note = _choose_split(list(obj), split, what)
        obj, name = obj[chosen], f"{what} ({note})"
    images, labels, class_names, skipped = _decode_dataset(obj, size, limit, rep, what, base_dir=path)
    return Cached(images, labels, class_names, name, skipped)


def load_file(path: str, split: str, size: int, limit: int | None, rep: Reporter) -> Cached:
    """A .parquet file (read in row batches with pyarrow) or an .arrow file (memory-mapped).

    Read with pyarrow rather than Dataset.from_parquet, which first copies the whole file into the
    datasets cache as Arrow; the features (Image, ClassLabel) come from the schema metadata that
    `datasets` writes, read by datasets.Features.
    """
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    what = os.path.basename(path)
    base_dir = os.path.dirname(path)
    rep(0, 0, f"Opening {what}")
    try:
        if path.lower().endswith(".parquet"):
            pf = pq.ParquetFile(path)
            schema, rows = pf.schema_arrow, pf.metadata.num_rows

            def batches(cols: list[str]) -> Iterator:
                return pf.iter_batches(batch_size=_BATCH, columns=cols)
        else:
            table = _read_arrow(path)
            schema, rows = table.schema, table.num_rows

            def batches(cols: list[str]) -> Iterator:
                return iter(table.select(cols).to_batches(max_chunksize=_BATCH))

        features = datasets.Features.from_arrow_schema(schema)
    except (OSError, pa.ArrowException, ValueError) as e:
        raise DataError(
            f"Cannot read '{path}' ({e}): check that it is a valid {os.path.splitext(path)[1]} file."
        ) from e
    img, label, names = _pick_columns(features, schema, what)
    total = rows if limit is None else min(rows, limit)
    if total == 0:
        raise DataError(f"'{path}' holds no rows: choose another file.")
    cols = [img] + ([label] if label else [])
    images, labels, class_names, skipped = _decode_tables(
        batches(cols), total, img, label, names, size, rep, what, base_dir
    )
    return Cached(images, labels, class_names, what, skipped)


def _read_arrow(path: str):
    """An Arrow IPC file: the stream format `datasets` writes, or the random-access (Feather v2) format."""
    import pyarrow as pa

    source = pa.memory_map(path, "r")
    try:
        return pa.ipc.open_stream(source).read_all()
    except pa.ArrowInvalid:
        source.seek(0)
        return pa.ipc.open_file(source).read_all()
