"""Checkpoints and run folders.

A checkpoint is ONE safetensors file (so one atomic rename publishes it): tensors `model.*`, `ema.*`,
`optim.<i>.*` (AdamW state per parameter), `rng.*` (RNG states as uint8 tensors), and a JSON header in
the safetensors metadata (`ddpm_gui` key: format version, step, train config, model config, classes,
optimizer param groups). Nothing is ever unpickled: safetensors cannot run code, and a foreign
`.pt`/`.pth` goes through `torch.load(weights_only=True)` only.

Run folder:
    config.json            the TrainConfig (JSON)
    metrics.jsonl          one JSON object per loss read; append-only, truncated on resume to the checkpoint
    checkpoints/step_00001000.safetensors   rolling; the newest that loads is the one resumed
    samples/step_00001000.png               preview grids
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from safetensors import safe_open

from ddpm_gui.errors import CheckpointError

FORMAT = "ddpm-gui-checkpoint"
FORMAT_VERSION = 1
META_KEY = "ddpm_gui"
CKPT_RE = re.compile(r"^step_(\d{8,})\.safetensors$")


# ----------------------------------------------------------------------------- atomic files


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` so that a crash at any moment leaves either the old file or the new one:
    temp file in the same folder, fsync, rename over, fsync the folder. A failure (disk full, no
    permission) removes the temp file and raises CheckpointError; the old file is untouched."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        fsync_dir(path.parent)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise CheckpointError(
            f"Could not write {path} ({reason}): free some disk space or choose a writable run folder; "
            "the previous files were kept."
        ) from exc
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


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


# ----------------------------------------------------------------------------- save / load


def save_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    """Atomically write one checkpoint file."""
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, **meta}
    data = save(tensors, metadata={META_KEY: json.dumps(header)})
    atomic_write_bytes(path, data)
    return Path(path)


def read_meta(path: str | Path) -> dict:
    """The JSON header of a checkpoint, without loading the tensors."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            md = f.metadata() or {}
    except FileNotFoundError as exc:
        raise CheckpointError(f"No checkpoint at {path}.") from exc
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"{path.name} is not a readable safetensors checkpoint (it may be truncated or corrupt): {exc}. "
            "Pick another checkpoint of the run."
        ) from exc
    if META_KEY not in md:
        raise CheckpointError(
            f"{path.name} is a safetensors file but not a DDPM Studio checkpoint (no '{META_KEY}' header)."
        )
    try:
        meta = json.loads(md[META_KEY])
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path.name} has a damaged header: {exc}.") from exc
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path.name} is not a DDPM Studio checkpoint.")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path.name} was written by a newer DDPM Studio (checkpoint format {meta['format_version']}, "
            f"this one reads up to {FORMAT_VERSION}): update DDPM Studio to open it."
        )
    return meta


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, meta) of a checkpoint; CheckpointError with a readable message if it is damaged."""
    path = Path(path)
    meta = read_meta(path)
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"{path.name} could not be read (it may be truncated or corrupt): {exc}. Pick another checkpoint."
        ) from exc
    return tensors, meta


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every step checkpoint in a run folder, oldest first."""
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
    """The newest checkpoint whose header reads, and the problems met on newer ones (e.g. a file
    truncated by a crash that happened before the atomic rename could not be, or a foreign edit)."""
    problems = []
    for _step, p in reversed(list_checkpoints(run_dir)):
        try:
            read_meta(p)
            return p, problems
        except CheckpointError as exc:
            problems.append(str(exc))
    return None, problems


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


def load_foreign_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Weights from a foreign .pt/.pth file, through torch.load(weights_only=True) only: a file
    crafted to run code when unpickled is refused, never executed."""
    path = Path(path)
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - the unpickler raises many kinds
        raise CheckpointError(
            f"{path.name} was refused: it is not a plain weights file (torch.load with weights_only=True "
            f"failed: {str(exc).splitlines()[0][:200]}). Only safetensors files and plain PyTorch state "
            "dicts are opened, never pickled code."
        ) from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise CheckpointError(f"{path.name} does not hold a state dict of tensors.")
    return obj
