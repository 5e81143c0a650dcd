"""Bitwise resume with a given number of torch threads: N steps in one go vs N/2 + resume + N/2.

    python scripts/resume_threads_check.py 1        # one thread (what the tests use)
    python scripts/resume_threads_check.py 2 10     # two threads, 10 steps

Trains the tiny preset on 256 built-in 16x16 images on the CPU in two temporary run folders and prints how
many of the model, EMA and AdamW tensors of the final checkpoints are bitwise equal (docs/reliability.md).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

from ddpm_gui.data import load_data
from ddpm_gui.engine.checkpoint import checkpoint_path, load_checkpoint
from ddpm_gui.engine.config import TrainConfig
from ddpm_gui.engine.trainer import Trainer


def config(steps: int, checkpoint_every: int) -> TrainConfig:
    return TrainConfig(
        data="builtin:256", image_size=16, preset="tiny", batch_size=8, steps=steps, lr=1e-3, warmup_steps=0,
        log_every=1, preview_every=0, checkpoint_every=checkpoint_every, checkpoint_minutes=0, device="cpu",
        seed=0,
    )  # fmt: skip


def main(argv: list[str]) -> int:
    threads = int(argv[0]) if argv else 1
    n = int(argv[1]) if len(argv) > 1 else 10
    torch.set_num_threads(threads)
    data = load_data("builtin:256", image_size=16)
    with tempfile.TemporaryDirectory() as d:
        a, b = Path(d) / "a", Path(d) / "b"
        list(Trainer(config(n, n), a, data=data).run())
        list(Trainer(config(n // 2, n // 2), b, data=data).run())
        list(Trainer(config(n, n // 2), b, resume=True, data=data).run())
        ta, _ = load_checkpoint(checkpoint_path(a, n))
        tb, _ = load_checkpoint(checkpoint_path(b, n))
    keys = [k for k in ta if k.startswith(("model.", "ema.", "optim."))]
    differ = [k for k in keys if not torch.equal(ta[k], tb[k])]
    worst = max((float((ta[k].double() - tb[k].double()).abs().max()) for k in differ), default=0.0)
    print(
        f"threads={torch.get_num_threads()} steps={n}: {len(keys) - len(differ)}/{len(keys)} tensors bitwise "
        f"equal, max |diff| {worst:.3g}"
    )
    return 1 if differ else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
