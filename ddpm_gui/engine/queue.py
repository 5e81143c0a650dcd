"""The training queue: runs waiting to be trained one after the other, kept in the runs folder.

    q = RunQueue(runs_root)
    q.add(config, out=None)          # out None: a new dated folder in the runs folder when it starts
    q.entries(); q.move(id, -1); q.remove(id)
    entry = q.pop_next()             # the first entry that may start, taken off the queue

The queue is one JSON file, `queue.json` in the runs folder, rewritten whole through
engine/fileio.atomic_write_bytes: a crash or a SIGKILL at any moment leaves the old queue or the new one.
Edits are made under an exclusive lock on `.queue.lock` (flock; the app and `ddpm-gui queue run` may edit
the same queue), so an entry is taken by one runner only. A file of that name that DDPM Studio did not write
(no format field) is refused and never rewritten. Entries hold whole TrainConfigs (TrainConfig.to_dict, the
form checkpoints record them in) and are validated when they are added.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ddpm_gui.engine.config import TrainConfig
from ddpm_gui.engine.fileio import atomic_write_bytes
from ddpm_gui.errors import ConfigError, DDPMError

QUEUE_FILE = "queue.json"
QUEUE_LOCK = ".queue.lock"
QUEUE_FORMAT = "ddpm-studio-queue"
QUEUE_VERSION = 1


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


@dataclass
class QueueEntry:
    config: TrainConfig
    out: str | None = None  # the run folder; None: a new dated folder in the runs folder
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    added: str = field(default_factory=_now)
    error: str = ""  # why it could not start (it stays queued, skipped, until removed)

    def to_dict(self) -> dict:
        return {"id": self.id, "added": self.added, "out": self.out, "error": self.error,
                "config": self.config.to_dict()}  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict) -> QueueEntry:
        if (
            not isinstance(d, dict)
            or not isinstance(d.get("id"), str)
            or not isinstance(d.get("config"), dict)
        ):
            raise ConfigError("an entry of the queue is damaged")
        out = d.get("out")
        return cls(
            config=TrainConfig.from_dict(d["config"]),
            out=out if isinstance(out, str) and out else None,
            id=d["id"],
            added=str(d.get("added", "")),
            error=str(d.get("error") or ""),
        )

    def describe(self) -> str:
        c = self.config
        where = self.out or "a new folder"
        return f"{c.preset}, {c.data}, {c.steps:,} steps -> {where}"


def unique_run_dir(root: str | Path) -> Path:
    """A new dated run folder name in `root` that does not exist yet."""
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    root = Path(root).expanduser()
    for i in range(1, 1000):
        p = root / (stamp if i == 1 else f"{stamp}-{i}")
        if not os.path.lexists(p):
            return p
    raise ConfigError(f"Could not find a free run folder name in {root}: tidy up the runs folder.")


class RunQueue:
    """The queue of the runs folder `root` (the folder is made when the first entry is added)."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()
        self.path = self.root / QUEUE_FILE

    # ------------------------------------------------------------------ reading
    def entries(self) -> list[QueueEntry]:
        """The queued entries in order ([] when there is no queue file). ConfigError for a damaged file or
        one that is not DDPM Studio's."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise ConfigError(f"{self.path} cannot be read ({exc.strerror or exc}).") from None
        try:
            d = json.loads(raw)
        except (ValueError, RecursionError):
            d = None
        if not isinstance(d, dict) or d.get("format") != QUEUE_FORMAT:
            raise ConfigError(
                f"{self.path} is not DDPM Studio's training queue: move it away (it was left unchanged)."
            )
        version = d.get("version")
        if not isinstance(version, int) or version > QUEUE_VERSION:
            raise ConfigError(
                f"{self.path} was written by a newer DDPM Studio: update DDPM Studio to use it."
            )
        items = d.get("entries")
        if not isinstance(items, list):
            raise ConfigError(f"{self.path} is damaged (no entries list): move it away.")
        try:
            return [QueueEntry.from_dict(e) for e in items]
        except (DDPMError, TypeError, ValueError) as exc:
            raise ConfigError(f"{self.path} is damaged ({exc}): move it away.") from None

    def __len__(self) -> int:
        return len(self.entries())

    # ------------------------------------------------------------------ editing
    @contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.root / QUEUE_LOCK, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        except OSError as exc:
            raise ConfigError(
                f"Cannot write the queue in {self.root} ({exc.strerror or exc}): choose a writable runs folder."
            ) from None
        try:
            try:
                import fcntl

                fcntl.flock(fd, fcntl.LOCK_EX)  # blocks: edits take milliseconds
            except (ImportError, OSError):
                pass  # no flock (Windows, some network shares): edits are still atomic, one at a time
            yield
        finally:
            os.close(fd)

    def _write(self, entries: list[QueueEntry]) -> None:
        doc = {"format": QUEUE_FORMAT, "version": QUEUE_VERSION, "entries": [e.to_dict() for e in entries]}
        atomic_write_bytes(self.path, (json.dumps(doc, indent=2) + "\n").encode())

    def edit(self, change: Callable[[list[QueueEntry]], object]):
        """Apply `change` to the list of entries (in place) under the lock and write the result; returns
        what `change` returned."""
        with self._locked():
            entries = self.entries()
            before = [e.to_dict() for e in entries]
            result = change(entries)
            if [e.to_dict() for e in entries] != before:
                self._write(entries)
            return result

    def add(self, config: TrainConfig, out: str | Path | None = None, index: int | None = None) -> QueueEntry:
        """Queue a run (validated now; ConfigError says what to change); at the end, or at `index`."""
        config.validate()
        entry = QueueEntry(config=config, out=str(Path(out).expanduser()) if out else None)

        def put(entries: list[QueueEntry]) -> None:
            if entry.out and any(e.out == entry.out for e in entries):
                raise ConfigError(f"{entry.out} is already queued: choose another run folder.")
            entries.insert(len(entries) if index is None else index, entry)

        self.edit(put)
        return entry

    def _index(self, entries: list[QueueEntry], key: str | int) -> int:
        if isinstance(key, int) or (isinstance(key, str) and key.isdigit() and len(key) < 6):
            i = int(key) - 1  # a position as `queue list` shows it (from 1)
            if 0 <= i < len(entries):
                return i
        for i, e in enumerate(entries):
            if e.id == key:
                return i
        raise ConfigError(f"No queued run {key!r}: see the queue (ddpm-gui queue list).")

    def remove(self, key: str | int) -> QueueEntry:
        """Take an entry off the queue by id or position (from 1)."""
        return self.edit(lambda entries: entries.pop(self._index(entries, key)))

    def move(self, key: str | int, delta: int) -> int:
        """Move an entry `delta` places (negative: earlier); returns its new position (from 0)."""

        def shift(entries: list[QueueEntry]) -> int:
            i = self._index(entries, key)
            j = max(0, min(len(entries) - 1, i + delta))
            entries.insert(j, entries.pop(i))
            return j

        return self.edit(shift)

    def pop_next(self) -> QueueEntry | None:
        """The first entry that may start (not marked with an error), taken off the queue; None when none."""

        def take(entries: list[QueueEntry]) -> QueueEntry | None:
            for i, e in enumerate(entries):
                if not e.error:
                    return entries.pop(i)
            return None

        return self.edit(take)

    def put_back(self, entry: QueueEntry, error: str) -> None:
        """An entry that could not start goes back at the front, marked with why (run skips it)."""
        entry.error = error

        def put(entries: list[QueueEntry]) -> None:
            entries.insert(0, entry)

        self.edit(put)
