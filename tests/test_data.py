"""Tests for ddpm_gui.data: offline, small, under tmp_path (no network, no home-directory caches)."""

from __future__ import annotations

import importlib.util
import io
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ddpm_gui.data import (
    BUILTIN_CLASSES,
    Cancelled,
    ImageData,
    default_cache_dir,
    describe_source,
    generate_builtin,
    hub_reachable,
    load_data,
)
from ddpm_gui.errors import DataError

# Hub ids, parquet/arrow files and save_to_disk folders need the optional `hub` extra (CI installs it
# through the `test` extra); the rest of this file runs without it.
needs_datasets = pytest.mark.skipif(
    importlib.util.find_spec("datasets") is None, reason="needs datasets: pip install 'ddpm-gui[hub]'"
)

NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(autouse=True)
def offline_env(tmp_path, monkeypatch):
    """No network and no caches outside tmp_path, whatever the machine's environment says."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))
    monkeypatch.setenv("DDPM_GUI_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def cache(tmp_path) -> Path:
    return tmp_path / "cache"


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _png(arr: np.ndarray) -> bytes:
    return _encode(Image.fromarray(arr), "PNG")


def _rgb(i: int, h: int = 32, w: int = 32) -> np.ndarray:
    return np.full((h, w, 3), (i * 20) % 256, np.uint8)


def _cifar_like(n: int = 20):
    """A datasets.Dataset with the Hub CIFAR-10 schema: img (Image), label (ClassLabel)."""
    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as HFImage

    imgs = [Image.fromarray(_rgb(i)) for i in range(n)]
    features = Features({"img": HFImage(), "label": ClassLabel(names=NAMES)})
    return Dataset.from_dict({"img": imgs, "label": [i % 10 for i in range(n)]}, features=features)


# ---------------------------------------------------------------------------------------------------
# builtin


def test_builtin_shape_dtype_classes():
    x, y = generate_builtin(200, seed=0)
    assert x.shape == (200, 32, 32, 3) and x.dtype == np.uint8 and x.flags.c_contiguous
    assert y.shape == (200,) and y.dtype == np.int64
    assert len(BUILTIN_CLASSES) == 10 and len(set(BUILTIN_CLASSES)) == 10
    # balanced: every aligned run of 10 images holds all the classes
    assert np.array_equal(np.bincount(y, minlength=10), np.full(10, 20))
    x64, _ = generate_builtin(10, seed=0, size=64)
    assert x64.shape == (10, 64, 64, 3)


def test_builtin_deterministic_and_prefix_stable():
    a, ya = generate_builtin(1500, seed=7)
    b, yb = generate_builtin(1500, seed=7)
    assert np.array_equal(a, b) and np.array_equal(ya, yb)
    c, yc = generate_builtin(1100, seed=7)  # a shorter run gives the first images of a longer one
    assert np.array_equal(a[:1100], c) and np.array_equal(ya[:1100], yc)
    d, _ = generate_builtin(1500, seed=8)
    assert (a != d).mean() > 0.5
    e, _ = generate_builtin(1500, seed=7, stream=1)
    assert (a != e).mean() > 0.5


def test_builtin_has_colour_and_contrast():
    x, _ = generate_builtin(100, seed=0)
    f = x.astype(np.float32)
    assert (f.max(-1) - f.min(-1)).max(axis=(1, 2)).min() > 60  # a saturated colour in every image
    value = f.max(-1)  # HSV value: the bright shape on a dark background
    assert (value.max(axis=(1, 2)) - value.min(axis=(1, 2))).min() > 100
    luma = f @ np.array([0.299, 0.587, 0.114], np.float32)  # and brighter to the eye, even a pure blue
    assert (luma.max(axis=(1, 2)) >= 1.8 * luma.min(axis=(1, 2))).all()


def _fft_features(x: np.ndarray) -> np.ndarray:
    """Translation-invariant features: |FFT| of the normalised grey image."""
    g = x.astype(np.float32).mean(-1)
    g = (g - g.mean((1, 2), keepdims=True)) / (g.std((1, 2), keepdims=True) + 1e-6)
    f = np.abs(np.fft.rfft2(g)).reshape(len(x), -1)
    return f / np.linalg.norm(f, axis=1, keepdims=True)


def test_builtin_classes_are_recognisable():
    """A nearest-centroid classifier, trained on one seed and tested on another, is far above chance."""
    x, y = generate_builtin(2000, seed=0)
    xt, yt = generate_builtin(500, seed=1)
    f, ft = _fft_features(x), _fft_features(xt)
    centroids = np.stack([f[y == k].mean(0) for k in range(10)])
    pred = np.argmin(((ft[:, None, :] - centroids[None]) ** 2).sum(-1), axis=1)
    assert (pred == yt).mean() > 0.8
    # and the classes differ in where the foreground is, on average
    grey = x.astype(np.float32).mean(-1)
    fg = (grey > grey.mean(axis=(1, 2))[:, None, None]).astype(np.float32)
    masks = np.stack([fg[y == k].mean(0) for k in range(10)])
    dist = np.abs(masks[:, None] - masks[None]).mean(axis=(2, 3))
    assert dist[~np.eye(10, dtype=bool)].min() > 0.01


def test_load_builtin_and_cache(cache, monkeypatch):
    calls = []
    d = load_data("builtin:300", cache_dir=cache, progress=lambda *a: calls.append(a))
    assert isinstance(d, ImageData) and len(d) == 300 and d.size == 32 and d.num_classes == 10
    assert (
        d.class_names == BUILTIN_CLASSES and d.name == "builtin shapes (seed 0)" and d.source == "builtin:300"
    )
    assert d.cache_path is not None and d.cache_path.is_file() and d.cache_path.parent == cache
    assert calls and calls[-1][0] == calls[-1][1] == 300

    import ddpm_gui.data.builtin as builtin

    def fail(*a, **k):
        raise AssertionError("generated again instead of using the cache")

    monkeypatch.setattr(builtin, "generate_builtin", fail)
    again = load_data("builtin:300", cache_dir=cache)
    assert np.array_equal(again.images, d.images) and np.array_equal(again.labels, d.labels)
    limited = load_data("builtin:1000", limit=300, cache_dir=cache)  # the same 300 images, the same file
    assert limited.cache_path == d.cache_path


def test_builtin_test_split_differs(cache):
    tr = load_data("builtin:50", cache_dir=cache)
    te = load_data("builtin:50", split="test", cache_dir=cache)
    assert "test" in te.name and not np.array_equal(tr.images, te.images)


def test_default_cache_dir(monkeypatch, tmp_path):
    assert default_cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("DDPM_GUI_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert default_cache_dir() == Path.home() / ".cache" / "ddpm_gui" / "data"


def test_default_cache_dir_used(tmp_path):
    d = load_data("builtin:20")
    assert d.cache_path is not None and d.cache_path.parent == tmp_path / "cache"


# ---------------------------------------------------------------------------------------------------
# parquet / arrow / save_to_disk


@needs_datasets
def test_parquet_hub_cifar_schema(tmp_path, cache):
    path = tmp_path / "train.parquet"
    _cifar_like(20).to_parquet(str(path))
    d = load_data(str(path), cache_dir=cache)
    assert d.images.shape == (20, 32, 32, 3) and d.images.dtype == np.uint8
    assert d.labels.tolist() == [i % 10 for i in range(20)]
    assert d.class_names == NAMES and d.num_classes == 10 and d.skipped == 0
    assert np.array_equal(d.images[3], _rgb(3))
    assert d.name == "train.parquet" and d.source == str(path)
    first = load_data(str(path), limit=5, cache_dir=cache)
    assert len(first) == 5 and np.array_equal(first.images, d.images[:5])


@needs_datasets
def test_parquet_image_column_and_conversions(tmp_path, cache):
    """An imagefolder-style `image` column; grey, RGBA, palette, 16-bit and odd sizes become (32, 32, 3)."""
    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as HFImage

    grey = Image.fromarray(np.full((32, 32), 100, np.uint8), "L")
    rgba_arr = np.zeros((32, 32, 4), np.uint8)
    rgba_arr[..., 0] = 200
    rgba_arr[..., 3] = 128  # half transparent red over black -> about 100
    rgba = Image.fromarray(rgba_arr, "RGBA")
    # 40 wide, 28 high: a horizontal gradient
    odd = Image.fromarray(np.tile(np.arange(40, dtype=np.uint8)[None, :, None] * 5, (28, 1, 3)))
    pal = Image.fromarray(np.full((32, 32, 3), 51, np.uint8)).convert("P")  # 51: in the web palette
    deep = Image.fromarray(np.full((16, 16), 65535, np.uint16))  # 16-bit white
    rows = [grey, rgba, odd, pal, deep]
    features = Features({"image": HFImage(), "label": ClassLabel(names=["a", "b"])})
    ds = Dataset.from_dict({"image": rows, "label": [0, 1, 0, 1, 0]}, features=features)
    path = tmp_path / "mixed.parquet"
    ds.to_parquet(str(path))
    d = load_data(str(path), cache_dir=cache)
    assert d.images.shape == (5, 32, 32, 3) and d.class_names == ["a", "b"]
    assert np.all(d.images[0] == 100)
    assert abs(int(d.images[1, 5, 5, 0]) - 100) <= 2 and d.images[1, 5, 5, 1] == 0
    assert np.all(d.images[3] == 51)
    assert np.all(d.images[4] >= 254)  # scaled down from 16 bits, not clipped to garbage
    # the odd image: shorter side 28 -> 32, centre crop of the 40-wide gradient (left dark, right bright)
    assert d.images[2, :, 0].mean() < d.images[2, :, -1].mean()


@needs_datasets
def test_parquet_without_labels_and_without_images(tmp_path, cache):
    from datasets import Dataset, Features, Value
    from datasets import Image as HFImage

    path = tmp_path / "nolabel.parquet"
    Dataset.from_dict(
        {"image": [Image.fromarray(_rgb(i)) for i in range(4)]}, features=Features({"image": HFImage()})
    ).to_parquet(str(path))
    d = load_data(str(path), cache_dir=cache)
    assert d.labels is None and d.class_names is None and d.num_classes == 0 and len(d) == 4

    text = tmp_path / "text.parquet"
    Dataset.from_dict({"text": ["a", "b"]}, features=Features({"text": Value("string")})).to_parquet(
        str(text)
    )
    with pytest.raises(DataError, match="no image column"):
        load_data(str(text), cache_dir=cache)


@needs_datasets
def test_plain_parquet_without_datasets_metadata(tmp_path, cache):
    """Written by pyarrow alone: an encoded-image struct and an integer `label` column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    img = pa.array([{"bytes": _png(_rgb(i)), "path": None} for i in range(6)])
    table = pa.table({"picture": img, "label": pa.array([3, 7, 3, 7, 3, 7])})
    path = tmp_path / "plain.parquet"
    pq.write_table(table, path)
    d = load_data(str(path), cache_dir=cache)
    assert len(d) == 6 and d.class_names == ["3", "7"] and d.labels.tolist() == [0, 1, 0, 1, 0, 1]


@needs_datasets
def test_corrupt_rows_are_skipped(tmp_path, cache):
    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as HFImage

    cells = [{"bytes": _png(_rgb(i)), "path": None} for i in range(4)]
    cells[1] = {"bytes": b"not an image at all", "path": "bad.png"}
    features = Features({"img": HFImage(), "label": ClassLabel(names=NAMES)})
    path = tmp_path / "bad.parquet"
    Dataset.from_dict({"img": cells, "label": [0, 1, 2, 3]}, features=features).to_parquet(str(path))
    d = load_data(str(path), cache_dir=cache)
    assert len(d) == 3 and d.skipped == 1 and d.labels.tolist() == [0, 2, 3]
    assert d.skipped_items[0].name == "row 1, bad.png" and "not an image" in d.skipped_items[0].reason


@needs_datasets
def test_arrow_files(tmp_path, cache):
    import pyarrow as pa
    import pyarrow.feather as feather

    ds = _cifar_like(12)
    ds.save_to_disk(str(tmp_path / "saved"))
    arrow = next((tmp_path / "saved").glob("*.arrow"))  # the stream format datasets writes
    d = load_data(str(arrow), cache_dir=cache)
    assert len(d) == 12 and d.class_names == NAMES
    fe = tmp_path / "feather.arrow"  # the random-access (Feather v2) format
    feather.write_feather(pa.table({"img": ds.data.column("img"), "label": ds.data.column("label")}), str(fe))
    assert len(load_data(str(fe), cache_dir=cache)) == 12


@needs_datasets
def test_save_to_disk_dataset_and_dict(tmp_path, cache):
    from datasets import DatasetDict

    _cifar_like(10).save_to_disk(str(tmp_path / "one"))
    assert describe_source(str(tmp_path / "one")) == "saved"
    d = load_data(str(tmp_path / "one"), cache_dir=cache)
    assert len(d) == 10 and d.class_names == NAMES

    DatasetDict({"train": _cifar_like(8), "test": _cifar_like(4)}).save_to_disk(str(tmp_path / "dict"))
    assert len(load_data(str(tmp_path / "dict"), cache_dir=cache)) == 8
    te = load_data(str(tmp_path / "dict"), split="test", cache_dir=cache)
    assert len(te) == 4 and "test" in te.name
    with pytest.raises(DataError, match="train, test"):
        load_data(str(tmp_path / "dict"), split="validation", cache_dir=cache)

    DatasetDict({"test": _cifar_like(3)}).save_to_disk(str(tmp_path / "testonly"))
    # no 'train': the first split, and the name says so
    only = load_data(str(tmp_path / "testonly"), cache_dir=cache)
    assert len(only) == 3 and "no 'train' split" in only.name


@pytest.mark.parametrize(
    "stray",
    [
        {"state.json": b'{"step": 3}'},  # a tool's own state file
        {"state.json": b"not json", "dataset_info.json": b"{}"},
        # save_to_disk's own state.json, copied here without its shards
        {
            "state.json": b'{"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}',
            "dataset_info.json": b"{}",
        },
        {"dataset_dict.json": b'{"splits": ["cat"]}'},  # names a class folder, not a Dataset folder
    ],
)
@pytest.mark.parametrize("labelled", [True, False])
def test_image_folder_with_stray_dataset_files_is_read_as_images(tmp_path, cache, stray, labelled):
    root = tmp_path / "pics"
    for i in range(3):
        _write(root / ("cat" if labelled else "") / f"c{i}.png", _png(_rgb(1)))
        _write(root / ("dog" if labelled else "") / f"d{i}.png", _png(_rgb(2)))
    for name, data in stray.items():
        _write(root / name, data)
    # what Finder, Windows Explorer and macOS archives leave beside images: neither images nor skips
    for junk in (".DS_Store", "Thumbs.db", "._c0.png", "desktop.ini"):
        _write(root / ("cat" if labelled else "") / junk, b"\x00\x05\x16\x07 not an image")
    assert describe_source(str(root)) == "folder"
    d = load_data(str(root), image_size=8, cache_dir=cache)
    assert len(d) == 6 and d.skipped == 0
    assert d.class_names == (["cat", "dog"] if labelled else None)


@needs_datasets
def test_save_to_disk_folder_with_extra_files_is_still_saved(tmp_path, cache):
    from datasets import DatasetDict

    root = tmp_path / "one"
    _cifar_like(10).save_to_disk(str(root))
    _write(root / "README.md", b"# my data")
    _write(root / "preview.png", _png(_rgb(9)))
    assert describe_source(str(root)) == "saved"
    d = load_data(str(root), image_size=8, cache_dir=cache)
    assert len(d) == 10 and d.class_names == NAMES
    DatasetDict({"train": _cifar_like(4)}).save_to_disk(str(tmp_path / "dict"))
    assert describe_source(str(tmp_path / "dict")) == "saved"


def _nothing_message(root: Path, cache: Path) -> str:
    assert describe_source(str(root)) == "folder"
    with pytest.raises(DataError) as info:
        load_data(str(root), image_size=8, cache_dir=cache)
    msg = str(info.value)
    assert "\n" not in msg and "save_to_disk" in msg and ".parquet or .arrow file" in msg, msg
    assert "one sub-folder per class" in msg and "'builtin'" in msg, msg
    return msg


def test_folder_with_nothing_to_load_says_what_is_accepted(tmp_path, cache):
    empty = tmp_path / "empty"
    _write(empty / ".DS_Store", b"\x00")
    _write(empty / "Thumbs.db", b"\x00")
    assert "holds no images and no dataset" in _nothing_message(empty, cache)

    snapshot = tmp_path / "snapshot"  # a Hub repository as downloaded: the parquet files sit in data/
    _write(snapshot / "README.md", b"---\nlicense: mit\n---\n")
    _write(snapshot / "data" / "train-00000-of-00001.parquet", b"PAR1")  # named, never read
    msg = _nothing_message(snapshot, cache)
    assert str(Path("data") / "train-00000-of-00001.parquet") in msg and "give that file" in msg, msg


@needs_datasets
def test_save_to_disk_folder_missing_its_shard_names_it(tmp_path, cache):
    root = tmp_path / "broken"
    _cifar_like(4).save_to_disk(str(root))
    shard = next(root.glob("*.arrow"))
    shard.unlink()
    msg = _nothing_message(root, cache)
    assert f"lists {shard.name}, which is missing" in msg, msg


# ---------------------------------------------------------------------------------------------------
# folders


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_folder_with_classes_and_bad_files(tmp_path, cache):
    root = tmp_path / "pets"
    for i in range(3):
        _write(root / "cat" / f"{i}.png", _png(_rgb(1)))
        _write(root / "dog" / "deep" / f"{i}.PNG", _png(_rgb(2, 48, 64)))
    _write(root / "cat" / "corrupt.png", np.random.default_rng(0).bytes(500))
    good = _png(_rgb(3))
    _write(root / "dog" / "truncated.png", good[: len(good) // 2])
    _write(root / "dog" / "notes.txt", b"not an image, ignored and not counted")
    _write(root / ".hidden" / "x.png", _png(_rgb(4)))
    d = load_data(str(root), cache_dir=cache)
    assert len(d) == 6 and d.skipped == 2
    assert d.class_names == ["cat", "dog"] and d.labels.tolist() == [0, 1, 0, 1, 0, 1]  # classes in turn
    assert np.all(d.images[d.labels == 0] == _rgb(1)[0, 0, 0]) and np.all(
        d.images[d.labels == 1] == _rgb(2)[0, 0, 0]
    )
    assert d.name == "pets (folder)" and describe_source(str(root)) == "folder"
    two = load_data(str(root), limit=2, cache_dir=cache)
    assert two.labels.tolist() == [0, 1]  # a limit keeps every class


def test_folder_unlabelled_and_odd_images(tmp_path, cache):
    root = tmp_path / "flat"
    _write(root / "a.jpg", _encode(Image.fromarray(_rgb(5, 300, 200)), "JPEG"))
    _write(root / "b.gif", _encode(Image.fromarray(_rgb(6)).convert("P"), "GIF"))
    _write(root / "c.webp", _encode(Image.fromarray(_rgb(7)), "WEBP", lossless=True))
    _write(root / "d.png", _png(np.full((10, 10), 30000, np.uint16)))
    d = load_data(str(root), image_size=16, cache_dir=cache)
    assert (
        d.images.shape == (4, 16, 16, 3) and d.labels is None and d.class_names is None and d.num_classes == 0
    )


def test_folder_exif_orientation_links_and_root_files(tmp_path, cache):
    root = tmp_path / "photos"
    arr = np.zeros((32, 64, 3), np.uint8)
    arr[:, 32:] = 255  # landscape: dark left half, bright right half
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view"
    _write(root / "cam" / "p.jpg", _encode(Image.fromarray(arr), "JPEG", exif=exif.tobytes(), quality=95))
    _write(root / "stray.png", _png(_rgb(1)))  # beside class folders: left out, and said
    (root / "cam" / "loop").symlink_to(
        root, target_is_directory=True
    )  # a link back up is not followed forever
    d = load_data(str(root), cache_dir=cache)
    assert len(d) == 1 and d.class_names == ["cam"] and d.skipped == 1
    assert d.skipped_items[0].name == "stray.png" and "class folder" in d.skipped_items[0].reason
    img = d.images[0].astype(int)
    assert img[:8].mean() < 60 and img[-8:].mean() > 200  # upright: the dark half is now on top


def test_folder_refuses_huge_images(tmp_path, cache, monkeypatch):
    import ddpm_gui.data.imageio as imageio

    root = tmp_path / "big"
    _write(root / "small.png", _png(_rgb(1)))
    _write(root / "large.png", _png(_rgb(1, 64, 64)))
    monkeypatch.setattr(imageio, "MAX_PIXELS", 40 * 40)  # our own limit
    d = load_data(str(root), cache_dir=cache)
    assert len(d) == 1 and d.skipped == 1
    assert d.skipped_items[0].name == "large.png" and "1,600-pixel limit" in d.skipped_items[0].reason
    monkeypatch.setattr(imageio, "MAX_PIXELS", 10**9)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 64 // 2 - 1)  # PIL's DecompressionBombError
    d = load_data(str(root), image_size=16, cache_dir=cache)
    assert len(d) == 1 and d.skipped == 1


def test_empty_and_missing_folders(tmp_path, cache):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(
        DataError, match=r"'.*empty' holds no images and no dataset: give a folder of images \(\.png"
    ):
        load_data(str(tmp_path / "empty"), cache_dir=cache)
    _write(tmp_path / "allbad" / "x.png", b"garbage")
    with pytest.raises(DataError, match="could be decoded"):
        load_data(str(tmp_path / "allbad"), cache_dir=cache)
    with pytest.raises(DataError, match="does not exist"):
        load_data(str(tmp_path / "nope"), cache_dir=cache)
    with pytest.raises(DataError, match="does not exist"):
        load_data(str(tmp_path / "nope.parquet"), cache_dir=cache)


def test_folder_cache_reused_and_invalidated(tmp_path, cache, monkeypatch):
    import ddpm_gui.data.folder as folder

    root = tmp_path / "imgs"
    for i in range(4):
        _write(root / f"{i}.png", _png(_rgb(i)))
    first = load_data(str(root), cache_dir=cache)

    def fail(*a, **k):
        raise AssertionError("decoded again instead of using the cache")

    with monkeypatch.context() as m:
        m.setattr(folder, "load_image", fail)
        again = load_data(str(root), cache_dir=cache)
    assert np.array_equal(first.images, again.images) and again.cache_path == first.cache_path
    _write(root / "4.png", _png(_rgb(4)))  # a new file: a new cache entry
    assert len(load_data(str(root), cache_dir=cache)) == 5


@needs_datasets
def test_corrupt_cache_is_rebuilt(tmp_path, cache):
    path = tmp_path / "t.parquet"
    _cifar_like(10).to_parquet(str(path))
    d = load_data(str(path), cache_dir=cache)
    d.cache_path.write_bytes(b"PK\x03\x04 this is not a valid npz")
    again = load_data(str(path), cache_dir=cache)
    assert np.array_equal(again.images, d.images)
    with np.load(again.cache_path, allow_pickle=False) as f:  # and the file is whole again
        assert f["images"].shape == (10, 32, 32, 3)
    d.cache_path.write_bytes(d.cache_path.read_bytes()[:1000])  # truncated
    assert len(load_data(str(path), cache_dir=cache)) == 10


def test_unwritable_cache_still_loads(tmp_path):
    blocker = tmp_path / "file-not-dir"
    blocker.write_text("x")
    d = load_data("builtin:20", cache_dir=blocker / "sub")
    assert len(d) == 20 and d.cache_path is None


# ---------------------------------------------------------------------------------------------------
# Hub


@needs_datasets
def test_hub_offline_without_cache_fails_fast():
    assert hub_reachable() is False
    t = time.perf_counter()
    with pytest.raises(DataError, match="builtin") as e:
        load_data("cifar10")
    assert time.perf_counter() - t < 2.0
    assert "'cifar10'" in str(e.value) and "no cached copy" in str(e.value)


PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def _online_env(monkeypatch, endpoint: str) -> None:
    """As on a machine that is not set to work offline, with the Hub at `endpoint` and no proxy."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", *PROXY_VARS):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)


@pytest.fixture
def silent_endpoint():
    """A server (a proxy, a captive portal, a hung Hub) that accepts connections and never sends a byte."""
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.05)
    stop, held = threading.Event(), []

    def accept() -> None:
        while not stop.is_set():
            try:
                held.append(server.accept()[0])  # kept open, never answered
            except OSError:
                pass

    th = threading.Thread(target=accept, daemon=True)
    th.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    th.join(5)
    for conn in held:
        conn.close()
    server.close()


@pytest.fixture
def closed_endpoint():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connections are refused
    return f"http://127.0.0.1:{port}"


def test_hub_reachable_times_out_quickly(monkeypatch, closed_endpoint):
    _online_env(monkeypatch, closed_endpoint)
    t = time.monotonic()
    assert hub_reachable(timeout=0.5) is False
    assert time.monotonic() - t < 1.0


@needs_datasets
@pytest.mark.parametrize("where", ["silent", "closed", "unresolvable"])
def test_unreachable_hub_fails_fast_naming_the_alternatives(
    where, cache, monkeypatch, silent_endpoint, closed_endpoint
):
    """No offline variables set: the probe alone (name lookup, connect and answer in one budget) decides."""
    endpoint = {
        "silent": silent_endpoint,
        "closed": closed_endpoint,
        "unresolvable": "http://nonexistent.invalid",
    }[where]
    _online_env(monkeypatch, endpoint)
    t = time.monotonic()
    with pytest.raises(DataError) as e:
        load_data("cifar10", cache_dir=cache)
    elapsed = time.monotonic() - t
    assert elapsed < 2.0, elapsed
    msg = str(e.value)
    assert "\n" not in msg and "'cifar10'" in msg and "no cached copy" in msg, msg
    assert "('builtin')" in msg and "a local folder of images" in msg and "cached copy" in msg, msg
    if where == "silent":
        assert "did not answer within 1.5 s" in msg and "retry" in msg, msg
    elif where == "closed":
        assert "refused the connection" in msg, msg
    else:  # a resolver that answers says so; one that hangs is "did not answer" like a silent server
        assert "nonexistent.invalid" in msg, msg


def test_hub_that_answers_any_status_is_online(monkeypatch):
    """The probe does not always say "offline": an HTTP answer, even a 404, means the Hub is there."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from ddpm_gui.data.hub import check_hub

    paths = []

    class NotFound(BaseHTTPRequestHandler):
        def do_HEAD(self):  # http.server's name
            paths.append(self.path)
            self.send_response(404)
            self.end_headers()

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    th = threading.Thread(target=server.serve_forever, daemon=True)
    th.start()
    try:
        _online_env(monkeypatch, f"http://127.0.0.1:{server.server_address[1]}")
        status = check_hub("uoft-cs/cifar10")
        assert status.online and not status.slow, status
        assert paths == ["/api/datasets/uoft-cs/cifar10"]
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # an offline setting wins, without a request
        t = time.monotonic()
        assert check_hub("uoft-cs/cifar10").online is False and time.monotonic() - t < 0.1
        assert len(paths) == 1
    finally:
        server.shutdown()
        server.server_close()


@needs_datasets
def test_unknown_hub_id_when_the_hub_answers(monkeypatch, cache):
    import datasets
    from datasets.exceptions import DatasetNotFoundError

    import ddpm_gui.data.hub as hub

    asked = []

    def not_found(name, config=None, **kw):
        asked.append(name)
        raise DatasetNotFoundError(f"Dataset '{name}' doesn't exist on the Hub or cannot be accessed.")

    monkeypatch.setattr(hub, "_start_check", lambda repo="", budget=None: lambda: hub.HubStatus(True))
    monkeypatch.setattr(datasets, "load_dataset_builder", not_found)
    with pytest.raises(DataError) as e:
        load_data("nobody/no-such-dataset", cache_dir=cache)
    msg = str(e.value)
    assert "'nobody/no-such-dataset' was not found on the Hugging Face Hub" in msg, msg
    assert "check the name (e.g. 'cifar10'" in msg and "'builtin'" in msg and "local folder" in msg, msg
    assert asked == ["nobody/no-such-dataset"]  # asked once, online (offline would also try the alias)


def _fake_hub_cache(tmp_path: Path, name: str) -> None:
    """Lay out the datasets cache the way a finished online `load_dataset(name)` leaves it.

    Built with the parquet builder under the Hub name, then moved to the config folder a Hub load
    uses ("plain_text", without the data-files hash that a local build appends).
    """
    from datasets.packaged_modules.parquet.parquet import Parquet

    src = tmp_path / "src"
    src.mkdir()
    _cifar_like(20).to_parquet(str(src / "train.parquet"))
    _cifar_like(5).to_parquet(str(src / "test.parquet"))
    cache_dir = tmp_path / "hf" / "datasets"
    b = Parquet(
        cache_dir=str(cache_dir),
        dataset_name=name.split("/")[-1],
        config_name="plain_text",
        data_files={"train": str(src / "train.parquet"), "test": str(src / "test.parquet")},
        hash="0123456789abcdef0123456789abcdef01234567",
    )
    b.download_and_prepare()
    built = Path(b.cache_dir).parents[1]  # .../<name>/plain_text-<hash>
    target = cache_dir / name.replace("/", "___") / "plain_text"
    target.parent.mkdir(parents=True, exist_ok=True)
    built.rename(target)


@needs_datasets
def test_hub_offline_uses_cached_copy(tmp_path, cache, monkeypatch, silent_endpoint):
    import datasets.config
    import huggingface_hub.constants

    _fake_hub_cache(tmp_path, "cifar10")
    # As in an app that imported datasets while online: no offline variables, the flags read as False.
    # Our probe fails (nothing listens there), and load_data switches datasets offline for the call.
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    t = time.perf_counter()
    d = load_data("cifar10", cache_dir=cache)
    assert time.perf_counter() - t < 5.0
    assert len(d) == 20 and d.class_names == NAMES and d.name == "cifar10 (train)"
    te = load_data("uoft-cs/cifar10", split="test", cache_dir=cache)  # the alias finds the same cached copy
    assert len(te) == 5 and te.name == "uoft-cs/cifar10 (test)"
    # a Hub that accepts connections and never answers: the same cached copy, after the probe's budget
    monkeypatch.setenv("HF_ENDPOINT", silent_endpoint)
    t = time.monotonic()
    te = load_data("cifar10", split="test", cache_dir=cache)
    assert time.monotonic() - t < 5.0
    assert len(te) == 5 and te.name == "cifar10 (test)"
    # the offline switch was only for the call
    assert datasets.config.HF_HUB_OFFLINE is False and huggingface_hub.constants.HF_HUB_OFFLINE is False


def test_hub_spec_forms():
    assert describe_source("builtin") == "builtin" and describe_source("builtin:500") == "builtin"
    for spec in ("cifar10", "mnist", "fashion_mnist", "uoft-cs/cifar10", "cifar10:plain_text"):
        assert describe_source(spec) == "hub", spec
    assert describe_source("./missing/dir") == "folder"
    assert describe_source("missing.parquet") == "file"
    with pytest.raises(DataError, match="builtin:N"):
        load_data("builtin:zero")


# ---------------------------------------------------------------------------------------------------
# progress, cancel, ImageData


def test_progress_and_cancel(tmp_path, cache):
    calls = []
    d = load_data("builtin:2500", cache_dir=cache, progress=lambda *a: calls.append(a))
    assert calls[-1][:2] == (2500, 2500) and all(isinstance(m, str) for _, _, m in calls)
    assert len(calls) <= 10  # throttled: blocks of 1,000 images, not per image

    stop = threading.Event()
    stop.set()
    with pytest.raises(Cancelled):
        load_data("builtin:100", cache_dir=cache, cancel=stop)

    root = tmp_path / "many"
    for i in range(600):
        _write(root / f"{i:03d}.png", _png(_rgb(i)))
    stop = threading.Event()

    def progress(done, total, msg):
        if msg.startswith("Decoding"):
            stop.set()  # cancel once decoding has started, as the GUI's Cancel button would

    with pytest.raises(Cancelled):
        load_data(str(root), cache_dir=cache, progress=progress, cancel=stop)
    assert not list(cache.glob("folder-many-*.npz"))  # nothing cached
    assert len(d) == 2500


def test_image_data_subset_and_validation():
    x, y = generate_builtin(30)
    d = ImageData(x, y, list(BUILTIN_CLASSES), "t", "builtin:30", None)
    s = d.subset(np.arange(5, 10))
    assert len(s) == 5 and np.array_equal(s.images, x[5:10]) and np.array_equal(s.labels, y[5:10])
    assert s.num_classes == 10 and s.class_names == BUILTIN_CLASSES and s.images.flags.c_contiguous
    assert len(d.subset(y == 3)) == 3 and len(d.subset(slice(0, 4))) == 4 and len(d.subset(2)) == 1
    assert "30 images" in repr(d)
    with pytest.raises(ValueError):
        ImageData(x[..., 0], None, None, "t", "s", None)


def test_bad_arguments():
    with pytest.raises(DataError):
        load_data("builtin:10", image_size=2)
    with pytest.raises(DataError):
        load_data("builtin:10", limit=0)
    with pytest.raises(DataError):
        load_data("   ")


def test_without_datasets_builtin_and_folders_load_and_the_rest_says_how_to_install(tmp_path):
    """As installed without the `hub` extra: `datasets` (and its pyarrow) cannot be imported."""
    for i in range(2):
        _write(tmp_path / "pics" / "a" / f"{i}.png", _png(_rgb(1)))
        _write(tmp_path / "pics" / "b" / f"{i}.png", _png(_rgb(2)))
    _write(tmp_path / "t.parquet", b"PAR1")
    saved = tmp_path / "saved"  # save_to_disk's signature, so that it is taken for one
    _write(saved / "dataset_info.json", b"{}")
    _write(saved / "state.json", b'{"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}')
    _write(saved / "data-00000-of-00001.arrow", b"")
    specs = [str(tmp_path / "t.parquet"), str(saved), "cifar10"]
    code = f"""if True:
        import json, sys
        sys.modules["datasets"] = sys.modules["pyarrow"] = None  # what `import` finds when not installed
        from ddpm_gui.data import datasets_available, load_data
        from ddpm_gui.errors import DataError
        out = {{"available": datasets_available(), "builtin": len(load_data("builtin:20", image_size=8))}}
        pics = load_data({str(tmp_path / "pics")!r}, image_size=8)
        out["folder"] = [len(pics), pics.class_names]
        for spec in {specs!r}:
            try:
                load_data(spec, image_size=8)
                out[spec] = "loaded"
            except DataError as e:
                out[spec] = str(e)
        print(json.dumps(out))
    """
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["available"] is False and out["builtin"] == 20 and out["folder"] == [4, ["a", "b"]]
    for spec in specs:
        msg = out[spec]
        assert "needs the Hugging Face `datasets` package" in msg and "\n" not in msg, (spec, msg)
        assert "pip install 'ddpm-gui[hub]'" in msg and "'builtin'" in msg, (spec, msg)


def test_data_layer_imports_neither_qt_nor_datasets():
    code = (
        "import sys, ddpm_gui.data; "
        "print([m for m in ('PySide6', 'pyqtgraph', 'datasets') if sys.modules.get(m) is not None])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "[]"


# ---------------------------------------------------------------------------------------------------
# what is skipped, and why


def _skip_reasons(d: ImageData) -> dict[str, str]:
    return {s.name: s.reason for s in d.skipped_items}


def test_folder_skips_are_listed_with_their_reasons_and_kept_in_the_cache(tmp_path, cache, monkeypatch):
    """Loose images beside the class folders, damaged files and NAS system folders are left out, each
    named with why; a system folder (Synology's @eaDir, at any depth) never becomes a class."""
    import ddpm_gui.data.folder as folder

    root = tmp_path / "pets"
    for i in range(2):
        _write(root / "cat" / f"{i}.png", _png(_rgb(1)))
        _write(root / "dog" / f"{i}.png", _png(_rgb(2)))
    _write(root / "loose.png", _png(_rgb(3)))
    _write(root / "cat" / "broken.png", b"not a png")
    _write(root / "@eaDir" / "loose.png" / "SYNOPHOTO_THUMB_S.jpg", _png(_rgb(4)))
    _write(root / "dog" / "@eaDir" / "0.png" / "SYNOPHOTO_THUMB_M.jpg", _png(_rgb(4)))
    _write(root / "#recycle" / "old.png", _png(_rgb(5)))
    (root / "dog" / "gone.png").symlink_to(tmp_path / "nowhere.png")  # a link to a missing file
    d = load_data(str(root), image_size=8, cache_dir=cache)
    assert d.class_names == ["cat", "dog"] and len(d) == 4
    reasons = _skip_reasons(d)
    assert d.skipped == 6 == len(d.skipped_items), reasons
    assert "move it into a class folder" in reasons["loose.png"]
    assert "is not an image" in reasons[str(Path("cat") / "broken.png")]
    assert "Synology" in reasons["@eaDir"] and "not a class" in reasons["@eaDir"]
    assert str(Path("dog") / "@eaDir") in reasons and "#recycle" in reasons
    assert "missing" in reasons[str(Path("dog") / "gone.png")]
    assert all("\n" not in r for r in reasons.values())
    text = d.skipped_text()
    assert text.startswith("6 — ") and "and 3 more" in text, text

    def fail(*a, **k):
        raise AssertionError("decoded again instead of using the cache")

    monkeypatch.setattr(folder, "load_image", fail)
    again = load_data(str(root), image_size=8, cache_dir=cache)
    assert again.skipped == 6 and again.skipped_items == d.skipped_items
    assert again.subset(slice(0, 2)).skipped_items == d.skipped_items


def test_unlistable_sub_folder_is_a_skip(tmp_path, cache, monkeypatch):
    import ddpm_gui.data.folder as folder

    root = tmp_path / "pics"
    for cls in ("a", "b"):
        _write(root / cls / "0.png", _png(_rgb(1)))
    locked = str(root / "b")
    real = folder.os.scandir

    def scandir(path):
        if str(path) == locked:
            raise PermissionError(13, "Permission denied", path)
        return real(path)

    monkeypatch.setattr(folder.os, "scandir", scandir)
    d = load_data(str(root), image_size=8, cache_dir=cache)
    assert len(d) == 1 and d.skipped == 1
    assert "Permission denied" in _skip_reasons(d)["b"]


def test_no_skips_says_none(cache):
    d = load_data("builtin:20", image_size=8, cache_dir=cache)
    assert d.skipped == 0 and d.skipped_items == () and d.skipped_text() == "none"


@needs_datasets
def test_table_rows_decode_through_the_one_loader(tmp_path, cache, monkeypatch):
    """Parquet rows are refused by imageio's own limits and messages, and each refusal names its row."""
    import ddpm_gui.data.imageio as imageio

    cells = [{"bytes": _png(_rgb(i, 8 + 8 * (i % 2), 8 + 8 * (i % 2))), "path": None} for i in range(4)]
    cells[2] = {"bytes": b"", "path": None}
    path = tmp_path / "t.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"image": pa.array(cells)}), path)
    monkeypatch.setattr(imageio, "MAX_PIXELS", 8 * 8)  # the loader's limit, not a copy of it
    d = load_data(str(path), image_size=8, cache_dir=cache)
    assert len(d) == 1 and d.skipped == 3
    reasons = _skip_reasons(d)
    assert set(reasons) == {"row 1", "row 2", "row 3"}, reasons
    assert "pixel limit" in reasons["row 1"] and "empty" in reasons["row 2"], reasons


def test_cli_prints_one_warning_line_for_what_it_skipped(tmp_path):
    root = tmp_path / "pets"
    for cls in ("cat", "dog"):
        _write(root / cls / "0.png", _png(_rgb(1)))
    _write(root / "loose.png", _png(_rgb(3)))
    _write(root / "cat" / "broken.png", b"not a png")
    out = tmp_path / "strip.png"
    proc = subprocess.run(
        [sys.executable, "-m", "ddpm_gui", "forward", "--data", str(root), "--index", "0", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    mentions = [line for line in lines if "loose.png" in line or "broken.png" in line]
    assert len(mentions) == 1, proc.stderr
    assert "skipped 2" in mentions[0] and "move it into a class folder" in mentions[0], mentions
    assert mentions[0].startswith("warning: "), mentions  # worded like the CLI's own warnings
