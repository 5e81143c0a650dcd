"""Sources read through Hugging Face `datasets`: Hub ids, save_to_disk folders, parquet/arrow files.

`datasets` (and the pyarrow it brings) is the optional `hub` extra: without it the built-in data and image
folders work as before, and these sources raise a DataError that says how to install it (`require_datasets`).

What `datasets` (5.2, the behaviour is the same since about 2.18) does, and how we use it:

- Offline is a module constant read at import: `datasets.config.HF_HUB_OFFLINE` (from HF_HUB_OFFLINE
  or HF_DATASETS_OFFLINE) and `huggingface_hub.constants.HF_HUB_OFFLINE`. Setting the environment
  after `import datasets` changes nothing, so when our own probes fail we set both constants for the
  duration of the call (`_offline`). Then `load_dataset_builder` fails at once on the network step
  and falls back to the local datasets cache (CachedDatasetModuleFactory + the "cache" builder),
  which holds the prepared Arrow files of any dataset loaded before. Without the offline flag it
  first retries the network: about 23 s when the name does not resolve, 6.6 minutes measured here
  against a server that accepts connections and never answers.
- Hence one probe with one total budget (`check_hub`, HUB_PROBE_BUDGET s): the name lookup, the
  connection and one HTTP answer share it. A TCP connect alone is not enough: a proxy or captive
  portal that accepts connections and never answers made `datasets` retry for 6.6 minutes. Failing the
  probe means offline; the probe runs in a helper thread while `datasets` is imported, so an
  unreachable Hub is an error (or the cached copy) in about that budget.
- That cache is keyed by the name passed: `cifar10` and `uoft-cs/cifar10` are two entries, so offline
  we also try the well-known alias of the name (`_ALIASES`).
- With no cached copy, offline it raises ConnectionError ("Couldn't reach 'x' on the Hub
  (OfflineModeIsEnabled)"), or ValueError ("Couldn't find cache for x for config 'y'") when another
  config is cached; online, DatasetNotFoundError for an unknown id.
- Parquet and arrow files written by `datasets` keep its features (Image, ClassLabel) in their schema
  metadata; `tables.pick_columns` finds the image and label columns from them.

Decoding never goes through `datasets`' per-row Image decoding: batches are read as Arrow tables
(`with_format("arrow")`, or pyarrow directly for files) and the encoded bytes go to the app's one image
loader (`imageio.load_image`, as the files of an image folder do; see `tables.py`), so a corrupt row is
skipped and listed with its reason ("row 17": the loader's message) instead of stopping the whole load.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import urlparse

from ddpm_gui.data import tables
from ddpm_gui.data.cache import Cached
from ddpm_gui.data.sources import Reporter
from ddpm_gui.errors import DataError

log = logging.getLogger(__name__)

# Seconds the whole reachability decision may take: name lookup, connect and one HTTP answer together.
# The Hub answers in a fraction of that; a link too slow for it is told so and can retry.
HUB_PROBE_BUDGET = 1.5
_TRUE = {"1", "ON", "YES", "TRUE"}

# The short names the Hub redirects to a namespaced repository; the datasets cache keeps them apart.
_ALIASES = {
    "cifar10": "uoft-cs/cifar10",
    "cifar100": "uoft-cs/cifar100",
    "mnist": "ylecun/mnist",
    "fashion_mnist": "zalando-datasets/fashion_mnist",
}
_ALIASES.update({v: k for k, v in list(_ALIASES.items())})


HUB_EXTRA_INSTALL = "pip install 'ddpm-gui[hub]'"


def datasets_available() -> bool:
    """Whether `datasets` is installed (found, not imported: the check costs nothing)."""
    import importlib.util

    try:
        return importlib.util.find_spec("datasets") is not None
    except (ImportError, ValueError):  # a half-imported or broken entry in sys.modules
        return False


def datasets_missing_message(what: str) -> str:
    """The one line for `what` ("Hugging Face Hub datasets", ...) when `datasets` is not installed."""
    return (
        f"Reading {what} needs the Hugging Face `datasets` package, which is not installed: install it with "
        f"{HUB_EXTRA_INSTALL}, or use the built-in shapes ('builtin') or a folder of images."
    )


def require_datasets(what: str):
    """The `datasets` module, imported; a DataError saying how to install it when it is missing."""
    try:
        import datasets
    except ImportError as e:
        raise DataError(datasets_missing_message(what)) from e
    return datasets


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


@dataclass(frozen=True)
class HubStatus:
    online: bool
    why: str = ""  # when offline, for the message: "offline mode is set", "... refused the connection"
    slow: bool = False  # something may be there but gave no answer within the budget


def _endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def _probe_thread(url: str, timeout: float, result: list) -> threading.Thread:
    """Start one HEAD request to `url` in a daemon thread; it appends a HubStatus to `result`.

    Only what is imported here runs in the thread (urllib, through the environment's proxies): it
    imports no module itself, so it can run while the caller imports `datasets`. Any HTTP status
    counts as an answer; the certificate is not checked, as nothing is sent but the probe itself
    (`datasets` checks it when it downloads).
    """
    import encodings.idna  # noqa: F401 - the name lookup's codec, imported here rather than in the thread
    import ssl
    import urllib.error
    import urllib.request

    host, port = _probe_address()
    where = f"{host}:{port}"
    context = ssl._create_unverified_context()
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler(), urllib.request.HTTPSHandler(context=context)
    )

    def probe() -> None:
        try:
            opener.open(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
            status = HubStatus(True)
        except urllib.error.HTTPError:  # a 401/404 still proves the Hub is there
            status = HubStatus(True)
        except Exception as e:  # every failure is "offline", with its reason
            err = (
                e.reason
                if isinstance(e, urllib.error.URLError) and isinstance(e.reason, BaseException)
                else e
            )
            if isinstance(err, TimeoutError):
                status = HubStatus(False, f"{where} did not answer within {timeout:g} s", slow=True)
            elif isinstance(err, socket.gaierror):
                status = HubStatus(False, f"the name {host} cannot be resolved")
            elif isinstance(err, ConnectionRefusedError):
                status = HubStatus(False, f"{where} refused the connection")
            elif isinstance(err, ssl.SSLError):
                status = HubStatus(False, f"{where} did not answer over TLS ({err.reason or err})")
            else:
                status = HubStatus(False, f"{where}: {getattr(err, 'strerror', None) or err}")
            log.info("The Hub did not answer %s: %s: %s", url, type(e).__name__, e)
        result.append(status)

    t = threading.Thread(target=probe, name="hub-probe", daemon=True)
    t.start()
    return t


def _wait(t: threading.Thread, result: list, deadline: float, budget: float) -> HubStatus:
    t.join(max(0.0, deadline - time.monotonic()))
    if result:
        return result[0]
    host, port = _probe_address()
    return HubStatus(False, f"{host}:{port} did not answer within {budget:g} s", slow=True)


_OFFLINE_SET = "HF_HUB_OFFLINE or HF_DATASETS_OFFLINE is set"


def _start_check(repo: str = "", budget: float | None = None) -> Callable[[], HubStatus]:
    """Start the probe of check_hub; the returned function waits for its answer (up to the budget)."""
    if _offline_requested():
        return lambda: HubStatus(False, _OFFLINE_SET)
    from urllib.parse import quote

    budget = HUB_PROBE_BUDGET if budget is None else budget
    deadline = time.monotonic() + budget
    result: list = []
    t = _probe_thread(f"{_endpoint()}/api/datasets/{quote(repo, safe='/')}", budget, result)
    return lambda: _wait(t, result, deadline, budget)


def check_hub(repo: str = "", budget: float | None = None) -> HubStatus:
    """Whether the Hub (HF_ENDPOINT, through the HTTPS proxy when one is set) answers an HTTP request
    about `repo` within `budget` seconds (default HUB_PROBE_BUDGET), all of it included: the name
    lookup, the connection and the answer. Offline at once when HF_HUB_OFFLINE=1 or
    HF_DATASETS_OFFLINE=1.
    """
    return _start_check(repo, budget)()


def hub_reachable(timeout: float | None = None) -> bool:
    """True when the Hub answers within `timeout` seconds (default HUB_PROBE_BUDGET); see check_hub."""
    return check_hub(budget=timeout).online


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


def _offline_message(repo: str, status: HubStatus | None = None) -> str:
    alternatives = (
        "use the built-in dataset ('builtin'), a local folder of images or a parquet/arrow file, or load "
        f"'{repo}' once while online (later loads use that cached copy)"
    )
    if status is not None and status.slow:
        return (
            f"The Hugging Face Hub did not answer in time ({status.why}) and no cached copy of '{repo}' "
            f"was found: retry, or {alternatives}."
        )
    if status is not None and status.why == _OFFLINE_SET:
        return f"Working offline ({_OFFLINE_SET}) and no cached copy of '{repo}' was found: {alternatives}."
    why = f" ({status.why})" if status is not None and status.why else ""
    return f"Cannot reach the Hugging Face Hub{why} and no cached copy of '{repo}' was found: {alternatives}."


def _choose_split(available: list[str], split: str, what: str) -> tuple[str, str]:
    """(split to use, text for the name): `split` itself, or the first one when 'train' is missing."""
    if split in available:
        return split, split
    if split == "train" and available:
        return available[0], f"{available[0]}; no 'train' split"
    raise DataError(f"'{what}' has no split '{split}': choose one of {', '.join(available) or '(none)'}.")


# ---------------------------------------------------------------------------------------------------
# The three sources


def load_hub(
    repo: str, config: str | None, split: str, size: int, limit: int | None, rep: Reporter
) -> Cached:
    """A dataset from the Hub, or from the local datasets cache when the Hub cannot be reached."""
    label = repo + (f":{config}" if config else "")
    wait = _start_check(repo)  # the probe runs while datasets is imported: its budget covers both
    datasets = require_datasets("Hugging Face Hub datasets")

    status = wait()
    online = status.online
    rep(
        0,
        0,
        f"Looking for '{label}' on the Hugging Face Hub"
        if online
        else f"Offline: looking for a cached copy of '{label}'",
    )

    try:
        from datasets.exceptions import DatasetNotFoundError
    except ImportError:  # older datasets
        DatasetNotFoundError = FileNotFoundError

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
                    f"'{repo}' was not found on the Hugging Face Hub, or it is private or gated ({e}): check "
                    "the name (e.g. 'cifar10', 'mnist', 'fashion_mnist', 'uoft-cs/cifar10'), or use 'builtin' "
                    "or a local folder of images."
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
            raise DataError(_offline_message(label, status)) from error

        features = builder.info.features
        if features is not None:  # known before downloading: refuse a dataset without images early
            tables.pick_columns(features, features.arrow_schema, label)
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
            raise DataError(_offline_message(label, status)) from e
        rep.check()
        chosen, note = _choose_split(list(builder.info.splits or {}), split, label)
        ds = builder.as_dataset(split=chosen)
    return tables.decode_dataset(ds, size, limit, rep, label).cached(f"{label} ({note})")


def load_saved(path: str, split: str, size: int, limit: int | None, rep: Reporter) -> Cached:
    """A folder written by Dataset.save_to_disk or DatasetDict.save_to_disk."""
    datasets = require_datasets("save_to_disk folders")

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
    return tables.decode_dataset(obj, size, limit, rep, what, base_dir=path).cached(name)


def load_file(path: str, split: str, size: int, limit: int | None, rep: Reporter) -> Cached:
    """A .parquet file (read in row batches with pyarrow) or an .arrow file (memory-mapped).

    Read with pyarrow rather than Dataset.from_parquet, which first copies the whole file into the
    datasets cache as Arrow; the features (Image, ClassLabel) come from the schema metadata that
    `datasets` writes, read by datasets.Features.
    """
    datasets = require_datasets("parquet and arrow files")
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
                return pf.iter_batches(batch_size=tables.BATCH, columns=cols)
        else:
            table = tables.read_arrow(path)
            schema, rows = table.schema, table.num_rows

            def batches(cols: list[str]) -> Iterator:
                return iter(table.select(cols).to_batches(max_chunksize=tables.BATCH))

        features = datasets.Features.from_arrow_schema(schema)
    except (OSError, pa.ArrowException, ValueError) as e:
        raise DataError(
            f"Cannot read '{path}' ({e}): check that it is a valid {os.path.splitext(path)[1]} file."
        ) from e
    img, label, names = tables.pick_columns(features, schema, what)
    total = rows if limit is None else min(rows, limit)
    if total == 0:
        raise DataError(f"'{path}' holds no rows: choose another file.")
    cols = [img] + ([label] if label else [])
    decoded = tables.decode_tables(batches(cols), total, img, label, names, size, rep, what, base_dir)
    return decoded.cached(what)
