"""Crash-safe file writes and the run folder's lock, for every file the app writes (checkpoints, config,
metrics, preview grids, `sample --out/--gif`, JSON reports).

A write goes to a temp file in the target's folder, is fsynced, renamed over the target and the folder is
fsynced: a crash at any moment leaves the old file or the new one, plus at worst a temp file. Temp files are
named `.<name>.ddpm-tmp-<8 hex digits>` (`is_own_temp`), a pattern no other program uses by accident, so the
clean-up at the next start (`remove_temp_files`) deletes only those the app left.

The written file gets the mode any other program would give it: a new file 0o666 less the umask (the kernel
applies the umask when the temp file is created, so the process-wide umask is never read or changed), a
replaced file keeps its mode, and a path that is a symlink is written through to its target (the target is
replaced atomically, the link stays).
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import stat
from collections.abc import Callable, Sequence
from pathlib import Path

from ddpm_gui.errors import CheckpointError, ConfigError

TEMP_RE = re.compile(r"^\..+\.ddpm-tmp-[0-9a-f]{8}$")

# Called at each phase of every atomic write: "open" (before the temp file exists), "half" (half the bytes
# written and flushed), "written" (all written and fsynced, before the rename), "renamed" (before the folder
# fsync). Tests and scripts/fault_cli.py set it to inject faults (raise OSError, sleep, kill the process).
FaultHook = Callable[[Path, str], None]
_fault_hook: FaultHook | None = None


def set_fault_hook(hook: FaultHook | None) -> FaultHook | None:
    """Install `hook(target_path, phase)` for every atomic write of this process (None removes it); returns
    the previous one. For tests and fault injection only."""
    global _fault_hook
    previous, _fault_hook = _fault_hook, hook
    return previous


def is_own_temp(name: str) -> bool:
    """Whether a file name is one of the temp files atomic_write_bytes creates."""
    return bool(TEMP_RE.match(name))


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


def _chunks(data) -> list[memoryview]:
    if isinstance(data, bytes | bytearray | memoryview):
        return [memoryview(data).cast("B")]
    return [memoryview(c).cast("B") for c in data]


def _create_temp(target: Path) -> tuple[int, Path]:
    """A new temp file next to `target`, created with mode 0o666 (less the umask, by the kernel)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = target.with_name(f".{target.name}.ddpm-tmp-{secrets.token_hex(4)}")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise OSError(errno.EEXIST, "no free temp file name", str(target.parent))


def _write_all(fd: int, chunks: list[memoryview], target: Path) -> None:
    hook = _fault_hook
    total = sum(c.nbytes for c in chunks)
    half = total // 2 if hook is not None else -1
    written = 0
    for c in chunks:
        if hook is not None and written <= half < written + c.nbytes:  # split the write at half the bytes
            _write_view(fd, c[: half - written])
            hook(target, "half")
            _write_view(fd, c[half - written :])
        else:
            _write_view(fd, c)
        written += c.nbytes
    os.fsync(fd)


def _write_view(fd: int, view: memoryview) -> None:
    while view.nbytes:
        n = os.write(fd, view)
        view = view[n:]


def write_advice(err: int | None) -> str:
    """What to do when a write failed with errno `err`, in the user's words."""
    if err in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        return "free some disk space"
    if err in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "choose a folder you can write to"
    if err == errno.EISDIR:
        return "that name is a folder: choose a file name"
    if err == errno.ENAMETOOLONG:
        return "choose a shorter name"
    if err in (errno.ENOTDIR, errno.ENOENT):
        return "choose a path whose folders exist"
    return "choose another place to write it"


class WriteFailed(CheckpointError):
    """A file could not be written (disk full, no permission, ...); the file it was to replace is intact.
    `path`, `errno` and `reason` let a caller word the advice for what it was writing."""

    def __init__(self, path: str | Path, exc: OSError):
        self.path, self.errno = Path(path), exc.errno
        self.reason = exc.strerror or str(exc)
        super().__init__(
            f"Could not write {path} ({self.reason}): {write_advice(exc.errno)}; nothing was replaced."
        )


def check_output(path: str | Path, flag: str = "the output") -> Path:
    """Check, before any work, that a user's output file can be written: a file name (not a folder), in a
    folder that exists or can be made, writable, on a disk with room. A ConfigError says what to change."""
    text = str(path)
    if not text.strip():
        raise ConfigError(f"{flag} needs a file name.")
    p = Path(text).expanduser()
    if p.is_dir():
        raise ConfigError(f"{flag} {p} is a folder: give a file name (for example {p / 'out.png'}).")
    folder = p.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # atomic_write_bytes makes the missing folders
    if not folder.is_dir():
        raise ConfigError(f"{flag} {p}: {folder} is a file, not a folder: choose another path.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(
            f"{flag} {p}: the folder {folder} is not writable: choose a folder you can write to."
        )
    try:
        st = os.statvfs(folder)
        full = st.f_bavail * st.f_frsize < 1024 * 1024
    except (AttributeError, OSError):  # no statvfs (Windows): the write itself will say
        full = False
    if full:
        raise ConfigError(f"{flag} {p}: the disk holding {folder} is full: free some disk space.")
    return p


def atomic_write_bytes(path: str | Path, data: bytes | Sequence[bytes | bytearray | memoryview]) -> None:
    """Write `data` (bytes, or a sequence of byte chunks written one after the other) to `path` so that a
    crash at any moment leaves either the old file or the new one: temp file in the same folder, fsync,
    rename over, fsync the folder. A symlink is written through (its target is replaced); a replaced file
    keeps its mode. A failure (disk full, no permission) removes the temp file and raises CheckpointError;
    the old file is untouched."""
    path = Path(path)
    chunks = _chunks(data)
    hook = _fault_hook
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        target = Path(os.path.realpath(path))  # a symlink (or a chain of them): write its target
        try:
            keep_mode = stat.S_IMODE(os.stat(target).st_mode)
        except FileNotFoundError:
            keep_mode = None
        if hook is not None:
            hook(path, "open")
        fd, tmp = _create_temp(target)
        try:
            if keep_mode is not None and hasattr(os, "fchmod"):
                os.fchmod(fd, keep_mode)
            _write_all(fd, chunks, path)
        finally:
            os.close(fd)
        if hook is not None:
            hook(path, "written")
        os.replace(tmp, target)
        tmp = None
        if hook is not None:
            hook(path, "renamed")
        fsync_dir(target.parent)
    except OSError as exc:
        raise WriteFailed(path, exc) from exc
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def write_if_changed(path: str | Path, data: bytes) -> None:
    """atomic_write_bytes, skipped when the file already holds exactly `data` (no rewrite, no new inode)."""
    try:
        if Path(path).read_bytes() == data:
            return
    except OSError:
        pass
    atomic_write_bytes(path, data)


def remove_temp_files(run_dir: str | Path, also: Callable[[str], bool] | None = None) -> list[Path]:
    """Delete the temp files a killed save left in a run folder and its checkpoints/ and samples/ folders:
    regular files named as atomic_write_bytes names them (or that `also` accepts: the names older versions
    used), nothing else (not a user's `.notes.tmp`, not a folder or a symlink of that name). Call it only
    while holding the run's lock."""
    removed = []
    run_dir = Path(run_dir)
    for d in (run_dir, run_dir / "checkpoints", run_dir / "samples"):
        try:
            entries = list(os.scandir(d))
        except OSError:
            continue
        for e in entries:
            try:
                ours = is_own_temp(e.name) or (also is not None and also(e.name))
                if ours and e.is_file(follow_symlinks=False):
                    os.unlink(e.path)
                    removed.append(Path(e.path))
            except OSError:
                pass
    return removed


class RunLock:
    """An exclusive lock on a run folder (`.lock`, flock/msvcrt), so that two trainers (two app windows,
    the app and the CLI) never write the same run. The OS drops it when the process dies, even on SIGKILL.
    The file holds the locking process's id; a `.lock` that is a symlink, not a regular file, or holds
    anything else is another program's and is refused, never rewritten."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / ".lock"
        self._fd: int | None = None

    def _foreign(self, what: str) -> CheckpointError:
        return CheckpointError(
            f"{self.path} is {what}, not DDPM Studio's lock file: move it away, or choose another run folder."
        )

    def _open(self) -> int:
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(self.path, flags, 0o666)
        except OSError as exc:
            if exc.errno == errno.ELOOP or self.path.is_symlink():
                raise self._foreign("a symlink") from exc
            if exc.errno == errno.EISDIR:
                raise self._foreign("a folder") from exc
            raise CheckpointError(
                f"Cannot write in the run folder {self.path.parent} ({exc.strerror}): choose a writable "
                "folder."
            ) from exc
        try:
            st = os.fstat(fd)
            content = os.read(fd, 65) if stat.S_ISREG(st.st_mode) else b""
        except OSError:
            st, content = None, b""
        problem = None
        if st is None or not stat.S_ISREG(st.st_mode):
            problem = "not a regular file"
        elif st.st_size > 64 or (content.strip() and not content.strip().isdigit()):
            problem = "a file with other contents"
        if problem:
            os.close(fd)
            raise self._foreign(problem)
        return fd

    def acquire(self) -> RunLock:
        fd = self._open()
        try:
            os.lseek(fd, 0, os.SEEK_SET)  # msvcrt locks from the current position
            if os.name == "nt":  # pragma: no cover - Windows
                import msvcrt

                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
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
            os.lseek(fd, 0, os.SEEK_SET)
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
