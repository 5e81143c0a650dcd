#!/usr/bin/env python3
"""Time one AdamW step, for-each against fused, for the tutorial and tiny UNets (docs/benchmarks.md).

python scripts/bench_adamw.py          # prints the median of 20 steps after 3 warm-up steps
"""

from __future__ import annotations

import time

import torch

from ddpm_gui.models.presets import build_model, get_preset


def main() -> None:
    for preset in ("tutorial", "tiny"):
        model = build_model(get_preset(preset))
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        for fused in (False, True):
            kind = {"fused": True} if fused else {"foreach": True}
            opt = torch.optim.AdamW(model.parameters(), lr=3e-4, **kind)
            for _ in range(3):
                opt.step()
            times = []
            for _ in range(20):
                t = time.perf_counter()
                opt.step()
                times.append(time.perf_counter() - t)
            times.sort()
            print(
                f"{preset:9s} {'fused' if fused else 'foreach':8s} median {1000 * times[10]:.1f} ms per step"
            )


if __name__ == "__main__":
    main()
