"""The one image loader (data/imageio.py): hostile files, colour modes, EXIF, the crop policy; and the
engine's image outputs (forward frames, GIF/PNG writing) that the CLI and the GUI share.

`hostile_files` and `bomb_png` are imported by the CLI and Qt tests, which send the same files through
their own doors.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ddpm_gui.data import imageio
from ddpm_gui.data.imageio import MAX_PIXELS, fit_square, load_image, open_rgb
from ddpm_gui.errors import DataError

BOMB_SIDE = 20000
HOSTILE_KEYS = [
    "bomb",
    "our-limit",
    "truncated-png",
    "truncated-jpeg",
    "zero-bytes",
    "text",
    "directory",
    "missing",
]


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_from_rows(w: int, h: int, bit_depth: int, colour_type: int, rows: bytes) -> bytes:
    """A PNG file from raw scanlines (each already prefixed with its filter byte)."""
    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(rows))
        + _chunk(b"IEND", b"")
    )


@functools.lru_cache(maxsize=2)
def bomb_png(side: int = BOMB_SIDE) -> bytes:
    """A real, valid side x side 1-bit PNG of ~50 KB: 400 million pixels once decoded."""
    row = b"\0" * (1 + (side + 7) // 8)
    c = zlib.compressobj(6)
    body = b"".join(c.compress(row * 100) for _ in range(side // 100)) + c.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", body) + _chunk(b"IEND", b"")


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def gradient(h: int = 24, w: int = 40) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x + y) % 256], -1).astype(np.uint8)


def hostile_files(root: Path) -> dict[str, tuple[Path, str]]:
    """name -> (path, a regex the one-line DataError must match): files every image door must refuse."""
    root.mkdir(parents=True, exist_ok=True)
    good = _encode(Image.fromarray(gradient(64, 64)), "PNG")
    jpeg = _encode(Image.fromarray(gradient(64, 64)), "JPEG", quality=90)
    files = {
        "bomb": (
            "bomb.png",
            bomb_png(),
            rf"is {BOMB_SIDE}x{BOMB_SIDE} pixels, more than the [\d,]+-pixel limit",
        ),
        "our-limit": ("big.png", None, r"is 8000x8000 pixels, more than the 40,000,000-pixel limit"),
        "truncated-png": ("cut.png", good[: len(good) // 2], r"could not be decoded .*truncated or damaged"),
        "truncated-jpeg": ("cut.jpg", jpeg[:200], r"could not be (decoded|read)"),
        "zero-bytes": ("empty.png", b"", r"is empty \(0 bytes\)"),
        "text": (
            "notes.png",
            b"these are my notes, not a picture\n" * 20,
            r"is not an image this app can read",
        ),
        "directory": ("folder.png", None, r"is a folder, not an image"),
        "missing": ("missing.png", None, r"does not exist"),
    }
    out = {}
    for key, (name, data, pattern) in files.items():
        path = root / name
        if key == "our-limit":  # 64 M pixels: under Pillow's own refusal, over ours
            path.write_bytes(png_from_rows(8000, 8000, 1, 0, (b"\0" * 1001) * 8000))
        elif key == "directory":
            path.mkdir(exist_ok=True)
        elif data is not None:
            path.write_bytes(data)
        out[key] = (path, pattern)
    return out


@contextlib.contextmanager
def disk_full_at(name: str):
    """Every atomic write of a file called `name` fails half way, as on a full disk."""
    from ddpm_gui.engine.fileio import set_fault_hook

    def hook(path: Path, phase: str) -> None:
        if phase == "half" and path.name == name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    previous = set_fault_hook(hook)
    try:
        yield
    finally:
        set_fault_hook(previous)


def assert_one_line_naming(exc: BaseException, path: Path, pattern: str) -> None:
    msg = str(exc)
    assert "\n" not in msg and path.name in msg and ": " in msg, msg
    assert __import__("re").search(pattern, msg), msg


# ----------------------------------------------------------------------------- refusals


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    return hostile_files(tmp_path_factory.mktemp("hostile"))


@pytest.mark.parametrize("key", HOSTILE_KEYS)
def test_hostile_files_are_one_line_data_errors(hostile, key):
    path, pattern = hostile[key]
    with pytest.raises(DataError) as info:
        load_image(path, 32)
    assert_one_line_naming(info.value, path, pattern)
    exc = info.value  # no Pillow traceback chained behind the message
    assert exc.__cause__ is None and (exc.__context__ is None or exc.__suppress_context__)


def test_bomb_is_refused_from_its_header_without_decoding(hostile, monkeypatch):
    """The size is checked before any pixel is decoded: loading the pixels would fail this test."""
    from PIL import ImageFile

    def no_decoding(self, *a, **k):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    for key in ("bomb", "our-limit"):
        path, pattern = hostile[key]
        with pytest.raises(DataError, match=pattern):
            open_rgb(path)
    with pytest.raises(DataError, match=rf"{BOMB_SIDE}x{BOMB_SIDE}"):  # encoded bytes: the same check
        open_rgb(bomb_png(), name="upload")


def test_the_limit_is_one_constant(tmp_path, monkeypatch):
    path = tmp_path / "small.png"
    Image.fromarray(gradient(30, 40)).save(path)
    assert load_image(path, 8).shape == (8, 8, 3)
    monkeypatch.setattr(imageio, "MAX_PIXELS", 30 * 40 - 1)
    with pytest.raises(DataError, match=r"is 40x30 pixels, more than the 1,199-pixel limit"):
        load_image(path, 8)
    assert MAX_PIXELS == 40_000_000


def test_file_size_limit_and_unreadable_file(tmp_path, monkeypatch):
    path = tmp_path / "photo.png"
    Image.fromarray(gradient()).save(path)
    monkeypatch.setattr(imageio, "MAX_FILE_BYTES", 100)
    with pytest.raises(DataError, match=r"photo.png is 0 MB, more than the 0 MB limit"):
        load_image(path, 8)
    monkeypatch.undo()
    if os.geteuid() == 0:  # root reads any file: a broken link stands in for a path that cannot be read
        link = tmp_path / "gone.png"
        link.symlink_to(tmp_path / "nowhere.png")
        with pytest.raises(DataError, match=r"gone.png does not exist"):
            load_image(link, 8)
        return
    path.chmod(0)
    with pytest.raises(DataError, match=r"Cannot read .*photo.png \(Permission denied\)"):
        load_image(path, 8)


def test_non_regular_file_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)  # opening it for reading would wait for a writer forever
    with pytest.raises(DataError, match=r"pipe.png is not a regular file"):
        load_image(fifo, 8)


# ----------------------------------------------------------------------------- modes and orientation


def test_sixteen_bit_grey_and_rgb_are_scaled_not_clipped(tmp_path):
    grey = np.array([[0, 32768, 65535, 65535]], np.uint16).repeat(4, 0)
    Image.fromarray(grey).save(tmp_path / "g16.png")
    g = load_image(tmp_path / "g16.png", 4)
    assert g[:, 0].max() == 0 and abs(int(g[0, 1, 0]) - 128) <= 2 and g[:, 3].min() >= 254
    assert (g[..., 0] == g[..., 1]).all() and (g[..., 1] == g[..., 2]).all()
    # a 16-bit RGB PNG (48 bits a pixel): red at full scale, green at half, blue off
    px = struct.pack(">HHH", 65535, 32768, 0)
    (tmp_path / "rgb16.png").write_bytes(png_from_rows(4, 4, 16, 2, (b"\0" + px * 4) * 4))
    c = load_image(tmp_path / "rgb16.png", 4)
    assert (
        (c[..., 0] == 255).all() and (abs(c[..., 1].astype(int) - 128) <= 1).all() and (c[..., 2] == 0).all()
    )


def test_palette_with_transparency_alpha_and_grey_alpha_go_over_black(tmp_path):
    pal = Image.new("P", (8, 8), 1)
    pal.putpalette([255, 255, 255, 200, 40, 40] + [0] * 762)
    pal.paste(0, (0, 0, 4, 8))  # left half: colour 0, the transparent one
    pal.save(tmp_path / "pal.png", transparency=0)
    a = load_image(tmp_path / "pal.png", 8)
    assert (a[:, :4] == 0).all() and (a[:, 4:] == [200, 40, 40]).all()
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[...] = (200, 100, 50, 128)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    b = load_image(tmp_path / "rgba.png", 8).astype(int)
    assert np.abs(b[0, 0] - [100, 50, 25]).max() <= 1
    la = Image.fromarray(np.stack([np.full((8, 8), 200), np.full((8, 8), 255)], -1).astype(np.uint8), "LA")
    la.save(tmp_path / "la.png")
    assert (load_image(tmp_path / "la.png", 8) == 200).all()


def test_cmyk_grey_one_bit_and_animated(tmp_path):
    cmyk = Image.new("CMYK", (8, 8), (255, 0, 0, 0))  # pure cyan
    cmyk.save(tmp_path / "c.jpg", quality=95)
    cmyk.save(tmp_path / "c.tif")
    for name in ("c.jpg", "c.tif"):
        px = load_image(tmp_path / name, 8).astype(int)
        assert px[..., 0].max() < 20 and px[..., 1].min() > 235 and px[..., 2].min() > 235, name
    Image.new("L", (10, 6), 77).save(tmp_path / "g.png")
    assert (load_image(tmp_path / "g.png", 4) == 77).all()
    Image.new("1", (9, 9), 1).save(tmp_path / "b.png")
    assert (load_image(tmp_path / "b.png", 3) == 255).all()
    frames = [Image.new("RGB", (8, 8), c) for c in ((250, 0, 0), (0, 0, 250))]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    first = load_image(tmp_path / "a.gif", 8).astype(int)
    assert first[..., 0].min() > 200 and first[..., 2].max() < 50  # the first frame


@pytest.mark.parametrize("fmt, ext", [("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp")])
def test_exif_orientation_is_applied(tmp_path, fmt, ext):
    arr = np.zeros((32, 64, 3), np.uint8)
    arr[:, 32:] = 255  # landscape: dark left half, bright right half
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view"
    path = tmp_path / f"cam.{ext}"
    Image.fromarray(arr).save(path, format=fmt, exif=exif.tobytes(), quality=95)
    upright = open_rgb(path)
    assert upright.size == (32, 64) and upright.mode == "RGB"
    img = load_image(path, 16).astype(int)
    assert img[:4].mean() < 60 and img[-4:].mean() > 200  # the dark half is now on top


# ----------------------------------------------------------------------------- the crop policy


def test_crop_policy_centre_square_then_bicubic(tmp_path):
    wide = gradient(24, 40)
    Image.fromarray(wide).save(tmp_path / "wide.png")
    got = load_image(tmp_path / "wide.png", 16)
    want = np.asarray(Image.fromarray(wide[:, 8:32]).resize((16, 16), Image.Resampling.BICUBIC))
    assert got.shape == (16, 16, 3) and got.dtype == np.uint8 and got.flags.writeable
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1  # the middle 24 columns, not stretched
    tall = np.ascontiguousarray(wide.transpose(1, 0, 2))
    want_tall = np.asarray(Image.fromarray(tall[8:32]).resize((16, 16), Image.Resampling.BICUBIC))
    assert np.abs(fit_square(tall, 16).astype(int) - want_tall.astype(int)).max() <= 1
    # one policy: a file, its decoded Pillow image and its array give the same pixels
    assert np.array_equal(got, fit_square(wide, 16))
    assert np.array_equal(got, fit_square(open_rgb(tmp_path / "wide.png"), 16))


def test_fit_square_keeps_a_right_sized_array_and_refuses_bad_input():
    a = gradient(8, 8)
    out = fit_square(a, 8)
    assert np.array_equal(out, a) and out is not a  # a copy: the caller may write to it
    assert fit_square(a[..., 0], 4).shape == (4, 4, 3)  # (H, W) grey
    for bad in (a.astype(np.float32), a[..., :2]):
        with pytest.raises(ValueError):
            fit_square(bad, 4)
    with pytest.raises(ValueError):
        fit_square(a, 0)


def test_big_jpeg_decodes_reduced_to_the_same_policy(tmp_path):
    """A JPEG much larger than the target is decoded at a reduced scale (draft); the result still follows
    the crop policy (the centre square), within JPEG and filter noise."""
    big = np.zeros((400, 800, 3), np.uint8)
    big[:, 200:600] = 255  # the centre square is white, the sides black
    Image.fromarray(big).save(tmp_path / "big.jpg", quality=95)
    got = load_image(tmp_path / "big.jpg", 16)
    assert got[:, 2:-2].min() > 230  # only the white centre square, no black sides


# ----------------------------------------------------------------------------- image folders


def test_folder_decoding_goes_through_the_loader(tmp_path, hostile):
    from ddpm_gui.data import load_data

    root = tmp_path / "pics"
    root.mkdir()
    wide = gradient(24, 40)
    Image.fromarray(wide).save(root / "good.png")
    for key in ("bomb", "truncated-png", "zero-bytes", "text"):
        (root / f"{key}.png").write_bytes(hostile[key][0].read_bytes())
    d = load_data(str(root), image_size=16, cache_dir=tmp_path / "cache")
    assert len(d) == 1 and d.skipped == 4
    assert np.array_equal(d.images[0], load_image(root / "good.png", 16))  # the same policy as the doors


# ----------------------------------------------------------------------------- engine: forward frames, GIF


def test_forward_frames_subset_matches_the_full_run():
    from ddpm_gui.core.schedule import SCHEDULE_PRESETS, NoiseSchedule
    from ddpm_gui.engine.forward import forward_frames, kept_steps

    sched = NoiseSchedule(SCHEDULE_PRESETS["tutorial"])
    img = gradient(16, 16)
    full = forward_frames(img, sched, seed=3)
    assert list(full.ts) == list(range(101)) and full.iterative.shape == full.closed.shape == (101, 16, 16, 3)
    assert np.array_equal(full.iterative[0], img) and np.array_equal(full.closed[0], img)
    part = forward_frames(img, sched, seed=3, steps=[0, 40, 100], processes=("iterative",))
    assert part.closed is None and list(part.ts) == [0, 40, 100]
    assert np.array_equal(part.iterative, full.iterative[[0, 40, 100]])  # same seed, same noise path
    closed = forward_frames(img, sched, seed=3, steps=[7, 99], processes=("closed",))
    assert np.array_equal(closed.closed, full.closed[[7, 99]])
    assert not np.array_equal(forward_frames(img, sched, seed=4).closed, full.closed)
    ts = kept_steps(1000, 3 * 2**20, max_bytes=300 * 2**20)  # 1001 frames of 3 MB in 300 MB
    assert ts[0] == 0 and ts[-1] == 1000 and len(ts) <= 101 and len(np.unique(np.diff(ts[:-1]))) == 1


def test_forward_frames_stop_and_bad_arguments():
    import threading

    from ddpm_gui.core.schedule import SCHEDULE_PRESETS, NoiseSchedule
    from ddpm_gui.engine.forward import forward_frames
    from ddpm_gui.errors import ConfigError

    sched = NoiseSchedule(SCHEDULE_PRESETS["tutorial"])
    stop = threading.Event()
    stop.set()
    assert forward_frames(gradient(8, 8), sched, stop=stop) is None
    with pytest.raises(ConfigError, match="0..100"):
        forward_frames(gradient(8, 8), sched, steps=[0, 101])
    with pytest.raises(ConfigError, match="Unknown forward process"):
        forward_frames(gradient(8, 8), sched, processes=("sideways",))
    with pytest.raises(ConfigError, match="H x W x 3 uint8"):
        forward_frames(np.zeros((8, 8), np.float32), sched)


def test_gif_renders_frames_lazily_and_writes_atomically(tmp_path):
    from ddpm_gui.engine.images import gif_bytes, make_grid, save_gif
    from ddpm_gui.errors import CheckpointError

    batches = [np.full((4, 6, 6, 3), 40 * i, np.uint8) for i in range(5)]
    seen = []
    data = gif_bytes(
        batches, 50, 900, render=lambda b: make_grid(b, scale=2), progress=lambda i, n: seen.append((i, n))
    )
    assert seen == [(i, 5) for i in range(1, 6)]
    with Image.open(io.BytesIO(data)) as im:
        assert im.n_frames == 5 and im.size == (2 * 15, 2 * 15) and im.info["loop"] == 0
        im.seek(4)
        assert im.info["duration"] == 900
    target = tmp_path / "victim-anim.gif"
    target.write_bytes(b"an older export")
    with disk_full_at(target.name):
        with pytest.raises(CheckpointError, match=r"victim-anim.gif \(No space left on device\)"):
            save_gif(target, batches, render=make_grid)
    assert target.read_bytes() == b"an older export"
    assert [p.name for p in tmp_path.iterdir()] == ["victim-anim.gif"]  # no temp file left
