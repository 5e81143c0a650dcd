"""`ddpm-gui bench --sections scaling`: how DDPM Studio's training step grows with the batch and the image
size, for each model preset (scaling over processes is `bench --nproc`, bench_scaling.py).

For every cell (preset, image size, batch) a fresh learner (Learner.setup, as a training run) takes
`warmup` untimed steps and then `steps` timed ones, each between two device syncs, with the matmul peak
probed after each (bench.PeakProbe), so that a cell timed while the machine was busier shows a lower peak
beside it. The figures: milliseconds per image (median of the steps), the share of the fp32 matmul peak, and
the cliffs: where the time per image grows by more than `cliff` times from a batch to the next larger one
(it should fall or stay flat), or the time per image and pixel from an image size to the next larger one.
`plot` writes a PNG (Pillow): time per image against the batch, one panel per image size, one line per
preset, each cliff circled in red.
"""

from __future__ import annotations

import gc
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace

import torch

PRESETS = ("tiny", "small", "tutorial", "diffusers-tiny")


@dataclass
class SizeConfig:
    presets: tuple[str, ...] = PRESETS
    batches: tuple[int, ...] = (16, 32, 64, 128)
    sizes: tuple[int, ...] = (32, 64)
    steps: int = 2  # timed steps per cell (a CPU step of the tutorial UNet at 128x64x64 takes ~15 s)
    warmup: int = 1
    cliff: float = 1.5  # a neighbour's time per image (per image and pixel across sizes) this many times more
    device: str = "auto"
    peak_size: int | None = None  # matmul side of the peak probe (bench.PeakProbe's default)
    plot: str | None = None  # PNG path
    seed: int = 0

    @classmethod
    def quick_config(cls) -> SizeConfig:
        """A smoke run for tests: the tiny preset, batches 2 and 4 at 16 and 32 pixels, one step a cell."""
        return cls(presets=("tiny",), batches=(2, 4), sizes=(16, 32), steps=1, warmup=1, peak_size=256)


def run_size(
    cfg: SizeConfig,
    log: Callable[[str], None] = print,
    progress: Callable[[int, int, str], None] | None = None,
) -> dict:
    """Time every cell; returns {"cells": [...], "cliffs": [...], "plot": path or None, ...}, JSON-able."""
    from ddpm_gui.bench import PeakProbe, device_sync
    from ddpm_gui.engine.device import pick_device

    dev = pick_device(cfg.device)
    sync = device_sync(dev)
    probe = PeakProbe(dev, cfg.peak_size, sync)
    cells: list[dict] = []
    todo = [(p, s, b) for p in cfg.presets for s in cfg.sizes for b in sorted(cfg.batches)]
    log(
        f"  scaling: training step time over batch {', '.join(map(str, sorted(cfg.batches)))} and image size "
        f"{', '.join(map(str, cfg.sizes))}, {cfg.steps} timed step(s) a cell after {cfg.warmup} warm-up, "
        f"on {dev}; the {probe.primary} matmul peak probed after every step"
    )
    data_cache: dict[int, object] = {}
    for i, (preset, size, batch) in enumerate(todo):
        if progress:
            progress(i, len(todo), f"scaling: {preset} {size}px batch {batch}")
        cell = _cell(cfg, dev, preset, size, batch, data_cache, sync, probe)
        cells.append(cell)
        _log_cell(cell, log)
    if progress:
        progress(len(todo), len(todo), "scaling: done")
    cliffs = find_cliffs(cells, cfg.cliff)
    for c in cliffs:
        log(f"  cliff: {c['what']}")
    if not cliffs:
        log(f"  no cliff (no neighbour more than {cfg.cliff:g}x slower per image)")
    res = {"device": str(dev), "peak_dtype": probe.primary, "cliff_factor": cfg.cliff, "cells": cells,
           "cliffs": cliffs, "plot": None}  # fmt: skip
    if cfg.plot:
        res["plot"] = plot_cells(cells, cliffs, cfg.plot, title=f"training step time per image on {dev}")
        log(f"  wrote {res['plot']}")
    return res


def _cell(cfg: SizeConfig, dev, preset, size, batch, data_cache, sync, probe) -> dict:
    """One cell timed, or the reason it could not be (a preset not installed, a size it cannot take, out of
    memory): a cell that fails is a finding, not the end of the section."""
    from ddpm_gui.bench import StudioStepper, interleave, studio_learner
    from ddpm_gui.data import load_data
    from ddpm_gui.engine.device import is_oom
    from ddpm_gui.errors import DDPMError
    from ddpm_gui.models.presets import flops_per_image, get_preset

    cell: dict = {"preset": preset, "image_size": size, "batch": batch}
    learner = None
    try:
        flops = flops_per_image(get_preset(preset), size)["train"]
        if size not in data_cache:
            data_cache[size] = load_data(f"builtin:{max(cfg.batches)}", image_size=size)
        spec = SimpleNamespace(data=f"builtin:{max(cfg.batches)}", image_size=size, preset=preset, batch_size=batch, device=cfg.device,
                               seed=cfg.seed)  # fmt: skip
        learner = studio_learner(spec, data_cache[size])
        stepper = StudioStepper(learner)
        stepper.steps(cfg.warmup)
        stepper.flush()

        def chunk() -> int:
            stepper.steps(1)
            stepper.flush()
            return batch

        timed = interleave({"step": chunk}, cfg.steps, sync, probe)
    except DDPMError as exc:
        return {**cell, "skipped": str(exc)}
    except Exception as exc:
        if not is_oom(exc):
            raise
        return {**cell, "skipped": "out of memory"}
    finally:
        del learner
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    s = statistics.median(timed["s_per_image"]["step"])
    peaks = timed["peak_tflops"][probe.primary]
    fr = [flops / t / p / 1e12 for t, p in zip(timed["s_per_image"]["step"], peaks, strict=True)]
    return {**cell, "ms_per_image": 1000 * s, "img_per_s": 1 / s, "ms_per_image_all":
            [1000 * t for t in timed["s_per_image"]["step"]], "peak_tflops": statistics.median(peaks),
            "peak_fraction": statistics.median(fr), "gflop_per_image": flops / 1e9}  # fmt: skip


def _log_cell(c: dict, log: Callable[[str], None]) -> None:
    head = f"    {c['preset']:15s} {c['image_size']:3d}px batch {c['batch']:4d}: "
    if "skipped" in c:
        log(head + f"skipped ({c['skipped']})")
        return
    log(
        head + f"{c['ms_per_image']:8.2f} ms/image ({c['img_per_s']:7.1f} img/s), "
        f"{100 * c['peak_fraction']:5.1f}% of the {c['peak_tflops']:.3f} TFLOP/s peak probed beside it"
    )


def find_cliffs(cells: list[dict], factor: float) -> list[dict]:
    """Neighbouring cells (the next larger batch at one size; the next larger size at one batch) where the
    time per image (per image and pixel, across sizes) grows more than `factor` times."""
    ok = {(c["preset"], c["image_size"], c["batch"]): c for c in cells if "skipped" not in c}
    out = []
    for preset in dict.fromkeys(c["preset"] for c in cells):
        sizes = sorted({k[1] for k in ok if k[0] == preset})
        batches = sorted({k[2] for k in ok if k[0] == preset})
        for s in sizes:
            row = [b for b in batches if (preset, s, b) in ok]
            for a, b in zip(row, row[1:], strict=False):
                r = ok[preset, s, b]["ms_per_image"] / ok[preset, s, a]["ms_per_image"]
                if r > factor:
                    out.append({"preset": preset, "axis": "batch", "image_size": s, "from": a, "to": b,
                                "ratio": r, "what": f"{preset} at {s}px: batch {a} -> {b}, time per image "
                                f"x{r:.2f} (more than {factor:g}x)"})  # fmt: skip
        for bt in batches:
            col = [s for s in sizes if (preset, s, bt) in ok]
            for a, b in zip(col, col[1:], strict=False):
                per_px = [ok[preset, s, bt]["ms_per_image"] / s**2 for s in (a, b)]
                r = per_px[1] / per_px[0]
                if r > factor:
                    out.append({"preset": preset, "axis": "size", "batch": bt, "from": a, "to": b,
                                "ratio": r, "what": f"{preset} at batch {bt}: {a}px -> {b}px, time per image "
                                f"and pixel x{r:.2f} (more than {factor:g}x)"})  # fmt: skip
    return out


_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (148, 103, 189), (140, 86, 75), (227, 119, 194)]


def plot_cells(cells: list[dict], cliffs: list[dict], path: str, title: str = "") -> str:
    """A PNG of the cells: ms per image (log scale) against the batch (log scale), a panel per image size, a
    line per preset, cliffs circled in red. Returns the path written."""
    import math

    from PIL import Image, ImageDraw, ImageFont

    good = [c for c in cells if "skipped" not in c]
    sizes = sorted({c["image_size"] for c in cells})
    batches = sorted({c["batch"] for c in cells})
    presets = list(dict.fromkeys(c["preset"] for c in cells))
    pw, ph, m = 420, 320, 80  # panel size, margin (room for the y labels)
    img = Image.new("RGB", (m + len(sizes) * (pw + m), ph + 3 * m + 20 * len(presets)), "white")
    d = ImageDraw.Draw(img)
    try:
        font = ImageFont.load_default(size=13)
    except TypeError:  # Pillow without FreeType
        font = ImageFont.load_default()
    ys = [c["ms_per_image"] for c in good] or [1.0]
    lo, hi = math.floor(math.log10(min(ys))), math.ceil(math.log10(max(ys)) + 1e-9)
    hi = max(hi, lo + 1)
    bx = [math.log2(b) for b in batches]
    span = max(bx[-1] - bx[0], 1)
    d.text((m, 10), title, fill="black", font=font)

    def xy(panel: int, batch: int, ms: float) -> tuple[float, float]:
        x0 = m + panel * (pw + m)
        x = x0 + 20 + (math.log2(batch) - bx[0]) / span * (pw - 40)
        y = m + ph - (math.log10(ms) - lo) / (hi - lo) * ph
        return x, y

    for p, s in enumerate(sizes):
        x0 = m + p * (pw + m)
        d.rectangle([x0, m, x0 + pw, m + ph], outline="black")
        d.text((x0 + pw / 2 - 40, m - 18), f"{s}x{s} images", fill="black", font=font)
        for k in range(lo, hi + 1):
            y = m + ph - (k - lo) / (hi - lo) * ph
            d.line([x0, y, x0 + pw, y], fill=(225, 225, 225))
            d.text((x0 - 70, y - 7), f"{10.0**k:g} ms", fill="black", font=font)
        for b in batches:
            x, _ = xy(p, b, 10.0**lo)
            d.text((x - 8, m + ph + 4), str(b), fill="black", font=font)
        d.text((x0 + pw / 2 - 20, m + ph + 20), "batch", fill="black", font=font)
        for j, name in enumerate(presets):
            pts = [xy(p, c["batch"], c["ms_per_image"]) for c in good if c["preset"] == name
                   and c["image_size"] == s]  # fmt: skip
            colour = _COLOURS[j % len(_COLOURS)]
            if len(pts) > 1:
                d.line(sorted(pts), fill=colour, width=2)
            for x, y in pts:
                d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
    for c in cliffs:
        s, b = (c["image_size"], c["to"]) if c["axis"] == "batch" else (c["to"], c["batch"])
        cell = next(x for x in good if (x["preset"], x["image_size"], x["batch"]) == (c["preset"], s, b))
        x, y = xy(sizes.index(s), b, cell["ms_per_image"])
        d.ellipse([x - 9, y - 9, x + 9, y + 9], outline=(220, 0, 0), width=2)
    for j, name in enumerate(presets):
        y = 2 * m + ph + 20 * j
        d.line([m, y + 7, m + 30, y + 7], fill=_COLOURS[j % len(_COLOURS)], width=3)
        d.text((m + 40, y), name, fill="black", font=font)
    import io

    from ddpm_gui.engine.checkpoint import atomic_write_bytes

    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return str(path)
