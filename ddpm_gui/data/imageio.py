"""Open one image safely and bring it to a square size: the single image loader (Pillow and numpy only).

Every image that enters the app comes through here: `ddpm-gui forward/denoise --image`, the Forward and
Denoise tabs' Open button and drag-and-drop, and the decoding of image folders. So the same file gives
the same pixels everywhere, and every refusal is one `DataError` sentence that names the file and says
what to do.

    open_rgb(path) -> PIL.Image          RGB, upright, at its own size
    fit_square(image, size) -> ndarray   (size, size, 3) uint8, by the crop policy below
    load_image(path, size) -> ndarray    both

Crop policy (`fit_square`): centre-crop the largest square, then resize it to size x size with a
bicubic filter (Pillow first box-reduces by an integer factor when it shrinks more than 3x,
`reducing_gap=3.0`: close to a full antialiased bicubic at a fraction of the cost). The aspect ratio
is kept; the ends of the longer side are cut off, never stretched.

Safety: the pixel count is read from the file's header and checked against MAX_PIXELS before any
pixel is decoded (a small file can claim 20000 x 20000 pixels: a "decompression bomb"); files over
MAX_FILE_BYTES are refused before they are read. Modes: 16/32-bit and float greyscale are scaled to
8 bits (not clipped); alpha (RGBA, LA, palette or colour-key transparency) is composited over black;
CMYK, YCbCr, 1-bit and palette images are converted to RGB; a camera's EXIF orientation tag is applied
(the image is turned upright as viewers show it).
"""

from __future__ import annotations

import io
import os
import re
import stat
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ddpm_gui.errors import DataError

MAX_PIXELS = 40_000_000  # width x height above this is refused, from the header (decompression bombs)
MAX_FILE_BYTES = 50 * 1024 * 1024  # larger files are refused before they are read
_ORIENTATION = 0x0112  # the EXIF tag of a camera's orientation
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_FORMATS = "a PNG, JPEG, BMP, GIF, WebP or TIFF image"

ImageSource = str | os.PathLike | bytes


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    text = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _too_many_pixels(name: str, w: int, h: int, limit: int) -> DataError:
    side = int((limit**0.5) // 100 * 100)
    return DataError(
        f"{name} is {w}x{h} pixels, more than the {limit:,}-pixel limit: scale it down "
        f"(to {side}x{side} or less) and open the smaller copy."
    )


def _pixel_limit() -> int:
    """MAX_PIXELS, or Pillow's own refusal threshold (2 x Image.MAX_IMAGE_PIXELS) when that is lower."""
    pil = Image.MAX_IMAGE_PIXELS
    return MAX_PIXELS if pil is None else min(MAX_PIXELS, 2 * pil)


def _header_size(fp: io.IOBase, name: str) -> tuple[int, int] | None:
    """Width and height from the header of an image that Pillow refused to open as a bomb.

    Runs the same format plugins as Image.open (`Image.OPEN`), only without its size check; the
    plugins read the header, never the pixels."""
    Image.init()
    fp.seek(0)
    prefix = fp.read(16)
    for fmt in Image.ID:
        factory, accept = Image.OPEN[fmt]
        try:
            ok = accept(prefix) if accept else True
            if ok and not isinstance(ok, str):
                fp.seek(0)
                return factory(fp, name).size
        except Exception:  # not this format: try the next one, as Image.open does
            continue
    return None


def _bomb_error(fp: io.IOBase, name: str, exc: Image.DecompressionBombError) -> DataError:
    size = _header_size(fp, name)
    if size is None:  # no plugin could read the header again: the count Pillow found is all we know
        found = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
        return DataError(
            f"{name} has {pixels}, more than the {_pixel_limit():,}-pixel limit: scale it down first."
        )
    return _too_many_pixels(name, size[0], size[1], _pixel_limit())


def _open_file(path: str | os.PathLike) -> tuple[io.BufferedReader, str]:
    """The file opened for reading, after checks that name the problem (missing, folder, empty, huge)."""
    name = os.fspath(path)
    try:
        st = os.stat(name)
        if stat.S_ISDIR(st.st_mode):
            raise DataError(f"{name} is a folder, not an image: pick {_FORMATS} file.")
        if not stat.S_ISREG(st.st_mode):
            raise DataError(f"{name} is not a regular file: pick {_FORMATS} file.")
        if st.st_size == 0:
            raise DataError(f"{name} is empty (0 bytes): pick another image, or save this one again.")
        if st.st_size > MAX_FILE_BYTES:
            raise DataError(
                f"{name} is {st.st_size / 2**20:.0f} MB, more than the {MAX_FILE_BYTES >> 20} MB limit for "
                "one image: save a smaller or more compressed copy and open that."
            )
        return open(name, "rb"), name  # the caller closes it
    except FileNotFoundError:
        raise DataError(f"{name} does not exist: check the path, or pick another image file.") from None
    except OSError as exc:
        reason = exc.strerror or _first_line(exc)
        raise DataError(
            f"Cannot read {name} ({reason}): check that it is readable, or copy it somewhere that is."
        ) from None


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB (see the module docstring: deep greyscale scaled, alpha over black)."""
    mode = img.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        a = np.asarray(img, dtype=np.float32)
        if mode.startswith("I;16") or (mode == "I" and a.size and a.max() > 255):
            a = a / 257.0
        elif mode == "F" and a.size and a.max() <= 1.0:
            a = a * 255.0
        img = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
        mode = "L"
    if mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba).convert("RGB")
    return img if mode == "RGB" else img.convert("RGB")


def open_rgb(source: ImageSource, size_hint: int | None = None, name: str | None = None) -> Image.Image:
    """An image file (a path, or its encoded bytes) -> an upright RGB Pillow image at its own size.

    size_hint: the size the image will be reduced to, if known; lets a JPEG decode at 1/2, 1/4 or 1/8
    scale (never below size_hint). name: how messages call the image (default: the path).
    Every failure is a DataError with a one-line message naming the file and what to do.
    """
    if isinstance(source, bytes | bytearray | memoryview):
        label = name or "The image"
        if len(source) == 0:
            raise DataError(f"{label} is empty (0 bytes): use another image.")
        if len(source) > MAX_FILE_BYTES:
            raise DataError(f"{label} is more than {MAX_FILE_BYTES >> 20} MB: use a smaller image.")
        fp: io.IOBase = io.BytesIO(source)
    else:
        fp, label = _open_file(source)
        label = name or label
    with fp, warnings.catch_warnings():
        # Pillow only warns between MAX_IMAGE_PIXELS and twice that; MAX_PIXELS refuses those sizes itself.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return _decode(fp, label, size_hint)


def _decode(fp: io.IOBase, name: str, size_hint: int | None) -> Image.Image:
    try:
        img = Image.open(fp)
    except Image.DecompressionBombError as exc:
        raise _bomb_error(fp, name, exc) from None
    except UnidentifiedImageError:
        raise DataError(f"{name} is not an image this app can read: pick {_FORMATS}.") from None
    except Exception as exc:  # Pillow's plugins raise many types on malformed headers
        raise DataError(
            f"{name} could not be read as an image ({_first_line(exc)}): re-save it as a PNG or JPEG."
        ) from None
    with img:
        w, h = img.size
        if w * h > _pixel_limit():
            raise _too_many_pixels(name, w, h, _pixel_limit())
        if w < 1 or h < 1:
            raise DataError(f"{name} has no pixels ({w}x{h}): pick another image.")
        try:
            if size_hint and img.format == "JPEG":
                img.draft("RGB", (size_hint, size_hint))
            img.load()
            upright = img
            if img.getexif().get(_ORIENTATION, 1) != 1:
                upright = ImageOps.exif_transpose(img)
            rgb = to_rgb(upright)
        except MemoryError:
            raise DataError(f"{name} is too large to decode in the memory left: scale it down.") from None
        except Exception as exc:  # truncated or damaged data: many types, each one message
            raise DataError(
                f"{name} could not be decoded ({_first_line(exc)}); it may be truncated or damaged: "
                "save or download it again."
            ) from None
        return rgb.copy() if rgb is img else rgb  # `img` is closed on return; a copy outlives it


def fit_square(image: Image.Image | np.ndarray, size: int) -> np.ndarray:
    """An image (Pillow, any mode; or an (H, W, 3) / (H, W) uint8 array) -> a new (size, size, 3) uint8
    array: the largest centred square, resized with a bicubic filter (the crop policy of this module)."""
    if not isinstance(size, int | np.integer) or size < 1:
        raise ValueError(f"size must be a positive whole number, got {size!r}")
    size = int(size)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
            raise ValueError(f"expected an (H, W, 3) or (H, W) uint8 array, got {image.dtype} {image.shape}")
        if image.shape[:2] == (size, size) and image.ndim == 3:
            return np.array(image)
        img = Image.fromarray(np.ascontiguousarray(image)).convert("RGB")
    else:
        img = to_rgb(image)
    w, h = img.size
    if (w, h) != (size, size):
        s = min(w, h)
        box = ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2)
        img = img.resize((size, size), Image.Resampling.BICUBIC, box=box, reducing_gap=3.0)
    return np.array(img, dtype=np.uint8)


def load_image(source: ImageSource, size: int, name: str | None = None) -> np.ndarray:
    """open_rgb + fit_square: an image file -> (size, size, 3) uint8, or a DataError."""
    return fit_square(open_rgb(source, size_hint=size, name=name), size)
