"""How training scales over processes: the same training step on 1 and on N processes (DDP under torchrun),
measured side by side in one call.

    scaling(2, "tiny", steps=20)  ->  {"runs": [{"nproc": 1, "img_per_s": ...}, {"nproc": 2, ...}],
                                        "speedup": ..., "efficiency": ...}

Each process trains on its own batch of `batch` images (weak scaling, as with one GPU per process: the global
batch is batch x N), so the efficiency is img/s(N) / (N x img/s(1)); 1.0 is perfect. On a CPU every process
gets the same number of threads (`threads`, default the cores / N) in both runs, so that the figure says what
adding processes costs, not what splitting the cores does. Each measurement is its own torchrun, whose
rank 0 prints one JSON line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from ddpm_gui.errors import DDPMError

_MARK = "ddpm-scaling: "


def scaling(
    nproc: int,
    preset: str = "tiny",
    steps: int = 20,
    batch: int = 8,
    image_size: int = 32,
    device: str = "cpu",
    threads: int = 0,
    warmup: int = 3,
    timeout: float = 1800,
) -> dict:
    """Training throughput on 1 and on `nproc` processes, side by side. `batch`: images per process per step;
    `threads`: torch threads per process on a CPU (0: the cores / nproc). A DDPMError when a run fails."""
    if nproc < 2:
        raise DDPMError("Scaling compares 1 process with several: give --nproc 2 or more.")
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    threads = threads or max(1, (os.cpu_count() or 1) // nproc)
    runs = [
        _measure(n, preset, steps, batch, image_size, device, threads, warmup, timeout) for n in (1, nproc)
    ]
    one, many = runs[0]["img_per_s"], runs[1]["img_per_s"]
    return {
        "preset": preset,
        "image_size": image_size,
        "batch_per_process": batch,
        "steps": steps,
        "device": device,
        "threads_per_process": threads if device == "cpu" else None,
        "runs": runs,
        "speedup": many / one if one > 0 else float("nan"),
        "efficiency": many / (nproc * one) if one > 0 else float("nan"),
    }


def summary(r: dict) -> str:
    """One line of a scaling() result."""
    one, many = r["runs"]
    return (
        f"{r['preset']} at {r['image_size']}px, batch {r['batch_per_process']} per process on {r['device']}: "
        f"{one['img_per_s']:.1f} img/s on 1 process, {many['img_per_s']:.1f} img/s on {many['nproc']}: "
        f"speedup {r['speedup']:.2f}x, scaling efficiency {r['efficiency']:.0%}"
    )


def _measure(nproc, preset, steps, batch, image_size, device, threads, warmup, timeout) -> dict:
    from ddpm_gui.engine.distributed import torchrun_command

    args = [str(a) for a in (preset, steps, batch, image_size, device, threads, warmup)]
    cmd = torchrun_command(nproc, [])
    cmd[cmd.index("ddpm_gui")] = "ddpm_gui.bench_scaling"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    r = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout, env=env)
    lines = [ln[len(_MARK) :] for ln in r.stdout.splitlines() if ln.startswith(_MARK)]
    if r.returncode != 0 or not lines:
        tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
        raise DDPMError(f"The {nproc}-process measurement failed ({tail}).")
    return json.loads(lines[-1])


def _worker(preset: str, steps: int, batch: int, image_size: int, device: str, threads: int, warmup: int):
    """One rank of a measurement: `warmup` steps, then `steps` timed ones between two barriers."""
    import torch
    import torch.distributed as td

    from ddpm_gui.data import load_data
    from ddpm_gui.engine import distributed
    from ddpm_gui.engine.config import TrainConfig
    from ddpm_gui.engine.learner import Learner

    torch.set_num_threads(threads)
    dist = distributed.init_from_env(device)
    world = dist.world_size
    cfg = TrainConfig(data="builtin:256", image_size=image_size, preset=preset, batch_size=batch * world,
                      steps=steps, warmup_steps=0, device=device, threads=threads)  # fmt: skip
    learner = Learner(cfg, load_data("builtin:256", image_size=image_size))
    learner.dist = dist
    learner.setup()
    learner.ddp = dist.wrap(learner.model)
    for _ in range(warmup):
        float(learner.train_step())
    if dist.active:
        td.barrier()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = learner.train_step()
    float(loss)  # waits for the device
    if dist.active:
        td.barrier()
    dt = time.perf_counter() - t0
    if dist.leader:
        rec = {"nproc": world, "seconds": dt, "img_per_s": steps * batch * world / dt,
               "device": str(learner.device)}  # fmt: skip
        print(_MARK + json.dumps(rec), flush=True)
    distributed.close()


if __name__ == "__main__":
    p, s, b, size, dev, th, w = sys.argv[1:8]
    _worker(p, int(s), int(b), int(size), dev, int(th), int(w))
