"""The `ddpm-gui` command with a fault injected into its atomic writes, for scripts/fault_injection.py and
tests/test_reliability.py (the app reads no fault settings of its own: this installs a hook, see
ddpm_gui/engine/fileio.py: set_fault_hook).

    python scripts/fault_cli.py [--fault ACTION:N[:SUBSTRING]] [--sleep SECONDS] -- train --out RUN ...

--fault   on the N-th atomic write (1-based) of the process whose file name contains SUBSTRING (default
          ".safetensors": the checkpoint saves), do ACTION:
              kill-mid-write      write half the bytes, then SIGKILL the process
              kill-before-rename  write and fsync everything, then SIGKILL before the rename
              kill-after-rename   rename, then SIGKILL before the folder fsync
              enospc              write half the bytes, then fail as a full disk does (OSError ENOSPC)
--sleep   sleep this long between writing and renaming every such file (widens the window in which an
          outside SIGKILL lands inside a save)
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ACTIONS = {"kill-mid-write": "half", "kill-before-rename": "written", "kill-after-rename": "renamed",
           "enospc": "half"}  # fmt: skip


class SaveFault:
    """A fault hook for ddpm_gui.engine.fileio.set_fault_hook: called as hook(target_path, phase)."""

    def __init__(
        self, action: str | None = None, nth: int = 1, match: str = ".safetensors", sleep: float = 0.0
    ):
        if action is not None and action not in ACTIONS:
            raise ValueError(f"unknown fault {action!r}: use one of {', '.join(ACTIONS)}")
        self.action, self.nth, self.match, self.sleep = action, nth, match, sleep
        self.count = 0  # matching writes begun so far

    @classmethod
    def parse(cls, spec: str | None, sleep: float = 0.0) -> SaveFault:
        """From "ACTION:N[:SUBSTRING]" (None: no fault, only the sleep)."""
        if not spec:
            return cls(None, sleep=sleep)
        parts = spec.split(":")
        nth = int(parts[1]) if len(parts) > 1 and parts[1] else 1
        return cls(parts[0], nth, parts[2] if len(parts) > 2 else ".safetensors", sleep)

    def __call__(self, path: Path, phase: str) -> None:
        if self.match not in path.name:
            return
        if phase == "open":
            self.count += 1
            return
        if phase == "written" and self.sleep:
            time.sleep(self.sleep)
        if self.action is None or self.count != self.nth or phase != ACTIONS[self.action]:
            return
        if self.action == "enospc":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        if hasattr(signal, "SIGKILL"):
            os.kill(os.getpid(), signal.SIGKILL)
        os._exit(137)


def command(*args: str, fault: str | None = None, sleep: float = 0.0) -> list[str]:
    """The argv that runs `ddpm-gui ARGS` with this fault (the plain command without one)."""
    if not fault and not sleep:
        return [sys.executable, "-m", "ddpm_gui", *args]
    opts = (["--fault", fault] if fault else []) + (["--sleep", str(sleep)] if sleep else [])
    return [sys.executable, str(Path(__file__).resolve()), *opts, "--", *args]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        raise SystemExit("usage: fault_cli.py [--fault ACTION:N[:SUBSTRING]] [--sleep SECONDS] -- ARGS...")
    cut = argv.index("--")
    opts, rest = argv[:cut], argv[cut + 1 :]
    settings = dict(zip(opts[::2], opts[1::2], strict=False))
    unknown = set(settings) - {"--fault", "--sleep"}
    if unknown or len(opts) % 2:
        raise SystemExit(f"fault_cli.py: unknown options {' '.join(opts)}")
    hook = SaveFault.parse(settings.get("--fault"), float(settings.get("--sleep", 0)))
    sys.path.insert(0, str(ROOT))
    from ddpm_gui.cli import main as ddpm_main
    from ddpm_gui.engine.fileio import set_fault_hook

    set_fault_hook(hook)
    return ddpm_main(rest)


if __name__ == "__main__":
    raise SystemExit(main())
