"""`ddpm-gui bench --sections samplers`: quality and time of every sampler at a few step counts.

Each sampler of core.spec.SAMPLERS that takes a number of steps is run at every count of `steps` (10, 20,
50, 100); DDPM, which visits every timestep, once. Each cell is `ddpm-gui eval` (the same classifier judge,
the same seed, so the same starting noise for every cell) on the model given (default: the demo model that
ships with the app). The table says, for each cell, whether its accuracy is within `margin` (2 points) of
the full DDPM chain's and how its Fréchet distance compares.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ddpm_gui.core.spec import SAMPLERS


@dataclass
class SamplersBench:
    """The samplers section's settings."""

    model: str = "demo"  # a run folder, checkpoint, diffusers folder, or "demo"
    samplers: tuple[str, ...] = ()  # () = every sampler of core.spec.SAMPLERS
    steps: tuple[int, ...] = (10, 20, 50, 100)  # for the samplers that take a number of steps
    n: int = 100  # samples per cell
    guidance: float = 3.0  # classifier-free guidance scale (conditional models)
    seed: int = 0
    device: str = "auto"
    margin: float = 0.02  # "within 2 points" of the full DDPM chain's accuracy


def cells(cfg: SamplersBench) -> list[tuple[str, int | None]]:
    """(sampler, steps) of every cell, the full DDPM chain first (steps None: every timestep)."""
    names = cfg.samplers or tuple(SAMPLERS)
    out: list[tuple[str, int | None]] = [("ddpm", None)] if "ddpm" in names else []
    for name in names:
        if SAMPLERS[name].strided:
            out += [(name, s) for s in cfg.steps]
        elif name != "ddpm":
            out.append((name, None))
    return out


def run_samplers(
    cfg: SamplersBench, log: Callable[[str], None], progress: Callable[[int, int, str], None] | None = None
) -> dict:
    from ddpm_gui.engine.evaluate import evaluate_run

    source = cfg.model
    if source == "demo":
        from ddpm_gui.engine.demo import demo_path

        source = str(demo_path())
    todo = cells(cfg)
    log(f"samplers: {len(todo)} cells of {cfg.n} samples each, guidance {cfg.guidance:g}, seed {cfg.seed}")
    rows = []
    for i, (name, steps) in enumerate(todo):
        if progress is not None:
            progress(i, len(todo), f"samplers: {name} {steps or 'all'} steps")
        res = evaluate_run(
            source, n=cfg.n, sampler=name, steps=steps or 50, guidance=cfg.guidance, seed=cfg.seed,
            device=cfg.device,
        )  # fmt: skip
        rows.append(
            {
                "sampler": name,
                "steps": res.sampling_steps,
                "accuracy": res.sample_accuracy,
                "frechet_distance": res.frechet_distance,
                "frechet_distance_real": res.frechet_distance_real,
                "seconds": res.sample_seconds,
            }
        )
        log("  " + _row_text(rows[-1], rows[0]))
    ref = rows[0] if rows and rows[0]["sampler"] == "ddpm" else None
    for r in rows:
        r["within_margin_of_ddpm"] = None if ref is None else r["accuracy"] >= ref["accuracy"] - cfg.margin
    if progress is not None:
        progress(len(todo), len(todo), "samplers: done")
    return {"model": source, "n": cfg.n, "guidance": cfg.guidance, "seed": cfg.seed, "rows": rows}


def _row_text(r: dict, ref: dict) -> str:
    text = (
        f"{r['sampler']:>8} {r['steps']:>4} steps: accuracy {100 * r['accuracy']:5.1f}%, Fréchet distance "
        f"{r['frechet_distance']:.2f}, {r['seconds']:.1f} s"
    )
    if r is not ref and ref["sampler"] == "ddpm":
        diff = 100 * (r["accuracy"] - ref["accuracy"])
        text += f" ({diff:+.1f} points against DDPM's {ref['steps']} steps, {ref['seconds'] / r['seconds']:.1f}x faster)"
    return text
