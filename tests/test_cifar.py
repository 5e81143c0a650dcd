"""CIFAR-10/100 from disk: the four distributed formats, archived and extracted, written here with a few
images; hostile and damaged archives."""

from __future__ import annotations

import io
import os
import pickle
import struct
import tarfile
from dataclasses import dataclass

import numpy as np
import pytest

from ddpm_gui import cli
from ddpm_gui.data import describe_source, load_data
from ddpm_gui.data.imageio import fit_square
from ddpm_gui.errors import DataError

C10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
C100_FINE = [f"fine_{i:02d}" for i in range(100)]
C100_COARSE = [f"coarse_{i:02d}" for i in range(20)]
# what the authors' archives are called, and the folder each holds
ARCHIVES = {
    "c10py": ("cifar-10-python.tar.gz", "cifar-10-batches-py"),
    "c10bin": ("cifar-10-binary.tar.gz", "cifar-10-batches-bin"),
    "c100py": ("cifar-100-python.tar.gz", "cifar-100-python"),
    "c100bin": ("cifar-100-binary.tar.gz", "cifar-100-binary"),
}
CIFAR10 = ("c10py", "c10bin")
N_PER_BATCH, N_TEST = 2, 3  # CIFAR-10 train: 5 batches of 2; CIFAR-100 train: 10 in one file


class Py2Pickler(pickle._Pickler):
    """Writes pickles as the real archives' (Python 2, numpy 1.x) are: protocol 2, strings as BINSTRING,
    arrays rebuilt by numpy.core.multiarray._reconstruct."""

    dispatch = pickle._Pickler.dispatch.copy()

    def __init__(self, file):
        super().__init__(file, protocol=2)

    def save_py2_str(self, obj):
        data = obj if isinstance(obj, bytes) else obj.encode("latin1")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str

    def save_global(self, obj, name=None):
        if getattr(obj, "__name__", "") == "_reconstruct":
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
        else:
            super().save_global(obj, name)


def py2_pickle(obj) -> bytes:
    buf = io.BytesIO()
    Py2Pickler(buf).dump(obj)
    return buf.getvalue()


def rows(images: np.ndarray) -> np.ndarray:
    """(N, 32, 32, 3) -> CIFAR's (N, 3072) rows: 1024 red, 1024 green, 1024 blue bytes."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), -1))


@dataclass
class Truth:
    images: dict  # split -> (N, 32, 32, 3) uint8
    labels: dict  # split -> (N,) int64 (CIFAR-100: fine)
    coarse: dict  # split -> (N,) int64 (CIFAR-100 only)


def truth(fmt: str, seed: int = 0) -> Truth:
    rng = np.random.default_rng(seed)
    n_train = 5 * N_PER_BATCH
    k = 10 if fmt in CIFAR10 else 100
    images = {
        s: rng.integers(0, 256, (n, 32, 32, 3), np.uint8) for s, n in (("train", n_train), ("test", N_TEST))
    }
    labels = {s: rng.integers(0, k, len(images[s])).astype(np.int64) for s in images}
    coarse = {s: labels[s] // 5 for s in images}
    return Truth(images, labels, coarse)


def cifar_files(fmt: str, t: Truth) -> dict[str, bytes]:
    """The files of format `fmt` (the keys of ARCHIVES) holding `t`, by name."""
    im, lb = t.images, t.labels
    if fmt == "c10py":
        files = {"batches.meta": py2_pickle({"num_cases_per_batch": N_PER_BATCH, "label_names": C10_NAMES})}
        for b in range(5):
            part = slice(b * N_PER_BATCH, (b + 1) * N_PER_BATCH)
            batch = {"batch_label": f"training batch {b + 1} of 5", "labels": lb["train"][part].tolist(),
                     "data": rows(im["train"][part]),
                     "filenames": [f"{i}.png" for i in range(N_PER_BATCH)]}  # fmt: skip
            files[f"data_batch_{b + 1}"] = py2_pickle(batch)
        files["test_batch"] = py2_pickle({"labels": lb["test"].tolist(), "data": rows(im["test"])})
    elif fmt == "c10bin":
        files = {"batches.meta.txt": ("\n".join(C10_NAMES) + "\n\n").encode()}
        for b in range(5):
            part = slice(b * N_PER_BATCH, (b + 1) * N_PER_BATCH)
            records = np.hstack([lb["train"][part, None].astype(np.uint8), rows(im["train"][part])])
            files[f"data_batch_{b + 1}.bin"] = records.tobytes()
        files["test_batch.bin"] = np.hstack(
            [lb["test"][:, None].astype(np.uint8), rows(im["test"])]
        ).tobytes()
    elif fmt == "c100py":
        files = {"meta": py2_pickle({"fine_label_names": C100_FINE, "coarse_label_names": C100_COARSE})}
        for s in ("train", "test"):
            files[s] = py2_pickle({"filenames": ["x.png"] * len(im[s]), "batch_label": s, "data": rows(im[s]),
                                   "fine_labels": lb[s].tolist(),
                                   "coarse_labels": t.coarse[s].tolist()})  # fmt: skip
    else:
        files = {"fine_label_names.txt": "\n".join(C100_FINE).encode(),
                 "coarse_label_names.txt": "\n".join(C100_COARSE).encode()}  # fmt: skip
        for s in ("train", "test"):
            labels = np.stack([t.coarse[s], lb[s]], 1).astype(np.uint8)
            files[f"{s}.bin"] = np.hstack([labels, rows(im[s])]).tobytes()
    return files


def write_tar(path, folder: str, files: dict[str, bytes], mode: str = "w:gz"):
    """A tar archive as the authors' are: the folder's entry, then its files under it."""
    with tarfile.open(path, mode) as tf:
        d = tarfile.TarInfo(folder)
        d.type = tarfile.DIRTYPE
        tf.addfile(d)
        for name, data in files.items():
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def write_folder(root, folder: str, files: dict[str, bytes]):
    out = root / folder
    out.mkdir(parents=True)
    for name, data in files.items():
        (out / name).write_bytes(data)
    return out


def make(tmp_path, fmt: str, packed: bool, files: dict[str, bytes] | None = None):
    """The archive (packed) or extracted folder of `fmt`, with `files` (default: those of truth(fmt))."""
    archive, folder = ARCHIVES[fmt]
    files = cifar_files(fmt, truth(fmt)) if files is None else files
    return write_tar(tmp_path / archive, folder, files) if packed else write_folder(tmp_path, folder, files)


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """The command line's cache in a temporary folder; no network."""
    monkeypatch.setenv("DDPM_GUI_CACHE", str(tmp_path / "cli-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


# ---------------------------------------------------------------------------------------------------
# the four formats, archived and extracted


@pytest.mark.parametrize("packed", [True, False], ids=["tar.gz", "folder"])
@pytest.mark.parametrize("fmt", list(ARCHIVES))
def test_every_format_gives_pixels_labels_names_and_split(tmp_path, cache, fmt, packed):
    path = make(tmp_path, fmt, packed)
    t = truth(fmt)
    assert describe_source(str(path)) == "cifar" and describe_source(f"{path}:test") == "cifar"
    title, names = ("CIFAR-10", C10_NAMES) if fmt in CIFAR10 else ("CIFAR-100", C100_FINE)
    for split, spec in (("train", str(path)), ("test", f"{path}:test")):
        d = load_data(spec, image_size=32, cache_dir=cache)
        np.testing.assert_array_equal(d.images, t.images[split])
        np.testing.assert_array_equal(d.labels, t.labels[split])
        assert d.class_names == names and d.num_classes == len(names)
        assert d.name.startswith(f"{title} ({split}") and d.source == spec
    if title == "CIFAR-100":
        d = load_data(f"{path}:test:coarse", image_size=32, cache_dir=cache)
        np.testing.assert_array_equal(d.labels, t.coarse["test"])
        assert d.class_names == C100_COARSE and d.name == "CIFAR-100 (test, 20 coarse classes)"
        assert load_data(str(path), cache_dir=cache).name == "CIFAR-100 (train, 100 fine classes)"


def test_split_argument_spec_option_limit_resize_and_cache(tmp_path, cache):
    path = make(tmp_path, "c10py", packed=True)
    t = truth("c10py")
    d = load_data(str(path), split="test", cache_dir=cache)  # load_data's own split argument
    np.testing.assert_array_equal(d.images, t.images["test"])
    d = load_data(f"{path}:train", split="test", cache_dir=cache)  # the spec's option wins
    assert d.name == "CIFAR-10 (train)"
    small = load_data(str(path), image_size=16, limit=4, cache_dir=cache)
    expected = np.stack([fit_square(im, 16) for im in t.images["train"][:4]])  # the app's one crop policy
    np.testing.assert_array_equal(small.images, expected)
    np.testing.assert_array_equal(small.labels, t.labels["train"][:4])
    again = load_data(str(path), image_size=16, limit=4, cache_dir=cache)
    assert again.cache_path == small.cache_path and again.cache_path.is_file()
    np.testing.assert_array_equal(again.images, expected)
    # another archive at the same path is decoded again, never served from the old cache
    make(tmp_path, "c10py", True, cifar_files("c10py", truth("c10py", seed=1)))
    fresh = load_data(str(path), image_size=32, cache_dir=cache)
    np.testing.assert_array_equal(fresh.images, truth("c10py", seed=1).images["train"])


def test_a_plain_tar_and_a_tgz_are_read_too(tmp_path, cache):
    files = cifar_files("c100bin", truth("c100bin"))
    plain = write_tar(tmp_path / "cifar-100-binary.tar", "cifar-100-binary", files, mode="w")
    tgz = write_tar(tmp_path / "c100.tgz", "cifar-100-binary", files)
    for path in (plain, tgz):
        np.testing.assert_array_equal(
            load_data(f"{path}:test", cache_dir=cache).images, truth("c100bin").images["test"]
        )


# ---------------------------------------------------------------------------------------------------
# spec forms and their errors


def test_spec_options_and_missing_paths(tmp_path, cache):
    path = make(tmp_path, "c10bin", packed=True)
    with pytest.raises(DataError, match=r"':train' or ':test'"):
        load_data(f"{path}:validation", cache_dir=cache)
    with pytest.raises(DataError, match="only CIFAR-100 has coarse labels"):
        load_data(f"{path}:coarse", cache_dir=cache)
    with pytest.raises(DataError, match="no split 'valid'"):
        load_data(str(path), split="valid", cache_dir=cache)
    missing = tmp_path / "cifar-10-python.tar.gz"
    assert describe_source(str(missing)) == "cifar" and describe_source(f"{missing}:test") == "cifar"
    with pytest.raises(DataError, match="does not exist"):
        load_data(f"{missing}:test", cache_dir=cache)
    # a folder of images is still one, and a folder holding CIFAR points at it
    assert describe_source(str(tmp_path)) == "folder"
    with pytest.raises(DataError, match=r"It holds cifar-10-binary.tar.gz: give that itself"):
        load_data(str(tmp_path), cache_dir=cache)


def test_incomplete_folder_and_archive_name_what_is_missing(tmp_path, cache):
    files = cifar_files("c10py", truth("c10py"))
    del files["data_batch_3"]
    path = make(tmp_path, "c10py", True, files)
    with pytest.raises(DataError, match=r"lacks data_batch_3 of cifar-10-batches-py.*download it again"):
        load_data(str(path), cache_dir=cache)
    assert len(load_data(f"{path}:test", cache_dir=cache)) == N_TEST  # the test split is all there
    with pytest.raises(DataError, match="holds no CIFAR files"):
        load_data(str(write_tar(tmp_path / "other.tar.gz", "x", {"readme.txt": b"hi"})), cache_dir=cache)


# ---------------------------------------------------------------------------------------------------
# hostile and damaged archives


class RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class HugeArray:
    """A pickle asking numpy for a terabyte: numpy.ndarray((1 << 40,)) called directly."""

    def __reduce__(self):
        return (np.ndarray, ((1 << 40,),))


class HugeReconstruct:
    def __reduce__(self):
        return (np.empty(0).__reduce__()[0], (np.ndarray, (1 << 40,), b"B"))


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("member", ["data_batch_1", "batches.meta"])
def test_a_pickle_that_runs_code_is_refused_and_never_runs(tmp_path, cache, capsys, member, protocol):
    marker = tmp_path / "pwned"
    files = cifar_files("c10py", truth("c10py"))
    files[member] = pickle.dumps({"data": RunsShell(marker), "label_names": RunsShell(marker)}, protocol)
    for packed in (True, False):
        root = tmp_path / ("tar" if packed else "dir")
        root.mkdir()
        path = make(root, "c10py", packed, files)
        with pytest.raises(
            DataError, match=rf"{member} is not a genuine CIFAR archive \(it asks for posix.system"
        ):
            load_data(str(path), cache_dir=cache)
        assert not marker.exists()
        # the command line: one error line, exit code 2, nothing run
        assert cli.main(["train", "--data", str(path), "--steps", "1", "--out", str(root / "run")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "not a genuine CIFAR archive" in err[0], err
        assert not marker.exists()


@pytest.mark.parametrize("evil", [HugeArray(), HugeReconstruct()], ids=["ndarray-call", "reconstruct-shape"])
def test_a_pickle_asking_for_a_huge_array_is_refused(tmp_path, cache, evil):
    files = cifar_files("c10py", truth("c10py"))
    files["test_batch"] = pickle.dumps({"data": evil, "labels": [0]}, 2)
    with pytest.raises(DataError, match=r"test_batch is not a genuine CIFAR archive"):
        load_data(f"{make(tmp_path, 'c10py', True, files)}:test", cache_dir=cache)


def test_other_globals_and_wrong_contents_are_refused(tmp_path, cache):
    files = cifar_files("c100py", truth("c100py"))
    files["meta"] = pickle.dumps({"fine_label_names": [print]}, 2)  # builtins.print: not a numpy array part
    (tmp_path / "a").mkdir()
    with pytest.raises(
        DataError, match=r"meta is not a genuine CIFAR archive \(it asks for __builtin__.print"
    ):
        load_data(str(make(tmp_path / "a", "c100py", False, files)), cache_dir=cache)
    files = cifar_files("c100py", truth("c100py"))
    files["test"] = py2_pickle({"data": np.zeros((2, 3072), np.float32), "fine_labels": [0, 1]})
    with pytest.raises(DataError, match="not an array of 32x32 colour images"):
        load_data(f"{make(tmp_path, 'c100py', True, files)}:test", cache_dir=cache)
    files = cifar_files("c10bin", truth("c10bin"))
    files["batches.meta.txt"] = b"cat\ndog\n"  # fewer names than the labels need
    with pytest.raises(DataError, match=r"its labels run from \d+ to \d+ but it names 2 classes"):
        load_data(f"{make(tmp_path, 'c10bin', True, files)}:test", cache_dir=cache)


def test_a_truncated_or_foreign_archive_gets_one_clear_line(tmp_path, cache, capsys):
    path = make(tmp_path, "c10py", packed=True)
    blob = path.read_bytes()
    cut = tmp_path / "cut" / path.name
    cut.parent.mkdir()
    cut.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(
        DataError, match=r"cifar-10-python.tar.gz is truncated or damaged \(.*download it again"
    ):
        load_data(str(cut), cache_dir=cache)
    assert cli.main(["train", "--data", str(cut), "--steps", "1", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "truncated" in err[0], err
    cut.write_bytes(blob[:20])
    with pytest.raises(DataError, match="cannot be opened as a tar archive"):
        load_data(str(cut), cache_dir=cache)
    cut.write_bytes(b"just some text, not a tar archive\n" * 40)
    with pytest.raises(DataError, match="cannot be opened as a tar archive"):
        load_data(str(cut), cache_dir=cache)
    # a binary file cut mid-record
    files = cifar_files("c10bin", truth("c10bin"))
    files["test_batch.bin"] = files["test_batch.bin"][:-100]
    with pytest.raises(DataError, match=r"test_batch.bin is 9,119 bytes, not a whole number of 3,073-byte"):
        load_data(f"{make(tmp_path, 'c10bin', False, files)}:test", cache_dir=cache)


def test_sizes_are_checked_before_reading(tmp_path, cache):
    files = cifar_files("c10bin", truth("c10bin"))
    files["batches.meta.txt"] = b"x\n" * (1 << 20)  # 2 MiB of class names: more than CIFAR's meta can be
    for packed in (True, False):
        (tmp_path / str(packed)).mkdir()
        with pytest.raises(
            DataError, match=r"batches.meta.txt is not a genuine CIFAR archive \(it is .*more than"
        ):
            load_data(str(make(tmp_path / str(packed), "c10bin", packed, files)), cache_dir=cache)
    many = {f"junk_{i}": b"" for i in range(1001)}
    with pytest.raises(DataError, match="more than 1,000 entries"):
        load_data(str(write_tar(tmp_path / "many.tar.gz", "cifar-10-batches-py", many)), cache_dir=cache)
    # a link named like a CIFAR file is not followed
    linked = tmp_path / "linked.tar"
    with tarfile.open(linked, "w") as tf:
        info = tarfile.TarInfo("cifar-10-batches-bin/batches.meta.txt")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(info)
        data = files["test_batch.bin"]
        info = tarfile.TarInfo("cifar-10-batches-bin/test_batch.bin")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    with pytest.raises(DataError, match="lacks batches.meta.txt"):
        load_data(f"{linked}:test", cache_dir=cache)


# ---------------------------------------------------------------------------------------------------
# the command line, end to end


def test_train_on_a_cifar_archive_end_to_end(tmp_path):
    path = make(tmp_path, "c10py", packed=True)
    out = tmp_path / "run"
    code = cli.main(["train", "--data", str(path), "--preset", "tiny", "--steps", "2", "--batch-size", "4",
                     "--image-size", "16", "--warmup", "0", "--conditional", "--device", "cpu",
                     "--out", str(out)])  # fmt: skip
    assert code == 0
    checkpoints = list((out / "checkpoints").glob("*.safetensors"))
    assert checkpoints, "train wrote no checkpoint"
    assert f'data = "{path}"' in (out / "config.toml").read_text()
    from safetensors import safe_open

    with safe_open(str(checkpoints[0]), "np") as f:
        assert '"airplane"' in f.metadata()["ddpm_gui"]  # the archive's class names travel with the model


def test_forward_takes_an_image_of_the_test_split(tmp_path, capsys):
    path = make(tmp_path, "c100bin", packed=False)
    strip = tmp_path / "strip.png"
    code = cli.main(["forward", "--data", f"{path}:test", "--index", "2", "--frames", "2", "--scale", "1",
                     "--T", "10", "--out", str(strip)])  # fmt: skip
    assert code == 0
    from PIL import Image

    with Image.open(strip) as im:
        first = np.asarray(im.convert("RGB"))[1:33, 1:33]  # the first tile: x_0, one pixel in
    np.testing.assert_array_equal(first, truth("c100bin").images["test"][2])
