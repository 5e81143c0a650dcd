"""Training on several processes with torch.distributed (DistributedDataParallel), one process per GPU (or
per CPU slice), started by torchrun. No Qt, no files: the Trainer (trainer.py) asks this module.

    torchrun --nproc_per_node 2 -m ddpm_gui train --out runs/a ...    # or: ddpm-gui train --nproc 2 ...

What a run on N processes means here:
- the batch size is GLOBAL: each step trains on `batch_size` images in all, `batch_size // N` per process,
  so the tutorial's 128 means the same optimisation on 1 or 8 GPUs; it must divide by N;
- each process draws its images from its own shard of the training pool (every N-th image) with its own
  random stream (derived from the seed and its rank; rank 0 keeps the seed itself), and DDP averages the
  gradients, so a step is the 1-process step on the union of the per-process batches;
- rank 0 alone opens the run folder (lock, settings, metrics, previews, checkpoints); it shares the
  starting state (fresh or resumed) with the others, and checkpoints hold every rank's random state
  (`rng.gen.rank<R>`, `rng.torch.rank<R>`; rank 0's under the 1-process names), so the weights, EMA and
  optimizer of a checkpoint are stored exactly as a 1-process run stores them;
- the logged loss is the mean over the processes; stopping (Ctrl+C, SIGTERM) and the checkpoints every M
  minutes are agreed at the loss reads, so that all processes stop or save at the same step;
- a process that dies makes the collective operations of the others fail (gloo: at once; NCCL: after the
  process group's timeout), and torchrun stops the remaining ones: they end with a message naming it.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
import torch

from ddpm_gui.errors import ConfigError, DDPMError

# how long a collective operation may wait for the other processes before the run fails: longer than rank 0
# may spend alone on a preview, a validation pass or writing a checkpoint between two steps
TIMEOUT_S = float(os.environ.get("DDPM_GUI_DIST_TIMEOUT", "600"))


def launched() -> bool:
    """Whether this process is one of several started by torchrun (or any launcher setting its variables)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def check_batch(batch_size: int, world_size: int) -> None:
    """The global batch must split evenly over the processes: a ConfigError that says which sizes do."""
    if world_size > 1 and batch_size % world_size:
        lo = max(world_size, batch_size // world_size * world_size)
        raise ConfigError(
            f"--batch-size {batch_size} is the global batch (all {world_size} processes together) and must be "
            f"divisible by {world_size}: use {lo} or {lo + world_size}."
        )


@dataclass
class Dist:
    """This process's place in the run (rank 0 of 1 for an ordinary run)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""
    peers: list[tuple[str, int]] = field(default_factory=list)  # (host, pid) of each rank

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def leader(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------------ this rank's share

    def seed(self, seed: int, step: int = 0) -> int:
        """The seed of this rank's batch and noise stream: the run's seed on rank 0 (an ordinary run is
        unchanged); other ranks get independent streams derived from (seed, rank, step)."""
        if self.rank == 0 and step == 0:
            return int(seed)
        words = np.random.SeedSequence([int(seed), self.rank, int(step)]).generate_state(2, np.uint32)
        return (int(words[0]) << 31 | int(words[1]) >> 1) & (2**63 - 1)

    def local_batch(self, batch_size: int) -> int:
        return batch_size // self.world_size

    def draw(self, n: int, count: int, gen: torch.Generator) -> torch.Tensor:
        """`count` indices into a pool of `n` training images, from this rank's shard (rank, rank + N, ...)."""
        if not self.active:
            return torch.randint(0, n, (count,), generator=gen, device=gen.device)
        m = len(range(self.rank, n, self.world_size))
        if m == 0:
            raise ConfigError(
                f"{n} training images are too few for {self.world_size} processes: use more images or "
                "fewer processes."
            )
        return torch.randint(0, m, (count,), generator=gen, device=gen.device) * self.world_size + self.rank

    def device(self, dev: torch.device) -> torch.device:
        """The device of this rank: its own GPU (LOCAL_RANK) when training on CUDA."""
        if self.active and dev.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return dev

    def wrap(self, model: torch.nn.Module) -> torch.nn.parallel.DistributedDataParallel | None:
        """The DDP module the forward pass goes through (it averages the gradients in backward, and
        broadcasts rank 0's weights now); None for one process. The model itself stays unwrapped everywhere
        else, so state dicts keep their 1-process names."""
        if not self.active:
            return None
        from torch.nn.parallel import DistributedDataParallel

        dev = next(model.parameters()).device
        ids = [dev] if dev.type == "cuda" else None
        # some presets have parameters no forward pass uses (their grad stays None, as in one process)
        return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)

    # ------------------------------------------------------------------ collective steps

    def _comm(self, t: torch.Tensor) -> torch.Tensor:
        return t.cuda(self.local_rank) if self.backend == "nccl" else t.cpu()

    def reduce_read(
        self, losses: torch.Tensor, stop: bool, timed_ckpt: bool
    ) -> tuple[torch.Tensor, bool, bool]:
        """At a loss read: the losses averaged over the ranks, and whether any rank is stopping and whether
        rank 0's checkpoint timer ran out (so every rank acts on the same step)."""
        import torch.distributed as td

        flags = torch.tensor([float(stop), float(timed_ckpt and self.leader)], dtype=torch.float32)
        both = self._comm(torch.cat([losses.detach().float().reshape(-1).cpu(), flags]))
        td.all_reduce(both)
        both = both.cpu()
        n = losses.numel()
        return both[:n] / self.world_size, bool(both[n] > 0), bool(both[n + 1] > 0)

    def gather_rng(self, gen: torch.Generator) -> dict[str, torch.Tensor]:
        """Every rank's random state, for rank 0's checkpoint (others get {}): `rng.gen.rank<R>`,
        `rng.torch.rank<R>` for R >= 1 (rank 0's are the checkpoint's usual `rng.gen`, `rng.torch`)."""
        import torch.distributed as td

        if not self.active:
            return {}
        mine = {"gen": gen.get_state().cpu(), "torch": torch.get_rng_state()}
        got: list = [None] * self.world_size if self.leader else []
        td.gather_object(mine, got if self.leader else None, dst=0)
        out: dict[str, torch.Tensor] = {}
        for r, states in enumerate(got):
            if r:
                out.update({f"rng.{k}.rank{r}": v for k, v in states.items()})
        return out

    def share_start(self, tensors: dict[str, torch.Tensor] | None, info: dict) -> tuple[dict, dict]:
        """Rank 0 sends the starting state (tensors and JSON-able info, e.g. a state_dict()); the others
        receive it. info {"error": message} says that rank 0 failed before the start: the others raise it."""
        import torch.distributed as td

        header: list = [None]
        if self.leader:
            specs = [(k, tuple(v.shape), v.dtype) for k, v in (tensors or {}).items()]
            header = [{"info": info, "specs": specs}]
        td.broadcast_object_list(header, src=0)
        got = header[0]
        if "error" in got["info"]:
            raise DDPMError(f"Rank 0 stopped before training started: {got['info']['error']}")
        out: dict[str, torch.Tensor] = {}
        for key, shape, dtype in got["specs"]:
            t = tensors[key] if tensors is not None else torch.empty(shape, dtype=dtype)
            buf = self._comm(t.contiguous())
            td.broadcast(buf, src=0)
            out[key] = buf.cpu()
        return out, got["info"]

    def share_failure(self, message: str) -> None:
        """Rank 0 failed before the start: tell the others (who wait in share_start). Best effort: they may
        have failed too and be gone."""
        try:
            self.share_start(None, {"error": message})
        except Exception:
            pass

    # ------------------------------------------------------------------ failures and teardown

    def dead_peers(self, wait_s: float = 5.0) -> list[int]:
        """The ranks on this machine whose process has ended (a failed collective may come a moment before
        the peer's end shows: looked at for up to `wait_s`)."""
        import time

        host = socket.gethostname()
        peers = [r for r, (h, _) in enumerate(self.peers) if r != self.rank and h == host]
        deadline = time.monotonic() + wait_s
        while True:
            dead = [r for r in peers if _ended(self.peers[r][1])]
            if dead or not peers or time.monotonic() > deadline:
                return dead
            time.sleep(0.25)

    def explain(self, exc: BaseException, step: int, checkpoint: str | os.PathLike | None) -> str:
        """One line for a failure of the collective operations: which rank is gone, and how to go on."""
        dead = self.dead_peers()
        resume = (
            f"resume with --resume (from {os.path.basename(checkpoint)})"
            if checkpoint
            else "start it again (no checkpoint was saved yet)"
        )
        if dead:
            who = ", ".join(f"rank {r} (process {self.peers[r][1]})" for r in dead)
            return f"{who} ended at step {step}, so rank {self.rank} stopped too: {resume}."
        text = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        return (
            f"Rank {self.rank} lost contact with the other processes at step {step} ({text}): one of them "
            f"stopped or hung, see its output; {resume}."
        )


def is_comm_failure(exc: BaseException) -> bool:
    """Whether an exception is the process group failing (a peer gone, a timeout), not the training's own."""
    import torch.distributed as td

    if isinstance(exc, getattr(td, "DistError", ())):
        return True
    text = str(exc).lower()
    return any(w in text for w in ("gloo", "nccl", "connection", "timed out", "peer", "socket"))


def rank_rng(tensors: dict[str, torch.Tensor], meta: dict, world_size: int) -> tuple[dict, str | None]:
    """What a resumed checkpoint holds for the other ranks (their random states, when it was saved by as
    many processes), and a note when it was saved by another number of processes (then they start new
    streams from the seed and step, and the run is not bitwise the uninterrupted one)."""
    saved = int(meta.get("world_size") or 1)
    if saved == world_size:
        return {k: v for k, v in tensors.items() if k.startswith("rng.") and ".rank" in k}, None
    return {}, (
        f"This run was saved by {saved} process{'es' if saved > 1 else ''} and goes on with {world_size}: "
        "the batches and noise come from new random streams (seeded from the run's seed and step), so the "
        "result is not bitwise what an uninterrupted run would give."
    )


def share_learner_state(learner, extra: dict[str, torch.Tensor]) -> None:
    """At the start, on every rank: rank 0's state (fresh, resumed or started from other weights) goes to
    the others, each of which then takes its own random stream (from `extra`, the resumed checkpoint's
    rng.*.rank<R>, else derived from the seed and step). Then the model is wrapped in DDP."""
    d = learner.dist
    if d.leader:
        tensors, meta = learner.state_dict()
        d.share_start({**tensors, **extra}, {"meta": meta})
    else:
        tensors, info = d.share_start(None, {})
        meta = info["meta"]
        learner.load_state_dict(tensors, meta, "the state rank 0 sent")
        gen, cpu = tensors.get(f"rng.gen.rank{d.rank}"), tensors.get(f"rng.torch.rank{d.rank}")
        if gen is not None and cpu is not None:
            learner.gen.set_state(gen.to(learner.gen.get_state().device))
            torch.set_rng_state(cpu)
        else:
            learner.gen.manual_seed(d.seed(learner.config.seed, learner.step))
    learner.ddp = d.wrap(learner.model)


def torchrun_command(nproc: int, args: list[str]) -> list[str]:
    """The command that runs `ddpm-gui <args>` as `nproc` processes on this machine under torchrun (its
    standalone rendezvous picks a free port, so several such runs can share a machine)."""
    import sys

    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "ddpm_gui", *args]  # fmt: skip


def _ended(pid: int) -> bool:
    """Whether a process has ended (gone, or a zombie its parent has not collected yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X")
    except (OSError, IndexError):
        return False


SINGLE = Dist()
_current = SINGLE


def current() -> Dist:
    """This process's Dist: set by init_from_env(), else an ordinary single-process run."""
    return _current


def backend_for(device: str) -> str:
    """NCCL for CUDA (one GPU per process), gloo otherwise (the CPU)."""
    wants_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    return "nccl" if wants_cuda and torch.distributed.is_nccl_available() else "gloo"


def init_from_env(device: str = "auto", batch_size: int | None = None) -> Dist:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT); a
    single process (no WORLD_SIZE > 1) stays an ordinary run. Refuses a batch that does not divide."""
    global _current
    if not launched():
        return _current
    import torch.distributed as td

    world = int(os.environ["WORLD_SIZE"])
    if batch_size is not None:
        check_batch(batch_size, world)
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    backend = backend_for(device)
    if backend == "nccl":
        if local >= torch.cuda.device_count():
            raise ConfigError(
                f"Process {rank} wants GPU {local} but this machine has {torch.cuda.device_count()}: start "
                "at most one process per GPU (--nproc_per_node)."
            )
        torch.cuda.set_device(local)
    if not td.is_initialized():
        td.init_process_group(backend, timeout=timedelta(seconds=TIMEOUT_S))
    peers: list = [None] * world
    td.all_gather_object(peers, (socket.gethostname(), os.getpid()))
    _current = Dist(rank, world, local, backend, [tuple(p) for p in peers])
    return _current


def close() -> None:
    """Leave the process group (after the run; also after a failure, without waiting for the others)."""
    global _current
    import torch.distributed as td

    if td.is_available() and td.is_initialized():
        try:
            td.destroy_process_group()
        except Exception:
            pass
    _current = SINGLE
