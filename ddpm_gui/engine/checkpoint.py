"""Checkpoints and run folders: verified reads, nothing ever unpickled.

A checkpoint is ONE safetensors file (so one atomic rename publishes it): tensors `model.*`, `ema.*`,
`optim.<i>.*` (AdamW state per parameter), `rng.*` (RNG states as uint8 tensors), `stats.*`, and a JSON
header in the safetensors metadata (`ddpm_gui` key: format version, step, train config, model config,
classes, optimizer param groups). A second metadata key, `ddpm_gui_sha256`, holds two SHA-256 digests:
one of the safetensors header (tensor names, dtypes, shapes, offsets and our JSON header) and one of the
tensor bytes. `read_meta` checks the first and the file's length (a truncated file is caught without
reading the tensors); `load_checkpoint` checks both, so a flipped bit anywhere is a clear CheckpointError
instead of silently different weights. Files without the digest key (older ones) load unverified.

Safe loading: safetensors cannot run code; the header is parsed here with bounds checks before
safetensors sees the file; a foreign `.pt`/`.pth` goes through `torch.load(weights_only=True)` only.

Run folder:
    config.json            the TrainConfig (JSON)
    metrics.jsonl          one JSON object per loss read; append-only, truncated on resume to the checkpoint
    checkpoints/step_00001000.safetensors   rolling; the newest that loads is the one resumed
    samples/step_00001000.png               preview grids
    .lock                  held (flock) by the process training in the folder; released when it exits

Files are written by engine/fileio.py (temp file, fsync, rename): a reader sees the old file or the new one.
A training run prunes old checkpoints while other processes read the folder (the app, `sample --run`), so a
reader holds one open file from the header to the last tensor, and a file that vanished between the listing
and the open is not damage: the folder is listed again (CheckpointVanished).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from ddpm_gui.engine.fileio import RunLock as RunLock
from ddpm_gui.engine.fileio import atomic_write_bytes as atomic_write_bytes
from ddpm_gui.engine.fileio import atomic_write_json as atomic_write_json
from ddpm_gui.engine.fileio import remove_temp_files as remove_temp_files
from ddpm_gui.errors import CheckpointError

FORMAT = "ddpm-gui-checkpoint"
FORMAT_VERSION = 1
META_KEY = "ddpm_gui"
DIGEST_KEY = "ddpm_gui_sha256"
CKPT_RE = re.compile(r"^step_(\d{8,})\.safetensors$")
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit
PICK_ANOTHER = "Pick another checkpoint of the run."
LISTING_TRIES = 50  # a run saving and pruning faster than a reader can open a file: list again this often


_T = TypeVar("_T")


class NewerVersionError(CheckpointError):
    """A checkpoint written by a newer DDPM Studio: refused, never skipped or set aside (it is not damaged)."""


class CheckpointVanished(CheckpointError):
    """The file is not there (any more): pruned or set aside by a training run after it was listed. Not
    damage: readers of a run folder list it again."""


# ----------------------------------------------------------------------------- state <-> tensors


def optimizer_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            t = v if torch.is_tensor(v) else torch.tensor(v)
            tensors[f"optim.{idx}.{k}"] = t.detach().contiguous().cpu()
    groups = [{k: v for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, groups


def optimizer_from_tensors(tensors: dict[str, torch.Tensor], groups: list[dict]) -> dict:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        if not key.startswith("optim."):
            continue
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = v
    return {"state": state, "param_groups": groups}


def prefixed(prefix: str, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v.detach().contiguous().cpu() for k, v in sd.items()}


def unprefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


# ----------------------------------------------------------------------------- the file format


def _canonical(header: dict) -> bytes:
    """The safetensors header as compared by the header digest (whitespace and key order do not count)."""
    h = dict(header)
    md = dict(h.get("__metadata__") or {})
    md.pop(DIGEST_KEY, None)
    h["__metadata__"] = md
    return json.dumps(h, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _sha256(chunks: Iterable) -> str:
    h = hashlib.sha256()
    for c in chunks:
        h.update(c)
    return h.hexdigest()


def _encode_header(header: dict) -> bytes:
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # safetensors aligns the data to 8 bytes
    return len(raw).to_bytes(8, "little") + raw


def checkpoint_bytes(tensors: dict[str, torch.Tensor], meta: dict) -> list:
    """The chunks of a checkpoint file: safetensors' own serialisation, with the digest key added."""
    header_meta = {"format": FORMAT, "format_version": FORMAT_VERSION, **meta}
    blob = save(tensors, metadata={META_KEY: json.dumps(header_meta)})
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n])
    data = memoryview(blob)[8 + n :]
    digest = {"algo": "sha256", "header": _sha256([_canonical(header)]), "data": _sha256([data])}
    header.setdefault("__metadata__", {})[DIGEST_KEY] = json.dumps(digest)
    return [_encode_header(header), data]


def _foreign_kind(head: bytes) -> str | None:
    """What a file that is not safetensors looks like, from its first bytes."""
    if head.startswith(b"PK\x03\x04"):
        return "a PyTorch .pt archive (a zip file)"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a Python pickle (an old-style .pt file)"
    if head.startswith(b"\x89PNG"):
        return "a PNG image"
    if head.startswith(b"\xff\xd8\xff"):
        return "a JPEG image"
    if head.lstrip()[:1] in (b"{", b"["):
        return "a JSON/text file"
    return None


class _Damaged(Exception):
    def __init__(self, msg: str, foreign: str | None = None):
        super().__init__(msg)
        self.foreign = foreign  # what the file is, when it is not damaged but another kind of file


def _not_safetensors(kind: str) -> _Damaged:
    return _Damaged(f"it is {kind}, not a safetensors file", foreign=kind)


def _opened(path: Path, use: Callable[[BinaryIO], _T]) -> _T:
    """`use(f)` on `path` opened once: every check and read of one call sees the same file, even if a
    training run prunes or replaces the name meanwhile. OS errors become CheckpointError."""
    try:
        with open(path, "rb") as f:
            return use(f)
    except FileNotFoundError as exc:
        raise CheckpointVanished(f"No checkpoint at {path}.") from exc
    except IsADirectoryError as exc:
        raise CheckpointError(f"{path} is a folder, not a checkpoint file.") from exc
    except OSError as exc:
        raise CheckpointError(f"{path.name} cannot be read ({exc.strerror or exc}).") from exc


def _check_layout(f: BinaryIO, size: int) -> tuple[dict, int]:
    """(header, header length) of a safetensors file with every bound checked; _Damaged otherwise."""
    head = f.read(8)
    if len(head) < 8:
        raise _Damaged(f"it is only {size} bytes long")
    n = int.from_bytes(head, "little")
    if n < 2 or n > MAX_HEADER_BYTES or 8 + n > size:
        kind = _foreign_kind(head)
        if kind:
            raise _not_safetensors(kind)
        if 2 <= n <= MAX_HEADER_BYTES:  # a plausible header length: the file was cut inside it
            raise _Damaged(f"it is truncated ({size:,} bytes; its header alone needs {8 + n:,})")
        raise _Damaged("its header length does not fit the file")
    raw = f.read(n)
    if len(raw) != n:
        raise _Damaged("it ended early")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        kind = _foreign_kind(head)
        raise (_not_safetensors(kind) if kind else _Damaged("its header is not valid JSON")) from None
    if not isinstance(header, dict):
        raise _Damaged("its header is not a JSON object")
    end = 0
    for k, v in header.items():
        if k == "__metadata__":
            if v is not None and not (isinstance(v, dict) and all(isinstance(x, str) for x in v.values())):
                raise _Damaged("its metadata is not a table of strings")
            continue
        off = v.get("data_offsets") if isinstance(v, dict) else None
        if not (isinstance(off, list) and len(off) == 2 and all(type(o) is int for o in off)):
            raise _Damaged(f"the entry of tensor {k[:60]!r} is damaged")
        if not 0 <= off[0] <= off[1]:
            raise _Damaged(f"the entry of tensor {k[:60]!r} is damaged")
        end = max(end, off[1])
    if 8 + n + end > size:
        raise _Damaged(f"it is truncated ({size:,} bytes of {8 + n + end:,})")
    if 8 + n + end < size:
        raise _Damaged(f"it has {size - 8 - n - end:,} unexpected bytes at the end")
    return header, n


def _parse_header(f: BinaryIO, path: Path) -> tuple[dict, int]:
    """(safetensors header, header length) of an open file; CheckpointError naming what is wrong."""
    try:
        return _check_layout(f, os.fstat(f.fileno()).st_size)
    except _Damaged as exc:
        if exc.foreign and ("PyTorch" in exc.foreign or "pickle" in exc.foreign):
            hint = (
                "A plain PyTorch state dict of a DDPM Studio UNet opens with the preset it was trained "
                "with (ddpm-gui sample --checkpoint FILE --preset NAME); it is never unpickled here."
            )
        elif exc.foreign:
            hint = "Pick a .safetensors checkpoint or a run folder."
        else:
            hint = f"It may be truncated or corrupt. {PICK_ANOTHER}"
        raise CheckpointError(f"{path.name} is not a readable checkpoint: {exc}. {hint}") from None


def _digest(path: Path, header: dict) -> dict | None:
    raw = (header.get("__metadata__") or {}).get(DIGEST_KEY)
    if raw is None:
        return None
    try:
        d = json.loads(raw)
        if not (isinstance(d, dict) and isinstance(d.get("header"), str) and isinstance(d.get("data"), str)):
            raise ValueError
    except (ValueError, RecursionError):
        raise CheckpointError(f"{path.name} has a damaged checksum entry: the file is corrupt.") from None
    return d


def _corrupt(path: Path, what: str) -> CheckpointError:
    return CheckpointError(
        f"{path.name} is corrupt: its {what} do not match the checksum written with it (a disk or copy "
        f"error). {PICK_ANOTHER}"
    )


def _check_meta(path: Path, meta) -> dict:
    """The parts of our JSON header that loading relies on, with their types."""
    from ddpm_gui.engine.config import CONFIG_VERSION

    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{path.name} has a damaged DDPM Studio header ({what}).")

    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path.name} is not a DDPM Studio checkpoint.")
    fv = meta.get("format_version")  # written by every version since the first
    if type(fv) is not int or fv < 1:
        raise bad("format_version")
    if fv > FORMAT_VERSION:
        raise NewerVersionError(
            f"{path.name} was written by a newer DDPM Studio (checkpoint format {fv}, "
            f"this one reads up to {FORMAT_VERSION}): update DDPM Studio to open it."
        )
    if type(meta.get("step")) is not int or meta["step"] < 0:
        raise bad("step")
    for key in ("config", "model_config"):
        if not isinstance(meta.get(key), dict):
            raise bad(key)
    cv = meta["config"].get("version", 1)
    if type(cv) is int and cv > CONFIG_VERSION:
        raise NewerVersionError(
            f"{path.name} was written by a newer DDPM Studio (config version {cv}, this one reads up to "
            f"{CONFIG_VERSION}): update DDPM Studio to open it."
        )
    nc = meta.get("num_classes")
    if nc is not None and (type(nc) is not int or not 1 <= nc <= 1_000_000):
        raise bad("num_classes")
    names = meta.get("class_names")
    if names is not None and not (isinstance(names, list) and all(isinstance(s, str) for s in names)):
        raise bad("class_names")
    groups = meta.get("optim_groups")
    if groups is not None and not (isinstance(groups, list) and all(isinstance(g, dict) for g in groups)):
        raise bad("optim_groups")
    bs = meta.get("batch_size")
    if bs is not None and (type(bs) is not int or bs < 1):
        raise bad("batch_size")
    return meta


def _read(f: BinaryIO, path: Path) -> tuple[dict, dict, int]:
    """(meta, safetensors header, header length) of an open file: the header checked against its digest."""
    header, n = _parse_header(f, path)
    md = header.get("__metadata__") or {}
    if META_KEY not in md:
        raise CheckpointError(
            f"{path.name} is a safetensors file but not a DDPM Studio checkpoint (no '{META_KEY}' header): "
            "to sample from foreign weights, give the preset they were trained with."
        )
    unknown = sorted(k for k in md if k not in (META_KEY, DIGEST_KEY))
    if unknown:
        # our files carry exactly these two entries: another one is a damaged name (a renamed checksum entry
        # would otherwise pass as an older file without checksums, and damaged weights with it)
        raise CheckpointError(
            f"{path.name} has a damaged DDPM Studio header (unknown entry {unknown[0]!r}): the file is "
            f"corrupt. {PICK_ANOTHER}"
        )
    digest = _digest(path, header)
    if digest is not None and _sha256([_canonical(header)]) != digest["header"]:
        raise _corrupt(path, "header and tensor table")
    try:
        meta = json.loads(md[META_KEY])
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"{path.name} has a damaged header: {exc}.") from None
    return _check_meta(path, meta), header, n


# ----------------------------------------------------------------------------- save / load


def save_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    """Atomically write one checkpoint file (with its digests)."""
    atomic_write_bytes(path, checkpoint_bytes(tensors, meta))
    return Path(path)


def read_meta(path: str | Path) -> dict:
    """The JSON header of a checkpoint, without loading the tensors. Checks the header digest and the
    file's length, so a truncated or damaged file is a CheckpointError here already (CheckpointVanished
    for a file that is not there)."""
    path = Path(path)
    return _opened(path, lambda f: _read(f, path)[0])


def is_ddpm_checkpoint(path: str | Path) -> bool:
    """Whether a file is laid out as a DDPM Studio checkpoint (a safetensors header carrying our metadata),
    damaged or not: loading one with load_checkpoint then gives the precise reason it does not load."""
    path = Path(path)
    try:
        header, _n = _opened(path, lambda f: _parse_header(f, path))
    except CheckpointError:
        return False
    return META_KEY in (header.get("__metadata__") or {})


_PROC_FD = os.path.isdir("/proc/self/fd")


def _load_open(f: BinaryIO, path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    meta, header, n = _read(f, path)
    digest = _digest(path, header)
    if digest is not None:
        f.seek(8 + n)
        if _sha256(iter(lambda: f.read(1 << 22), b"")) != digest["data"]:
            raise _corrupt(path, "tensor bytes")
    # safetensors opens files by name: on Linux the name of the open file itself, which reaches the verified
    # bytes even after a training run pruned the checkpoint; elsewhere the path (a file gone by now is
    # FileNotFoundError, turned into CheckpointVanished by _opened)
    name = f"/proc/self/fd/{f.fileno()}" if _PROC_FD else str(path)
    try:
        tensors = load_file(name, device="cpu")
    except FileNotFoundError:
        raise
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as exc:
        raise CheckpointError(
            f"{path.name} could not be read (it may be truncated or corrupt): {str(exc)[:200]}. "
            + PICK_ANOTHER
        ) from exc
    return tensors, meta


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, meta) of a checkpoint, every byte checked against its digest; CheckpointError with a
    readable message if it is damaged, CheckpointVanished if it is not there."""
    path = Path(path)
    return _opened(path, lambda f: _load_open(f, path))


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every step checkpoint in a run folder, oldest first: regular files named
    `step_<8+ digits>.safetensors` (temp files, folders and symlinks never match)."""
    try:
        entries = list(os.scandir(checkpoint_dir(run_dir)))
    except OSError:
        return []
    out = []
    for e in entries:
        m = CKPT_RE.match(e.name)
        try:
            if m and e.is_file(follow_symlinks=False):
                out.append((int(m.group(1)), Path(e.path)))
        except OSError:
            pass
    return sorted(out)


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return checkpoint_dir(run_dir) / f"step_{step:08d}.safetensors"


Skipped = list[tuple[Path, str]]  # (checkpoint, why it was not used)


def _newest(run_dir: str | Path, read: Callable[[Path], _T]) -> tuple[Path | None, _T | None, Skipped]:
    """(path, read(path), skipped) of the newest checkpoint that `read` accepts. A file that vanished after
    the listing (pruned by a training run) is not damage: the folder is listed again."""
    for _ in range(LISTING_TRIES):
        skipped: Skipped = []
        for _step, p in reversed(list_checkpoints(run_dir)):
            try:
                return p, read(p), skipped
            except NewerVersionError:
                raise  # the run continued in a newer DDPM Studio: an older state here would lose that work
            except CheckpointVanished:
                break
            except CheckpointError as exc:
                skipped.append((p, str(exc)))
        else:
            return None, None, skipped
    raise CheckpointError(
        f"The checkpoints in {run_dir} kept changing while they were read (a training run saves and prunes "
        "them faster than they can be opened): try again, or pick a checkpoint file."
    )


def latest_checkpoint(run_dir: str | Path) -> tuple[Path | None, list[str]]:
    """The newest checkpoint whose header reads (header digest and length checked), and the problems
    met on newer ones (e.g. a file damaged after it was written, or a foreign edit)."""
    p, _meta, skipped = _newest(run_dir, read_meta)
    return p, [why for _p, why in skipped]


def load_latest_checkpoint(run_dir: str | Path) -> tuple[Path, dict[str, torch.Tensor], dict, Skipped]:
    """(path, tensors, meta, skipped) of the newest checkpoint that fully loads (every byte verified);
    `skipped` lists the newer ones that did not, with the reason. CheckpointError when none loads."""
    p, loaded, skipped = _newest(run_dir, load_checkpoint)
    if p is None or loaded is None:
        extra = f" ({skipped[0][1]})" if skipped else ""
        raise CheckpointError(f"No readable checkpoint in {run_dir}{extra}.")
    return p, loaded[0], loaded[1], skipped


def fallback_notes(used: Path, skipped: Skipped) -> list[str]:
    """One line per newer checkpoint that was not used, saying why and which one was used instead."""
    notes = []
    for p, why in skipped:
        why = why.replace(PICK_ANOTHER, "").strip().rstrip(".")
        if p.name not in why:
            why = f"{p.name}: {why}"
        notes.append(f"{why}; using {used.name} instead.")
    return notes


def set_aside(path: Path) -> Path | None:
    """Rename an unreadable checkpoint to `<name>.unreadable` (`.unreadable-2`, ... if that name is taken:
    never over another file), so that it is neither resumed nor pruned (kept for a person to look at)."""
    for i in range(1, 100):
        target = path.with_name(path.name + (".unreadable" if i == 1 else f".unreadable-{i}"))
        if os.path.lexists(target):
            continue
        try:
            os.replace(path, target)
            return target
        except OSError:
            return None
    return None


def prune_checkpoints(run_dir: str | Path, keep: int, protect: Iterable[Path] = ()) -> None:
    """Delete all but the `keep` newest checkpoints, except those in `protect` and files that are not laid
    out as DDPM Studio checkpoints (another program's file under a checkpoint's name is left alone)."""
    protect = {Path(p).resolve() for p in protect}
    items = list_checkpoints(run_dir)
    for _step, p in items[: max(0, len(items) - keep)]:
        if p.resolve() in protect or not is_ddpm_checkpoint(p):
            continue
        try:
            p.unlink()
        except OSError:
            pass


_ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")
_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)")
_OPERAND_RE = re.compile(r"Unsupported operand (\d+)")


def _torch_load_refusal(path: Path, head: bytes, exc: BaseException) -> CheckpointError:
    """A one-sentence reason why torch.load(weights_only=True) refused a file, without torch's advice to
    retry with weights_only=False (which is exactly what must never be done with an untrusted file)."""
    text = _ANSI_RE.sub("", str(exc))
    only = "Only safetensors files and plain PyTorch state dicts of tensors are opened."
    m = _GLOBAL_RE.search(text)
    if m:
        return CheckpointError(
            f"{path.name} was refused: unpickling it would call Python code ({m.group(1)}), which was not run. "
            + only
        )
    m = _OPERAND_RE.search(text)
    if m and head[:1] == b"\x80":  # a pickle (PROTO first), with an instruction the safe reader does not take
        return CheckpointError(
            f"{path.name} was refused: it is a pickle using an instruction ({m.group(1)}) that the safe "
            "weights-only reader does not accept; nothing in it was run. " + only
        )
    if m or _foreign_kind(head) is None:
        detail = "it is neither a PyTorch zip archive nor a pickle"
    elif isinstance(exc, EOFError) or not text.strip():
        detail = "it ends early"
    else:
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        detail = lines[0][:160] if lines else type(exc).__name__
    return CheckpointError(
        f"{path.name} is not a readable PyTorch weights file ({detail}); it may be truncated or corrupt. "
        + only
    )


def load_foreign_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Weights from a foreign .pt/.pth file, through torch.load(weights_only=True) only: a file
    crafted to run code when unpickled is refused, never executed."""
    import warnings

    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError as exc:
        raise CheckpointError(f"No such file: {path}.") from exc
    except OSError as exc:
        raise CheckpointError(f"{path.name} cannot be read ({exc.strerror or exc}).") from exc
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a weights file.")
    if size == 0:
        raise CheckpointError(f"{path.name} is empty (0 bytes): it is not a weights file.")
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise CheckpointError(f"{path.name} cannot be read ({exc.strerror or exc}).") from exc
    try:
        # torch warns about pickle protocols on stderr; the CLI prints one line
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise CheckpointError(f"No such file: {path}.") from exc
    except Exception as exc:  # the unpickler raises many kinds
        raise _torch_load_refusal(path, head, exc) from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if (
        not isinstance(obj, dict)
        or not obj
        or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items())
    ):
        raise CheckpointError(f"{path.name} does not hold a state dict of tensors.")
    return obj
