"""Class accuracy against minutes of training for one or more recipes (default: quick-cpu and 3min-cpu), in
one plot.

    python scripts/recipe_curve.py --out runs/recipe-curve         # writes docs/img/recipe-curve.png

Each recipe trains once, as a person pressing Start would (`ddpm-gui train --recipe R`: its own settings,
previews included), except that a checkpoint is kept every --every steps and at the end. A checkpoint's
minutes are the time from the start of the training process (torch imported, data generated: all of it
counts) to the step it holds, read from the run's metrics.jsonl. Then every checkpoint is scored by the
default quality check, `ddpm-gui eval` (full DDPM chain; --n samples, seed 0) at each --guidance scale (default:
1, plain conditional sampling, and 3, the Sample tab's default; one line each). The trainings run
one after another, never side by side (a shared CPU would time both wrongly); the load average at the start
and end of each is recorded beside its points in OUT/curve.json. A rerun reuses finished runs and scores only
what is not scored yet; --plot-only redraws the plot from OUT/curve.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parent.parent
COLORS = [(214, 39, 40), (31, 119, 180), (44, 160, 44), (148, 103, 189)]


def ddpm_gui(*args: str) -> list[str]:
    return [sys.executable, "-m", "ddpm_gui", *args]


def train(recipe: str, run: Path, every: int, steps: int | None) -> dict:
    """Train `recipe` into `run` (skipped when it finished before); returns {start, loads, wall_s}."""
    info_path = run / "curve-train.json"
    if info_path.is_file():
        return json.loads(info_path.read_text())
    extra = ["--steps", str(steps)] if steps else []
    cmd = ddpm_gui("train", "--recipe", recipe, "--out", str(run), "--checkpoint-every", str(every),
                   "--checkpoint-minutes", "0", "--keep", "100000", *extra)  # fmt: skip
    load0 = os.getloadavg()[0]
    start = time.time()
    print(f"[{recipe}] {' '.join(cmd[2:])} (load average {load0:.1f})", flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    info = {
        "start": start,
        "wall_s": time.time() - start,
        "load_start": load0,
        "load_end": os.getloadavg()[0],
    }
    info_path.write_text(json.dumps(info, indent=1))
    return info


def step_times(run: Path) -> dict[int, float]:
    """step -> the time it was logged (metrics.jsonl)."""
    out = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if isinstance(rec.get("step"), int) and isinstance(rec.get("time"), float):
            out[rec["step"]] = rec["time"]
    return out


def checkpoints(run: Path) -> list[tuple[int, Path]]:
    files = sorted((run / "checkpoints").glob("step_*.safetensors"))
    return [(int(p.stem.split("_")[1]), p) for p in files]


def score(ckpt: Path, n: int, seed: int, guidance: float) -> dict:
    """`ddpm-gui eval` of one checkpoint (cached beside it)."""
    out = ckpt.with_suffix(f".eval-n{n}-s{seed}-g{guidance:g}.json")
    if not out.is_file():
        cmd = ddpm_gui("eval", "--checkpoint", str(ckpt), "--n", str(n), "--seed", str(seed), "--guidance",
                       str(guidance), "--json", str(out), "--no-record")  # fmt: skip
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def curves_of(
    recipe: str, out: Path, every: int, steps: int | None, n: int, seed: int, guidance: list[float]
):
    """One curve per guidance scale of `recipe`'s run (trained here unless it finished before)."""
    run = out / recipe
    info = train(recipe, run, every, steps)
    times = step_times(run)
    found = []
    for g in guidance:
        points = []
        for step, ckpt in checkpoints(run):
            res = score(ckpt, n, seed, g)
            t = times.get(step, ckpt.stat().st_mtime)
            acc = res.get("accuracy", res["recognisable"])
            points.append({"step": step, "minutes": (t - info["start"]) / 60, "accuracy": acc,
                           "frechet_distance": res["frechet_distance"]})  # fmt: skip
            print(f"[{recipe}] step {step}: {points[-1]['minutes']:.2f} min, guidance {g:g}: "
                  f"accuracy {100 * acc:.1f}%", flush=True)  # fmt: skip
        found.append({"recipe": recipe, "guidance": g, **info, "eval": f"--n {n} --seed {seed} --guidance {g:g}",
                      "points": points})  # fmt: skip
    return found


def plot(curves: list[dict], png: Path, target: float = 0.9, size=(900, 560)) -> None:
    """Accuracy (%) against minutes: a colour per recipe, a thick line for its highest guidance scale and thin
    ones for the others, with the target as a dashed line and 3 minutes as a dotted one."""
    w, h = size
    left, right, top, bottom = 70, 30, 40, 60
    xmax = max([3.0] + [p["minutes"] for c in curves for p in c["points"]])
    xmax = float(int(xmax) + 1)
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=14)

    def xy(minutes: float, acc: float) -> tuple[float, float]:
        return (left + (w - left - right) * minutes / xmax, top + (h - top - bottom) * (1 - acc))

    xstep = 1 if xmax <= 15 else 5
    for m in range(0, int(xmax) + 1, xstep):
        d.line([xy(m, 0), xy(m, 1)], fill=(225, 225, 225))
        d.text((xy(m, 0)[0], h - bottom + 8), str(m), fill="black", font=font, anchor="mt")
    for pct in range(0, 101, 10):
        d.line([xy(0, pct / 100), xy(xmax, pct / 100)], fill=(225, 225, 225))
        d.text((left - 8, xy(0, pct / 100)[1]), f"{pct}%", fill="black", font=font, anchor="rm")
    ty = xy(0, target)[1]
    for x in range(left, w - right, 12):
        d.line([(x, ty), (x + 6, ty)], fill=(90, 90, 90), width=2)
    d.rectangle([xy(0, 1), xy(xmax, 0)], outline="black")
    d.text(
        (w / 2, h - 22), "minutes since Start (training process start)", fill="black", font=font, anchor="mm"
    )
    d.text((left, 14), "class accuracy of samples (ddpm-gui eval)", fill="black", font=font, anchor="lm")
    x3 = xy(3.0, 0)[0]
    for y in range(top, h - bottom, 8):
        d.line([(x3, y), (x3, y + 2)], fill=(90, 90, 90), width=2)
    recipes = list(dict.fromkeys(c["recipe"] for c in curves))
    top_g = {r: max(c.get("guidance", 1.0) for c in curves if c["recipe"] == r) for r in recipes}
    for i, c in enumerate(curves):
        color = COLORS[recipes.index(c["recipe"]) % len(COLORS)]
        g = c.get("guidance", 1.0)
        width, r = (3, 4) if g == top_g[c["recipe"]] else (1, 3)
        pts = [xy(p["minutes"], p["accuracy"]) for p in c["points"]]
        if len(pts) > 1:
            d.line(pts, fill=color, width=width)
        for x, y in pts:
            d.ellipse([x - r, y - r, x + r, y + r], fill=color if width > 1 else "white", outline=color)
        ly = h - bottom - 14 - 22 * (len(curves) - 1 - i)
        d.line([(w - right - 400, ly), (w - right - 370, ly)], fill=color, width=width)
        load = f" (load average {c['load_start']:.1f}-{c['load_end']:.1f})" if "load_start" in c else ""
        text = f"{c['recipe']}, guidance {g:g}{load}"
        d.text((w - right - 362, ly), text, fill="black", font=font, anchor="lm")
    png.parent.mkdir(parents=True, exist_ok=True)
    img.save(png)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "recipe-curve", help="folder of the runs")
    p.add_argument("--recipes", nargs="+", default=["quick-cpu", "3min-cpu"])
    p.add_argument("--guidance", nargs="+", type=float, default=[1.0, 3.0], help="guidance scales to score")
    p.add_argument("--every", type=int, default=250, help="a checkpoint every N steps")
    p.add_argument("--steps", type=int, default=None, help="train this many steps (default: each recipe's)")
    p.add_argument("--n", type=int, default=200, help="samples per eval")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--png", type=Path, default=ROOT / "docs" / "img" / "recipe-curve.png")
    p.add_argument("--plot-only", action="store_true", help="redraw from OUT/curve.json")
    a = p.parse_args(argv)
    data = a.out / "curve.json"
    if a.plot_only:
        curves = json.loads(data.read_text())
    else:
        a.out.mkdir(parents=True, exist_ok=True)
        for r in a.recipes:  # every training first, back to back, so that no scoring shares the CPU with one
            train(r, a.out / r, a.every, a.steps)
        curves = [
            c for r in a.recipes for c in curves_of(r, a.out, a.every, a.steps, a.n, a.seed, a.guidance)
        ]
        data.write_text(json.dumps(curves, indent=1))
    plot(curves, a.png)
    print(f"wrote {a.png} and {data}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
