"""Checkpoints and run folders: crash-safe writes, verified reads, nothing ever unpickled.

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

Writes (see docs/reliability.md): temp file `.<name>.<random>.tmp` in the same folder, fsync, rename
over the target, fsync the folder. A crash at any moment leaves the old file or the new one, plus at
worst a temp file, which is never mistaken for a checkpoint and is removed at the next start.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import signal
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from ddpm_gui.errors import CheckpointError

FORMAT = "ddpm-gui-checkpoint"
FORMAT_VERSION = 1
META_KEY = "ddpm_gui"
DIGEST_KEY = "ddpm_gui_sha256"
CKPT_RE = re.compile(r"^step_(\d{8,})\.safetensors$")
TEMP_RE = re.compile(r"^\..+\.tmp$")  # what atomic_write_bytes leaves behind when killed mid-save
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit

# Fault injection, for tests and scripts/fault_injection.py only (read at every write, so a test can set them):
#   DDPM_GUI_FAULT_IN_SAVE="<action>:<n>[:<substring>]"  on the n-th atomic write (1-based) in this process
#       whose file name contains <substring> (default ".safetensors"), do <action>:
#       kill-mid-write      write half the bytes, then SIGKILL this process
#       kill-before-rename  write and fsync everything, then SIGKILL before the rename
#       kill-after-rename   rename, then SIGKILL before the folder fsync
#       enospc              write half the bytes, then fail as a full disk would (OSError ENOSPC)
#   DDPM_GUI_FAULT_SLEEP_IN_SAVE="<seconds>"  sleep between writing and renaming (widens the window in
#       which an outside SIGKILL lands inside a save)
FAULT_ENV = "DDPM_GUI_FAULT_IN_SAVE"
SLEEP_ENV = "DDPM_GUI_FAULT_SLEEP_IN_SAVE"
_fault_counts: dict[str, int] = {}


class NewerVersionError(CheckpointError):
    """A checkpoint written by a newer DDPM Studio: refused, never skipped or set aside (it is not damaged)."""


# ----------------------------------------------------------------------------- atomic files


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # Windows cannot open a folder; its renames are durable enough
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fault(path: Path, phase: str) -> None:
    """Testing hook: see FAULT_ENV. Does nothing unless the variable is set."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    parts = spec.split(":")
    action, nth = parts[0], int(parts[1]) if len(parts) > 1 and parts[1] else 1
    match = parts[2] if len(parts) > 2 else ".safetensors"
    if match not in path.name:
        return
    if phase == "open":
        _fault_counts[spec] = _fault_counts.get(spec, 0) + 1
        return
    if _fault_counts.get(spec) != nth:
        return
    if (action, phase) in (
        ("kill-mid-write", "mid"),
        ("kill-before-rename", "written"),
        ("kill-after-rename", "renamed"),
    ):
        if hasattr(signal, "SIGKILL"):
            os.kill(os.getpid(), signal.SIGKILL)
        os._exit(137)
    if (action, phase) == ("enospc", "mid"):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def _chunks(data) -> list[memoryview]:
    if isinstance(data, bytes | bytearray | memoryview):
        return [memoryview(data)]
    return [memoryview(c) for c in data]


def atomic_write_bytes(path: str | Path, data: bytes | Sequence[bytes | bytearray | memoryview]) -> None:
    """Write `data` (bytes, or a sequence of byte chunks written one after the other) to `path` so that a
    crash at any moment leaves either the old file or the new one: temp file in the same folder, fsync,
    rename over, fsync the folder. A failure (disk full, no permission) removes the temp file and raises
    CheckpointError; the old file is untouched."""
    path = Path(path)
    chunks = _chunks(data)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _fault(path, "open")
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            total = sum(c.nbytes for c in chunks)
            written = 0
            for c in chunks:
                if os.environ.get(FAULT_ENV) and written <= total // 2 < written + c.nbytes:
                    half = total // 2 - written
                    f.write(c[:half])
                    f.flush()
                    _fault(path, "mid")
                    f.write(c[half:])
                else:
                    f.write(c)
                written += c.nbytes
            f.flush()
            os.fsync(f.fileno())
        _fault(path, "written")
        sleep = os.environ.get(SLEEP_ENV)
        if sleep:
            time.sleep(float(sleep))
        os.replace(tmp, path)
        tmp = None
        _fault(path, "renamed")
        fsync_dir(path.parent)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        hint = (
            "free some disk space"
            if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1))
            else "choose a writable run folder"
        )
        raise CheckpointError(
            f"Could not write {path} ({reason}): {hint} and resume; the previous files were kept."
        ) from exc
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def remove_temp_files(run_dir: str | Path) -> list[Path]:
    """Delete the temp files a killed save left in a run folder (call it only while holding the run's lock)."""
    removed = []
    run_dir = Path(run_dir)
    for d in (run_dir, run_dir / "checkpoints", run_dir / "samples"):
        if not d.is_dir():
            continue
        for p in d.iterdir():
            if TEMP_RE.match(p.name) and p.is_file():
                try:
                    p.unlink()
                    removed.append(p)
                except OSError:
                    pass
    return removed


class RunLock:
    """An exclusive lock on a run folder (`.lock`, flock/msvcrt), so that two trainers (two app windows,
    the app and the CLI) never write the same run. The OS drops it when the process dies, even on SIGKILL."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / ".lock"
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise CheckpointError(
                f"Cannot write in the run folder {self.path.parent} ({exc.strerror}): choose a writable folder."
            ) from exc
        try:
            if os.name == "nt":  # pragma: no cover - Windows
                import msvcrt

                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            else:
                import fcntl

                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES, errno.EDEADLK):
                try:
                    owner = (
                        os.pread(fd, 64, 0).decode(errors="replace").strip() if hasattr(os, "pread") else ""
                    )
                except OSError:
                    owner = ""
                os.close(fd)
                who = f" (process {owner})" if owner.isdigit() else ""
                raise CheckpointError(
                    f"{self.path.parent} is in use by another training run{who}: stop it first, or choose "
                    "another run folder."
                ) from exc
            # a file system without locks (some network shares): go on unlocked
        try:
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())  # for the message another process shows
        except OSError:
            pass
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)  # closing drops the lock; the file stays (deleting it would race)
            finally:
                self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


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


def _parse_header(path: Path) -> tuple[dict, int, int]:
    """(safetensors header, header length, file size) with every bound checked; CheckpointError otherwise."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            try:
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
                    damage = _not_safetensors(kind) if kind else _Damaged("its header is not valid JSON")
                    raise damage from None
                if not isinstance(header, dict):
                    raise _Damaged("its header is not a JSON object")
                end = 0
                for k, v in header.items():
                    if k == "__metadata__":
                        if v is not None and not (
                            isinstance(v, dict) and all(isinstance(x, str) for x in v.values())
                        ):
                            raise _Damaged("its metadata is not a table of strings")
                        continue
                    off = v.get("data_offsets") if isinstance(v, dict) else None
                    if not (
                        isinstance(off, list)
                        and len(off) == 2
                        and all(type(o) is int for o in off)
                        and 0 <= off[0] <= off[1]
                    ):
                        raise _Damaged(f"the entry of tensor {k[:60]!r} is damaged")
                    end = max(end, off[1])
                if 8 + n + end > size:
                    raise _Damaged(f"it is truncated ({size:,} bytes of {8 + n + end:,})")
                if 8 + n + end < size:
                    raise _Damaged(f"it has {size - 8 - n - end:,} unexpected bytes at the end")
            except _Damaged as exc:
                if exc.foreign and ("PyTorch" in exc.foreign or "pickle" in exc.foreign):
                    hint = (
                        "A plain PyTorch state dict of a DDPM Studio UNet opens with the preset it was trained "
                        "with (ddpm-gui sample --checkpoint FILE --preset NAME); it is never unpickled here."
                    )
                elif exc.foreign:
                    hint = "Pick a .safetensors checkpoint or a run folder."
                else:
                    hint = "It may be truncated or corrupt; pick another checkpoint of the run."
                raise CheckpointError(f"{path.name} is not a readable checkpoint: {exc}. {hint}") from None
    except FileNotFoundError as exc:
        raise CheckpointError(f"No checkpoint at {path}.") from exc
    except IsADirectoryError as exc:
        raise CheckpointError(f"{path} is a folder, not a checkpoint file.") from exc
    except OSError as exc:
        raise CheckpointError(f"{path.name} cannot be read ({exc.strerror or exc}).") from exc
    return header, n, size


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
        "error). Pick another checkpoint of the run."
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


def _read(path: Path) -> tuple[dict, dict, int]:
    """(meta, safetensors header, header length): the header checked against its digest."""
    header, n, _size = _parse_header(path)
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
            "corrupt. Pick another checkpoint of the run."
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
    file's length, so a truncated or damaged file is a CheckpointError here already."""
    return _read(Path(path))[0]


def is_ddpm_checkpoint(path: str | Path) -> bool:
    """Whether a file is laid out as a DDPM Studio checkpoint (a safetensors header carrying our metadata),
    damaged or not: loading one with load_checkpoint then gives the precise reason it does not load."""
    try:
        header, _n, _size = _parse_header(Path(path))
    except CheckpointError:
        return False
    return META_KEY in (header.get("__metadata__") or {})


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, meta) of a checkpoint, every byte checked against its digest; CheckpointError with a
    readable message if it is damaged."""
    path = Path(path)
    meta, header, n = _read(path)
    digest = _digest(path, header)
    if digest is not None:
        try:
            with open(path, "rb") as f:
                f.seek(8 + n)
                got = _sha256(iter(lambda: f.read(1 << 22), b""))
        except OSError as exc:
            raise CheckpointError(f"{path.name} cannot be read ({exc.strerror or exc}).") from exc
        if got != digest["data"]:
            raise _corrupt(path, "tensor bytes")
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as exc:
        raise CheckpointError(
            f"{path.name} could not be read (it may be truncated or corrupt): {str(exc)[:200]}. Pick another checkpoint."
        ) from exc
    return tensors, meta


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every step checkpoint in a run folder, oldest first (temp files never match)."""
    d = checkpoint_dir(run_dir)
    if not d.is_dir():
        return []
    out = []
    for p in d.iterdir():
        m = CKPT_RE.match(p.name)
        if m:
            out.append((int(m.group(1)), p))
    return sorted(out)


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return checkpoint_dir(run_dir) / f"step_{step:08d}.safetensors"


def latest_checkpoint(run_dir: str | Path) -> tuple[Path | None, list[str]]:
    """The newest checkpoint whose header reads (header digest and length checked), and the problems
    met on newer ones (e.g. a file damaged after it was written, or a foreign edit)."""
    problems = []
    for _step, p in reversed(list_checkpoints(run_dir)):
        try:
            read_meta(p)
            return p, problems
        except NewerVersionError:
            raise
        except CheckpointError as exc:
            problems.append(str(exc))
    return None, problems


def load_latest_checkpoint(
    run_dir: str | Path,
) -> tuple[Path, dict[str, torch.Tensor], dict, list[tuple[Path, str]]]:
    """(path, tensors, meta, skipped) of the newest checkpoint that fully loads (every byte verified);
    `skipped` lists the newer ones that did not, with the reason. CheckpointError when none loads."""
    skipped: list[tuple[Path, str]] = []
    for _step, p in reversed(list_checkpoints(run_dir)):
        try:
            tensors, meta = load_checkpoint(p)
            return p, tensors, meta, skipped
        except NewerVersionError:
            raise  # the run continued in a newer DDPM Studio: resuming an older state here would lose that work
        except CheckpointError as exc:
            skipped.append((p, str(exc)))
    extra = f" ({skipped[0][1]})" if skipped else ""
    raise CheckpointError(f"No readable checkpoint in {run_dir}{extra}.")


def set_aside(path: Path) -> Path | None:
    """Rename an unreadable checkpoint to `<name>.unreadable`, so that it is neither resumed nor pruned
    (it is kept for a person to look at)."""
    target = path.with_name(path.name + ".unreadable")
    try:
        os.replace(path, target)
        return target
    except OSError:
        return None


def prune_checkpoints(run_dir: str | Path, keep: int, protect: Iterable[Path] = ()) -> None:
    protect = {Path(p).resolve() for p in protect}
    items = list_checkpoints(run_dir)
    for _step, p in items[: max(0, len(items) - keep)]:
        if p.resolve() in protect:
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
    except Exception as exc:  # noqa: BLE001 - the unpickler raises many kinds
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
