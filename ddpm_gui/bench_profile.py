"""`ddpm-gui bench --sections profile`: where a training step's time goes, and A/B tests of what might
make it faster.

torch.profiler records DDPM Studio's real training step (Learner.train_step, after warm-up) at the thread
count the app chooses (engine/device.py ThreadChooser; `--threads` fixes it), and a DDIM sampling step at
two batch sizes. Each operator's self time goes to one category: a scope it runs in decides first
(the optimizer's step and zero_grad and the gradient clipping: "optimizer"; the EMA's lerp: "EMA"; the
batch's draw, noise and noising: "data/noise"), then the innermost operator whose name says what it is
(convolution, GroupNorm, attention, linear/matmul, activation), else "other" (element-wise arithmetic,
copies, the loss, the per-timestep statistics). On CUDA the time is the kernels' (device time), on the CPU
the operators' own CPU time.

The A/B part (`ab`) times the default trainer against one changed copy, in interleaved chunks with the
matmul peak probed between them (bench.interleave), and reports the speed ratio with its 95% interval.
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import SimpleNamespace

import torch

TRAIN_CATEGORIES = ("convolution", "GroupNorm", "attention", "linear/matmul", "activation", "optimizer",
                    "EMA", "data/noise", "other")  # fmt: skip
# scopes first (any enclosing event), then operators (the innermost that matches); lower-case substrings
_SCOPES = (
    ("optimizer", ("optimizer.step", "optimizer.zero_grad", "_foreach_norm", "_foreach_mul", "vector_norm",
                   "fused_adam")),
    ("EMA", ("_foreach_lerp",)),
    ("data/noise", ("bench: data/noise",)),
)  # fmt: skip
_OPS = (
    ("convolution", ("conv",)),
    ("GroupNorm", ("group_norm", "groupnorm")),
    ("attention", ("scaled_dot_product", "attention", "softmax", "bmm")),
    ("linear/matmul", ("addmm", "aten::mm", "mmbackward", "aten::linear", "aten::matmul")),
    ("activation", ("silu", "gelu", "sigmoid", "relu", "swish")),
)
AB_VARIANTS = ("channels_last", "foreach_adamw", "no_ema", "threads=N", "compile")


@dataclass
class ProfileConfig:
    preset: str = "tutorial"
    batch_size: int = 128  # the app's default batch (TrainConfig)
    image_size: int = 32
    steps: int = 2  # profiled training steps, after one warm-up
    sample_batches: tuple[int, ...] = (16, 64)
    sample_steps: int = 3  # profiled DDIM steps at each sampling batch
    ab: tuple[str, ...] = ()  # of AB_VARIANTS
    ab_rounds: int = 3  # interleaved rounds of each A/B (one step of each per round)
    device: str = "auto"
    peak_size: int | None = None
    seed: int = 0

    @classmethod
    def quick_config(cls) -> ProfileConfig:
        return cls(preset="tiny", batch_size=4, image_size=16, steps=1, sample_batches=(2,), sample_steps=1,
                   ab_rounds=2, peak_size=256)  # fmt: skip


def categorise(events, device_time: bool = False) -> dict[str, float]:
    """Self time in ms by category of profiler events (torch.profiler's `prof.events()`)."""
    out = dict.fromkeys(TRAIN_CATEGORIES, 0.0)
    for e in events:
        us = e.self_device_time_total if device_time else e.self_cpu_time_total
        if us:
            out[category(e)] += us / 1000
    return out


def category(event) -> str:
    chain = []
    e = event
    while e is not None:
        chain.append(e.name.lower())
        e = e.cpu_parent
    for cat, keys in _SCOPES:
        if any(k in name for name in chain for k in keys):
            return cat
    for name in chain:  # innermost first
        for cat, keys in _OPS:
            if any(k in name for k in keys):
                return cat
    return "other"


@contextlib.contextmanager
def _scoped_data(learner) -> Iterator[None]:
    """The learner's batch draw and noising inside a "bench: data/noise" scope, for the profile only."""
    from torch.profiler import record_function

    from ddpm_gui.engine import learner as mod

    def scoped(fn):
        def run(*args, **kwargs):
            with record_function("bench: data/noise"):
                return fn(*args, **kwargs)

        return run

    saved = mod.q_sample, mod.training_target
    learner._draw_batch = scoped(learner._draw_batch)
    mod.q_sample, mod.training_target = scoped(mod.q_sample), scoped(mod.training_target)
    try:
        yield
    finally:
        mod.q_sample, mod.training_target = saved
        del learner._draw_batch


def _profile(fn: Callable[[], None], dev: torch.device) -> tuple[dict[str, float], float]:
    """Runs `fn` under torch.profiler: (ms by category, wall ms)."""
    import time

    from torch.profiler import ProfilerActivity, profile

    from ddpm_gui.bench import device_sync

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    sync = device_sync(dev)
    with profile(activities=acts) as prof:
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        wall = (time.perf_counter() - t0) * 1000
    return categorise(prof.events(), device_time=dev.type == "cuda"), wall


def app_threads(settle: float = 1.0) -> int:
    """The CPU thread count the trainer would choose now (auto, torch's count as the cap)."""
    import time

    from ddpm_gui.engine.device import ThreadChooser

    chooser = ThreadChooser(0, cap=torch.get_num_threads())
    time.sleep(settle)  # it measures what other processes used since it was made
    return chooser.check()


def run_profile(
    cfg: ProfileConfig,
    threads: int | None = None,
    log: Callable[[str], None] = print,
    progress: Callable[[int, int, str], None] | None = None,
) -> dict:
    """The section; `threads`: a fixed CPU thread count (None: the app's choice). JSON-able result."""
    from ddpm_gui.bench import StudioStepper, studio_learner
    from ddpm_gui.data import load_data
    from ddpm_gui.engine.device import pick_device

    dev = pick_device(cfg.device)
    old = torch.get_num_threads()
    n_threads = threads or (app_threads() if dev.type == "cpu" else old)
    torch.set_num_threads(n_threads)
    try:
        data = load_data(f"builtin:{max(256, cfg.batch_size)}", image_size=cfg.image_size)
        learner = studio_learner(_spec(cfg, data), data)
        stepper = StudioStepper(learner)
        stepper.steps(1)
        stepper.flush()
        res: dict = {"threads": n_threads, "device": str(dev), "preset": cfg.preset,
                     "batch_size": cfg.batch_size, "image_size": cfg.image_size}  # fmt: skip
        how = "given" if threads else "the app's choice"
        log(
            f"  profile: {cfg.preset} at {cfg.image_size}x{cfg.image_size} on {dev}, {n_threads} thread(s) "
            f"({how}); ms per step by category"
        )
        if progress:
            progress(0, 2, "profile: training step")

        def train() -> None:
            stepper.steps(cfg.steps)
            stepper.flush()

        with _scoped_data(learner):
            cats, wall = _profile(train, dev)
        res["train"] = _report(f"training step, batch {cfg.batch_size}", cats, wall, cfg.steps, log)
        if progress:
            progress(1, 2, "profile: sampling")
        res["sampling"] = {}
        for b in cfg.sample_batches:
            res["sampling"][str(b)] = _profile_sampling(learner.bundle(), b, cfg.sample_steps, dev, log)
        if progress:
            progress(2, 2, "profile: done")
        if cfg.ab:
            res["ab"] = run_ab(cfg, data, dev, n_threads, log, progress)
        return res
    finally:
        torch.set_num_threads(old)


def _spec(cfg: ProfileConfig, data) -> SimpleNamespace:
    return SimpleNamespace(data=f"builtin:{len(data)}", image_size=cfg.image_size, preset=cfg.preset,
                           batch_size=cfg.batch_size, device=cfg.device, seed=cfg.seed)  # fmt: skip


def _profile_sampling(bundle, batch: int, steps: int, dev, log) -> dict:
    from ddpm_gui.engine.sampler import SampleConfig, sample_frames

    def run(k: int) -> None:
        for _ in sample_frames(bundle, SampleConfig(n=batch, sampler="ddim", steps=k, every=10**9)):
            pass

    run(1)  # warm-up at this batch size
    cats, wall = _profile(lambda: run(steps), dev)
    return _report(f"sampling step, batch {batch}", cats, wall, steps, log)


def _report(what: str, cats: dict[str, float], wall: float, steps: int, log) -> dict:
    total = sum(cats.values())
    per = {k: v / steps for k, v in cats.items() if v > 0}
    log(f"    {what}: {wall / steps:.1f} ms wall per step under the profiler, {total / steps:.1f} ms counted")
    for k, v in sorted(per.items(), key=lambda kv: -kv[1]):
        log(f"      {k:14s} {v:9.2f} ms  {100 * v * steps / total:5.1f}% of the counted time")
    log(
        f"      {'(no operator)':14s} {(wall - total) / steps:9.2f} ms  Python between operators, the profiler"
    )
    return {"wall_ms_per_step": wall / steps, "ms_per_step": per, "steps": steps}


def _apply(variant: str, learner) -> int | None:
    """Changes `learner` (the B side) as `variant` says; returns B's thread count for threads=N."""
    if variant == "channels_last":
        learner.model.to(memory_format=torch.channels_last)
    elif variant == "foreach_adamw":
        g = learner.optim.param_groups[0]
        learner.optim = torch.optim.AdamW(learner.model.parameters(), lr=g["lr"], weight_decay=g["weight_decay"],
                                          foreach=True)  # fmt: skip
    elif variant == "no_ema":
        learner.ema = None
    elif variant == "compile":
        learner.model = torch.compile(learner.model)
    elif variant.startswith("threads="):
        return int(variant.split("=", 1)[1])
    return None


def check_ab(names: tuple[str, ...]) -> None:
    from ddpm_gui.errors import ConfigError

    for n in names:
        ok = n in AB_VARIANTS or (
            n.startswith("threads=") and n.split("=", 1)[1].isdigit() and int(n[8:]) > 0
        )
        if not ok:
            raise ConfigError(
                f"Unknown A/B variant {n!r}: choose from {', '.join(AB_VARIANTS)}, comma-separated."
            )


def run_ab(cfg: ProfileConfig, data, dev, threads: int, log, progress=None) -> dict:
    """Each variant against the default trainer: interleaved chunks of one step each with the peak probed
    between rounds; B's speed ratio with its 95% interval and each side's share of the peak."""
    from ddpm_gui.bench import PeakProbe, StudioStepper, device_sync, interleave, studio_learner
    from ddpm_gui.bench_busy import ci_text, mean_ci, pct_text, ratio_ci
    from ddpm_gui.models.presets import flops_per_image, get_preset

    check_ab(cfg.ab)
    sync = device_sync(dev)
    probe = PeakProbe(dev, cfg.peak_size, sync)
    flops = flops_per_image(get_preset(cfg.preset), cfg.image_size)["train"]
    out: dict = {}
    for i, variant in enumerate(cfg.ab):
        if progress:
            progress(i, len(cfg.ab), f"A/B: {variant}")
        sides = [studio_learner(_spec(cfg, data), data) for _ in range(2)]
        counts = [threads, _apply(variant, sides[1]) or threads]
        chunks = {
            k: _chunk(StudioStepper(s), n, cfg.batch_size)
            for k, s, n in zip("AB", sides, counts, strict=True)
        }
        for run in chunks.values():
            run()  # warm-up (compile, allocator, caches)
        try:
            timed = interleave(chunks, cfg.ab_rounds, sync, probe)
        finally:
            torch.set_num_threads(threads)
        ta, tb = timed["s_per_image"]["A"], timed["s_per_image"]["B"]
        peaks = timed["peak_tflops"][probe.primary]
        r = ratio_ci(ta, tb)  # B's speed over A's
        share = {k: mean_ci([flops / t / p / 1e12 for t, p in zip(ts, peaks, strict=True)])
                 for k, ts in (("A", ta), ("B", tb))}  # fmt: skip
        out[variant] = {"img_per_s_A": 1 / statistics.median(ta), "img_per_s_B": 1 / statistics.median(tb),
                        "speed_ratio_B_over_A": r, "peak_share": share,
                        "peak_tflops_all": peaks, "threads": counts}  # fmt: skip
        log(
            f"    A/B {variant}: default {1 / statistics.median(ta):.1f} img/s ({pct_text(share['A'])} of peak), "
            f"{variant} {1 / statistics.median(tb):.1f} img/s ({pct_text(share['B'])}); {variant}/default "
            f"{r['ratio']:.3f}x (95% CI {ci_text(r['ci95'], '{:.3f}')}): {r['verdict']}; peak "
            f"{statistics.median(peaks):.3f} TFLOP/s [{min(peaks):.3f}-{max(peaks):.3f}]"
        )
        del sides, chunks
    if progress:
        progress(len(cfg.ab), len(cfg.ab), "A/B: done")
    return out


def _chunk(stepper, threads: int, batch: int) -> Callable[[], int]:
    """One training step of `stepper` with `threads` CPU threads, the loss read back."""

    def run() -> int:
        torch.set_num_threads(threads)
        stepper.steps(1)
        stepper.flush()
        return batch

    return run


def time_variants(cfg, data, log, progress) -> dict:
    """The compare section's --variants: studio step img/s with channels_last and with torch.compile (each
    in a fresh learner); an error is recorded, not raised."""
    import time

    from ddpm_gui.bench import StudioStepper, device_sync, studio_learner

    out: dict = {}
    for i, name in enumerate(("channels_last", "compile")):
        progress(i, 2, f"variants: {name}")
        try:
            learner = studio_learner(cfg, data)
            _apply(name, learner)
            sync = device_sync(learner.device)
            st = StudioStepper(learner)
            st.steps(max(cfg.warmup, 2))
            st.flush()
            times = []
            for _ in range(cfg.iters):
                sync()
                t0 = time.perf_counter()
                st.steps(1)
                st.flush()
                sync()
                times.append(time.perf_counter() - t0)
            rate = cfg.batch_size / statistics.median(times)
            out[name] = rate
            log(f"  variant {name}: {rate:.1f} img/s")
        except Exception as exc:  # a variant that fails is a finding, not a crash
            out[name] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            log(f"  variant {name}: {out[name]}")
    progress(2, 2, "variants: done")
    return out
