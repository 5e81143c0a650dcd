"""CPU-bound competing processes, for measuring how the app behaves on a machine that is busy with
something else (`ddpm-gui bench --sections busy`)."""

from __future__ import annotations

import os
import subprocess
import sys

# Pure Python spinning: one process keeps one core busy, shares nothing with torch and needs no import.
# It checks its parent (whose pid it is given: the parent may die before the child starts) every ~2 M
# iterations and ends once the parent is gone (killed without a chance to stop it): a killed bench
# leaves no spinner behind.
_SPIN = """
import os, sys
while os.getppid() == int(sys.argv[1]):
    for _ in range(2_000_000):
        pass
"""


class CompetingLoad:
    """`n` CPU-bound processes, running from `start()` (or entering the `with` block) until `stop()` (or
    leaving it, also through an exception or Ctrl+C); the processes are ended and reaped."""

    def __init__(self, n: int):
        if n < 0:
            raise ValueError(f"the number of competing processes must be 0 or more, got {n}")
        self.n = n
        self.procs: list[subprocess.Popen] = []

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def start(self) -> CompetingLoad:
        try:
            for _ in range(self.n):
                self.procs.append(
                    subprocess.Popen(
                        [sys.executable, "-c", _SPIN, str(os.getpid())],
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """End every process (terminate, then kill what is still there after 5 s) and reap it."""
        procs, self.procs = self.procs, []
        try:
            for p in procs:
                if p.poll() is None:
                    p.terminate()
            for p in procs:
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        finally:  # interrupted while waiting (a second Ctrl+C): no spinner outlives the call
            for p in procs:
                if p.poll() is None:
                    p.kill()

    def __enter__(self) -> CompetingLoad:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
