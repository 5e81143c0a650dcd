"""`ddpm-gui bench --sections busy`: the CPU thread count the app chooses against torch's default, on a
machine that other processes keep busy.

With 0, 1 and 2 competing CPU-bound processes (engine/load.py) running beside it, the section times
(a) DDPM Studio's training step (Learner.train_step, as in the `compare` section) and (b) a DDIM preview
(sample_frames), each with two thread counts:

- app: what the trainer sets, from the same chooser it uses (engine/device.py ThreadChooser with torch's
  count as the cap), re-checked before each of its timed runs as the trainer re-checks during a run;
- default: torch's own count when the process started (one thread per core).

The runs of the two alternate (app, default, app, default, ...) so that a change of load on a shared
machine hits both; the figures are medians, with the interquartile range of each and a bootstrap 95%
interval of the median ratio of neighbouring pairs. The verdict: the app's choice may be at most 5% slower
than torch's default.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

SLOWER_TOLERANCE = 0.05  # the app's choice may cost at most this share of the default's speed


@dataclass
class BusyConfig:
    loads: tuple[int, ...] = (0, 1, 2)  # competing CPU-bound processes
    preset: str = "tiny"  # the CPU recipe's model
    image_size: int = 32
    batch_size: int = 64
    data: str = "builtin:1024"
    train_steps: int = 2  # training steps per timed run
    sample_n: int = 16  # images of the DDIM preview
    sample_steps: int = 20
    reps: int = 5  # timed runs of each variant per load and task
    settle: float = 1.0  # seconds the chooser watches the load before its first choice
    seed: int = 0
    device: str = "cpu"  # thread counts are a CPU matter

    @classmethod
    def quick_config(cls) -> BusyConfig:
        """A smoke run for tests: the tiny preset at 16x16, batch 8, 2-step previews of 2 images."""
        return cls(
            image_size=16, batch_size=8, data="builtin:64", train_steps=1, sample_n=2, sample_steps=2,
            reps=2, settle=0.1,
        )  # fmt: skip


def run_busy(
    cfg: BusyConfig,
    default_threads: int | None = None,
    log: Callable[[str], None] = print,
    progress: Callable[[int, int, str], None] | None = None,
) -> dict:
    """Run the section; returns a JSON-able dict. `default_threads`: torch's count at process start (the
    caller may have changed it since; None: torch's count now). Torch's thread count is restored after,
    and the competing processes are ended however the call ends."""
    from ddpm_gui.bench import studio_learner
    from ddpm_gui.data import load_data
    from ddpm_gui.engine.device import usable_cpus
    from ddpm_gui.engine.load import CompetingLoad

    default = default_threads or torch.get_num_threads()
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(default)
        learner = studio_learner(cfg, load_data(cfg.data, image_size=cfg.image_size))
        bundle = learner.bundle()
        res: dict = {"default_threads": default, "usable_cpus": usable_cpus(), "loads": []}
        log(
            f"  busy machine: {cfg.preset} preset at {cfg.image_size}x{cfg.image_size} on the CPU, training "
            f"batch {cfg.batch_size} and a {cfg.sample_steps}-step DDIM preview of {cfg.sample_n} images;"
        )
        log(
            f"  the app's thread count against torch's default {default} ({usable_cpus()} usable cores), "
            f"medians of {cfg.reps} alternating runs [interquartile range]"
        )
        for n in cfg.loads:
            with CompetingLoad(n):
                entry = _measure_load(cfg, n, learner, bundle, default, progress)
            res["loads"].append(entry)
            _log_load(entry, cfg, default, log)
        return res
    finally:
        torch.set_num_threads(old)


def _measure_load(cfg: BusyConfig, n: int, learner, bundle, default: int, progress) -> dict:
    """Both tasks, both variants, with `n` competing processes already running."""
    from ddpm_gui.bench import StudioStepper
    from ddpm_gui.engine.device import ThreadChooser
    from ddpm_gui.engine.sampler import SampleConfig, sample_frames
    from ddpm_gui.engine.threads import fixed_sampling_threads

    phase = f"busy, {n} competing"
    total, done = 2 + 4 * cfg.reps, 0

    def tick(what: str) -> None:
        nonlocal done
        done += 1
        if progress:
            progress(done, total, f"{phase}: {what}")

    stepper = StudioStepper(learner)

    def train(seed: int) -> float:  # (the seed is the sampler's: training draws from its own)
        t0 = time.perf_counter()
        stepper.steps(cfg.train_steps)
        stepper.flush()
        return cfg.train_steps * learner.batch_size / (time.perf_counter() - t0)

    def sample(seed: int, steps: int = cfg.sample_steps) -> float:
        t0 = time.perf_counter()
        sc = SampleConfig(n=cfg.sample_n, sampler="ddim", steps=steps, every=10**9, seed=seed)
        # the variant's count, which the chain would otherwise choose for itself
        with fixed_sampling_threads(torch.get_num_threads()):
            for _ in sample_frames(bundle, sc):
                pass
        return cfg.sample_n / (time.perf_counter() - t0)

    load_start = _loadavg1()
    t0 = time.monotonic()
    chooser = ThreadChooser(0, cap=default)  # the trainer's call: auto, torch's count as the cap
    torch.set_num_threads(default)
    train(0)  # warm-up, while the chooser watches the load
    tick("warm-up")
    sample(0, steps=2)
    tick("warm-up")
    time.sleep(max(0.0, cfg.settle - (time.monotonic() - t0)))
    out = {"competing": n, "load_average_start": load_start}
    for task, fn in (("training", train), ("sampling", sample)):
        speeds: dict[str, list[float]] = {"app": [], "default": []}
        chosen: list[int] = []
        for r in range(cfg.reps):
            chosen.append(chooser.check())
            for variant, threads in (("app", chosen[-1]), ("default", default)):
                torch.set_num_threads(threads)
                speeds[variant].append(fn(seed=r))
                tick(f"{task} {variant}")
        out[task] = {"threads_app": chosen, "unit": "img/s", **compare(speeds["app"], speeds["default"])}
    out["load_average_end"] = _loadavg1()
    return out


def compare(app: list[float], default: list[float], seed: int = 0) -> dict:
    """Speeds (higher is faster) of the two variants, paired run by run: medians, interquartile ranges,
    the median of the paired ratios app/default with a bootstrap 95% interval, and the verdict."""
    ratios = np.array([a / d for a, d in zip(app, default, strict=True)])
    rng = np.random.default_rng(seed)
    boot = np.median(rng.choice(ratios, size=(2000, len(ratios)), replace=True), axis=1)
    ratio = float(np.median(ratios))
    return {
        "app": statistics.median(app),
        "default": statistics.median(default),
        "app_iqr": _iqr(app),
        "default_iqr": _iqr(default),
        "app_all": list(app),
        "default_all": list(default),
        "ratio": ratio,
        "ratio_ci95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
        "verdict": verdict(ratio),
    }


def verdict(ratio: float) -> str:
    """'ok' when the app's speed is at least (1 - SLOWER_TOLERANCE) of the default's, else by how much
    it is slower."""
    return "ok" if ratio >= 1 - SLOWER_TOLERANCE else f"slower by {100 * (1 - ratio):.0f}%"


# ----------------------------------------------------------------------------- intervals (every section)

# two-sided 95% quantiles of Student's t for 1..30 degrees of freedom (beyond: the normal's, corrected)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)  # fmt: skip


def t975(df: int) -> float:
    return _T975[df - 1] if df <= len(_T975) else 1.96 + 2.4 / df


def mean_ci(xs: list[float]) -> dict:
    """The mean and its 95% t-interval ([nan, nan] from fewer than two values)."""
    a = np.asarray(xs, dtype=float)
    m = float(a.mean())
    if len(a) < 2:
        return {"mean": m, "ci95": [float("nan")] * 2, "all": a.tolist()}
    h = t975(len(a) - 1) * float(a.std(ddof=1)) / len(a) ** 0.5
    return {"mean": m, "ci95": [m - h, m + h], "all": a.tolist()}


def ratio_ci(num: list[float], den: list[float]) -> dict:
    """Paired ratios num_i / den_i (one per round of interleaved chunks): their geometric mean with a 95%
    t-interval of the mean log ratio, and the verdict "no measurable difference" when it contains 1."""
    logs = np.log(np.asarray(num, dtype=float) / np.asarray(den, dtype=float))
    m = mean_ci(logs.tolist())
    ratio, ci = float(np.exp(m["mean"])), [float(np.exp(x)) for x in m["ci95"]]
    return {"ratio": ratio, "ci95": ci, "all": np.exp(logs).tolist(), "verdict": difference(ratio, ci)}


def difference(ratio: float, ci: list[float]) -> str:
    """A speed ratio's verdict from its interval."""
    lo, hi = ci
    if not (lo == lo and hi == hi):  # nan: one round
        return "one round: no interval, run more --iters"
    if lo <= 1 <= hi:
        return "no measurable difference"
    return f"{ratio:.2f}x faster" if lo > 1 else f"{1 / ratio:.2f}x slower"


def ci_text(ci: list[float], fmt: str = "{:.2f}") -> str:
    return " to ".join(fmt.format(x) for x in ci)


def pct_text(m: dict) -> str:
    return f"{100 * m['mean']:.1f}% ({ci_text([100 * x for x in m['ci95']], '{:.1f}')}%)"


def _iqr(xs: list[float]) -> list[float]:
    return [float(np.percentile(xs, 25)), float(np.percentile(xs, 75))]


def _log_load(e: dict, cfg: BusyConfig, default: int, log: Callable[[str], None]) -> None:
    n = e["competing"]
    log(
        f"    {n} competing process{'es' if n != 1 else ''} (load average {e['load_average_start']:.2f} at the start):"
    )
    for task, unit in (("training", "img/s"), ("sampling", "s")):
        d = e[task]
        if unit == "s":  # a preview's duration reads better than its images per second
            app, dflt = cfg.sample_n / d["app"], cfg.sample_n / d["default"]
            app_r = [cfg.sample_n / x for x in reversed(d["app_iqr"])]
            dflt_r = [cfg.sample_n / x for x in reversed(d["default_iqr"])]
        else:
            app, dflt, app_r, dflt_r = d["app"], d["default"], d["app_iqr"], d["default_iqr"]
        lo, hi = min(d["threads_app"]), max(d["threads_app"])
        threads = f"{lo} thread{'s' if hi > 1 else ''}" if lo == hi else f"{lo}-{hi} threads"
        same = "; the same count, so this is the noise" if lo == hi == default else ""
        ci_lo, ci_hi = d["ratio_ci95"]
        log(
            f"      {task:8s}  app ({threads}) {app:8.2f} {unit} [{app_r[0]:.2f}-{app_r[1]:.2f}]  "
            f"default ({default}) {dflt:8.2f} {unit} [{dflt_r[0]:.2f}-{dflt_r[1]:.2f}]  "
            f"speed app/default {d['ratio']:.2f}x (95% CI {ci_lo:.2f}-{ci_hi:.2f}): {d['verdict']}{same}"
        )


def _loadavg1() -> float:
    from ddpm_gui.bench import load_average

    return load_average()[0]
