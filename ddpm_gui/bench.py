"""`ddpm-gui bench`: DDPM Studio's training and sampling speed against the tutorial's own loop.

In one process, on the same model preset, batch and device:

(a) the tutorial's loop, re-implemented faithfully: for each batch, 128 PIL images are taken from a
    datasets-like list (`dataset[idx]['img']`), each converted by the tutorial's `img_to_tensor`
    (numpy -> float64 tensor) and copied to the device on its own, `torch.cat`-ed, noised in float64 by
    its `q_xt_x0`, `unet(xt.float(), t)`, MSE, `loss.item()` every step, AdamW(lr=3e-4);
(b) DDPM Studio's trainer: the real `Learner.train_step` after `Learner.setup` (dataset on the device
    as uint8, one gather per batch, EMA, gradient clipping, bf16 autocast on CUDA, fused AdamW on CUDA),
    reading the loss every `log_every` steps as the Trainer does.

Both get warm-up steps first; the timed steps of (a) and (b) alternate, so that a change of load on a
shared machine hits both alike; the figures are medians. Then: FLOPs per image (torch's FlopCounterMode),
achieved TFLOP/s, a matmul peak measured in the same run (bf16 on CUDA, fp32 on the CPU) and the fraction
of it reached, sampling time for the full DDPM chain at several batch sizes, and peak memory.

The tutorial's list holds decoded PIL images, so (a) skips the PNG decode that `datasets` does on every
`dataset[idx]` access: the tutorial measured here is, if anything, faster than the real one.

All of the above is the `compare` section; the `busy` section (bench_busy.py) times the app's CPU thread
count against torch's default while other processes compete for the cores.
"""

from __future__ import annotations

import dataclasses
import platform
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ddpm_gui import __version__
from ddpm_gui.bench_busy import BusyConfig


@dataclass
class BenchConfig:
    preset: str = "tutorial"
    batch_size: int = 128
    image_size: int = 32
    iters: int = 5  # timed training steps of each loop (alternating)
    warmup: int = 2  # untimed steps of each loop first
    device: str = "auto"
    data: str = "builtin"  # the studio trainer holds all of it on the device, as a real run does
    sample_batches: tuple[int, ...] = (1, 16, 64)
    sample_repeats: int = 1  # timed sampling runs per batch size (median)
    sample_mode: str = "auto"  # accel mode for sampling: eager | auto | cuda-graph | compile
    skip_sampling: bool = False
    ddim_steps: int = 20  # also time a DDIM preview of this many steps at batch 16 (0: skip)
    variants: bool = False  # also time studio steps with channels_last and torch.compile
    peak_size: int | None = None  # matmul side for the peak measurement (default: 8192 CUDA, 2048 CPU)
    threads: int | None = None  # torch intra-op threads for the run (None: leave torch's setting)
    quick: bool = False
    seed: int = 0
    sections: tuple[str, ...] = ("compare",)  # of SECTIONS
    busy: BusyConfig = field(default_factory=BusyConfig)  # the busy section's sizes

    @classmethod
    def quick_config(cls, device: str = "cpu") -> BenchConfig:
        """A smoke run for tests: tiny preset, 16x16, batch 16, a few steps; seconds, not minutes."""
        return cls(
            preset="tiny",
            batch_size=16,
            image_size=16,
            iters=3,
            warmup=1,
            device=device,
            data="builtin:256",
            sample_batches=(1, 2),
            ddim_steps=5,
            peak_size=512,
            threads=1,
            quick=True,
            busy=BusyConfig.quick_config(),
        )


# ----------------------------------------------------------------------------- the tutorial, verbatim


def img_to_tensor(im):
    """The tutorial's conversion: PIL -> numpy -> float64 tensor (1, 3, H, W) in [-1, 1]."""
    return torch.tensor(np.array(im.convert("RGB")) / 255).permute(2, 0, 1).unsqueeze(0) * 2 - 1


def gather(consts: torch.Tensor, t: torch.Tensor):
    c = consts.gather(-1, t)
    return c.reshape(-1, 1, 1, 1)


class TutorialLoop:
    """The article's training loop, one step per call; the model is built by the caller."""

    def __init__(
        self,
        unet: torch.nn.Module,
        dataset: list[dict],
        device: torch.device,
        batch_size: int = 128,
        n_steps: int = 100,
    ):
        self.unet = unet
        self.dataset = dataset
        self.device = device
        self.batch_size = batch_size
        self.n_steps = n_steps
        self.beta = torch.linspace(0.0001, 0.04, n_steps).to(device)
        self.alpha = 1.0 - self.beta
        self.alpha_bar = torch.cumprod(self.alpha, dim=0)
        self.optim = torch.optim.AdamW(unet.parameters(), lr=3e-4)
        self.losses: list[float] = []
        self.i = 0

    def q_xt_x0(self, x0, t):
        mean = gather(self.alpha_bar, t) ** 0.5 * x0
        var = 1 - gather(self.alpha_bar, t)
        eps = torch.randn_like(x0).to(x0.device)
        return mean + (var**0.5) * eps, eps

    def step(self) -> None:
        bs, dev = self.batch_size, self.device
        if self.i + bs > len(self.dataset):
            self.i = 0
        i = self.i
        self.i += bs
        ims = [self.dataset[idx]["img"] for idx in range(i, i + bs)]
        tims = [img_to_tensor(im).to(dev) for im in ims]  # the tutorial: .cuda() per image
        x0 = torch.cat(tims)
        t = torch.randint(0, self.n_steps, (bs,), dtype=torch.long).to(dev)
        xt, noise = self.q_xt_x0(x0, t)
        pred_noise = self.unet(xt.float(), t)
        loss = F.mse_loss(noise.float(), pred_noise)
        self.losses.append(loss.item())
        self.optim.zero_grad()
        loss.backward()
        self.optim.step()


def tutorial_dataset(images: np.ndarray) -> list[dict]:
    """A datasets-like list: dataset[idx]['img'] is a PIL image."""
    from PIL import Image

    return [{"img": Image.fromarray(im)} for im in images]


# ----------------------------------------------------------------------------- measuring


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _reset_peak(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)


def _peak_mb(dev: torch.device) -> float:
    """CUDA: the most memory allocated since the last reset; CPU: the process's peak RSS so far."""
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / 2**20 if platform.system() == "Darwin" else rss / 2**10


def matmul_peak_tflops(
    dev: torch.device, size: int | None = None, dtype: torch.dtype | None = None, iters: int | None = None
) -> tuple[float, str]:
    """The device's dense matmul throughput measured now: (TFLOP/s, dtype name). bf16 on CUDA (the
    trainer's autocast dtype), fp32 on the CPU (the trainer's CPU dtype). Median of timed runs."""
    cuda = dev.type == "cuda"
    dtype = dtype or (torch.bfloat16 if cuda else torch.float32)
    n = size or (8192 if cuda else 2048)
    iters = iters or (20 if cuda else 3)
    g = torch.Generator(device=dev).manual_seed(0)
    a = torch.randn((n, n), device=dev, dtype=dtype, generator=g)
    b = torch.randn((n, n), device=dev, dtype=dtype, generator=g)
    for _ in range(2 if cuda else 1):
        a @ b
    _sync(dev)
    times = []
    if cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        for _ in range(iters):
            start.record()
            a @ b
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
    else:
        for _ in range(iters):
            t0 = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e12, str(dtype).replace("torch.", "")


def studio_learner(cfg: BenchConfig | BusyConfig, data):
    """DDPM Studio's model, optimizer and data on the device, set up as a training run sets them up (from
    the config's data, image_size, preset, batch_size, device and seed)."""
    from ddpm_gui.engine.config import TrainConfig
    from ddpm_gui.engine.learner import Learner

    same = {k: getattr(cfg, k) for k in ("data", "image_size", "preset", "batch_size", "device", "seed")}
    tc = TrainConfig(**same, steps=10**8, preview_every=0, checkpoint_every=0, checkpoint_minutes=0)
    learner = Learner(tc, data=data)
    learner.setup()
    return learner


class StudioStepper:
    """Runs Learner.train_step as the Trainer does: the loss is read from the device every log_every steps."""

    def __init__(self, learner):
        self.learner = learner
        self.pending: list[torch.Tensor] = []

    def steps(self, k: int) -> None:
        tr = self.learner
        for _ in range(k):
            self.pending.append(tr.train_step())
            if tr.step % tr.config.log_every == 0:
                self.flush()

    def flush(self) -> None:
        if self.pending:
            torch.stack(self.pending).float().cpu()
            self.pending.clear()


def _time_sampling(
    bundle, batches, repeats: int, log: Callable[[str], None], ddim_steps: int, progress
) -> dict:
    from ddpm_gui.engine.sampler import SampleConfig, sample_frames

    def run(cfg: SampleConfig) -> float:
        t0 = time.perf_counter()
        last = None
        for frame in sample_frames(bundle, cfg):  # the last frame's uint8 copy waits for the device
            last = frame
        assert last is not None and last.final
        return time.perf_counter() - t0

    out: dict = {}
    total = len(batches) + bool(ddim_steps)
    for i, b in enumerate(batches):
        progress(i, total, f"sampling: batch {b}")
        run(SampleConfig(n=b, sampler="ddim", steps=2, every=10**9))  # warm-up at this batch size
        secs = statistics.median(
            run(SampleConfig(n=b, sampler="ddpm", every=10**9, seed=r)) for r in range(repeats)
        )
        out[str(b)] = secs
        T = bundle.schedule.T
        log(f"  sampling: {T} DDPM steps at batch {b:>3d}: {secs:8.3f} s  ({b / secs:8.1f} img/s)")
    if ddim_steps:
        b = 16
        progress(len(batches), total, f"sampling: DDIM at batch {b}")
        run(SampleConfig(n=b, sampler="ddim", steps=2, every=10**9))
        secs = run(SampleConfig(n=b, sampler="ddim", steps=ddim_steps, every=10**9))
        out[f"ddim{ddim_steps}_batch{b}"] = secs
        log(f"  preview:  {ddim_steps} DDIM steps at batch {b}: {secs:.3f} s")
    progress(total, total, "sampling: done")
    return out


def _time_variants(cfg: BenchConfig, data, log, progress) -> dict:
    """Studio step img/s with channels_last and with torch.compile (each in a fresh learner); an error is
    recorded, not raised. This is how the trainer's defaults were chosen: only what helps is used."""
    out: dict = {}
    for i, name in enumerate(("channels_last", "compile")):
        progress(i, 2, f"variants: {name}")
        try:
            learner = studio_learner(cfg, data)
            if name == "channels_last":
                learner.model.to(memory_format=torch.channels_last)
            else:
                learner.model = torch.compile(learner.model)
            st = StudioStepper(learner)
            st.steps(max(cfg.warmup, 2))
            st.flush()
            _sync(learner.device)
            times = []
            for _ in range(cfg.iters):
                t0 = time.perf_counter()
                st.steps(1)
                st.flush()
                _sync(learner.device)
                times.append(time.perf_counter() - t0)
            rate = cfg.batch_size / statistics.median(times)
            out[name] = rate
            log(f"  variant {name}: {rate:.1f} img/s")
        except Exception as exc:  # a variant that fails is a finding, not a crash
            out[name] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            log(f"  variant {name}: {out[name]}")
    progress(2, 2, "variants: done")
    return out


SECTIONS = ("compare", "busy")  # `--sections`: the tutorial comparison; the app's threads on a busy CPU


def _no_progress(done: int, total: int, message: str) -> None:
    pass


def run_bench(
    cfg: BenchConfig,
    log: Callable[[str], None] = print,
    progress: Callable[[int, int, str], None] | None = None,
) -> dict:
    """Run the benchmark; returns a JSON-able dict (the keys are documented in docs/benchmarks.md).
    `log` gets the report's lines; `progress(done, total, message)` is told how each phase goes (the
    phase is the message's text before its first colon)."""
    from ddpm_gui.errors import ConfigError

    unknown = [s for s in cfg.sections if s not in SECTIONS]
    if unknown or not cfg.sections:
        what = f"Unknown bench section {', '.join(map(repr, unknown))}" if unknown else "No bench section"
        raise ConfigError(f"{what}: choose one or more of {', '.join(SECTIONS)}, comma-separated.")
    old_threads = torch.get_num_threads()  # torch's default: what the busy section compares against
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        res = _run_bench(cfg, log, progress or _no_progress)
        if "busy" in cfg.sections:
            from ddpm_gui.bench_busy import run_busy

            res["busy"] = run_busy(cfg.busy, old_threads, log, progress)
        res["load_average_end"] = list(load_average())
        return res
    finally:
        torch.set_num_threads(old_threads)


def _run_bench(
    cfg: BenchConfig, log: Callable[[str], None], progress: Callable[[int, int, str], None]
) -> dict:
    from ddpm_gui.engine.device import device_label, pick_device

    dev = pick_device(cfg.device)
    res: dict = {
        "ddpm_gui": __version__,
        "torch": torch.__version__,
        "device": device_label(dev),
        "device_type": dev.type,
        "threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()},
        "load_average": list(load_average()),
    }
    if "compare" in cfg.sections:
        _run_compare(cfg, dev, res, log, progress)
    else:
        log(
            f"DDPM Studio bench: section {', '.join(cfg.sections)} (torch {torch.__version__}); load average "
            f"{res['load_average'][0]:.2f}"
        )
    return res


def _run_compare(cfg: BenchConfig, dev: torch.device, res: dict, log, progress) -> None:
    """The tutorial's loop against DDPM Studio's trainer, the matmul peak, sampling, peak memory."""
    from ddpm_gui.data import load_data
    from ddpm_gui.models.presets import flops_per_image, get_preset

    flops = flops_per_image(get_preset(cfg.preset), cfg.image_size)
    res.update(flops_per_image_train=float(flops["train"]), flops_per_image_forward=float(flops["forward"]))
    log(
        f"DDPM Studio bench: preset {cfg.preset} at {cfg.image_size}x{cfg.image_size}, batch "
        f"{cfg.batch_size}, on {res['device']} (torch {torch.__version__}); load average "
        f"{res['load_average'][0]:.2f}"
    )
    gflops, forward = flops["train"] / 1e9, flops["forward"] / 1e9
    log(f"  {gflops:.3f} GFLOP per image per training step ({forward:.3f} forward)")

    data = load_data(cfg.data, image_size=cfg.image_size)
    bundle, mem_tut, mem_studio = _time_training(cfg, data, dev, res, log, progress)
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    _measure_peak(cfg, dev, res, log, progress)
    if cfg.variants:
        res["variants_img_per_s"] = _time_variants(cfg, data, log, progress)
    mem_sampling = None
    if not cfg.skip_sampling:
        mem_sampling = _time_sampling_modes(cfg, bundle, dev, res, log, progress)

    res["peak_memory_mb"] = {"tutorial": mem_tut, "studio": mem_studio, "sampling": mem_sampling}
    res["peak_memory_kind"] = (
        "torch.cuda.max_memory_allocated per phase" if dev.type == "cuda" else "process peak RSS, cumulative"
    )
    log(
        f"  peak memory ({res['peak_memory_kind']}): tutorial {mem_tut:.0f} MiB, studio {mem_studio:.0f} MiB"
        + (f", sampling {mem_sampling:.0f} MiB" if mem_sampling is not None else "")
    )


def _time_training(
    cfg: BenchConfig, data, dev: torch.device, res: dict, log: Callable[[str], None], progress
):
    """(a) and (b), warm-up then alternating timed steps; the figures go into `res`. Returns the studio
    model as a bundle (for sampling) and each loop's peak memory."""
    from ddpm_gui.models.presets import build_model, count_parameters

    n_needed = cfg.batch_size * (cfg.warmup + cfg.iters)
    ds = tutorial_dataset(data.images[: min(len(data), n_needed)])
    if len(ds) < cfg.batch_size:
        from ddpm_gui.errors import ConfigError

        raise ConfigError(f"The data has {len(ds)} images, fewer than one batch of {cfg.batch_size}.")
    # (b) built first so that both models start from the same seed's weights
    learner = studio_learner(cfg, data)
    torch.manual_seed(cfg.seed)
    unet = build_model(learner.model_config).to(dev)
    res["parameters"] = count_parameters(unet)
    tut = TutorialLoop(unet, ds, dev, cfg.batch_size)
    studio = StudioStepper(learner)
    stride = learner.config.log_every if dev.type == "cuda" else 1  # CUDA: one loss read per timed chunk

    # warm-up (and each loop's own peak memory)
    _reset_peak(dev)
    progress(0, 1, "warm-up: both loops")
    for _ in range(cfg.warmup):
        tut.step()
    _sync(dev)
    mem_tut = _peak_mb(dev)
    _reset_peak(dev)
    studio.steps(cfg.warmup * stride)
    studio.flush()
    _sync(dev)
    mem_studio = _peak_mb(dev)

    # timed: alternate the two loops
    progress(1, 1, "warm-up: done")
    t_tut, t_studio = [], []
    for i in range(cfg.iters):
        progress(i, cfg.iters, "training: both loops")
        t0 = time.perf_counter()
        tut.step()  # loss.item() inside: synchronised
        t_tut.append((time.perf_counter() - t0) / cfg.batch_size)
        t0 = time.perf_counter()
        studio.steps(stride)
        studio.flush()
        _sync(dev)
        t_studio.append((time.perf_counter() - t0) / (stride * learner.batch_size))
    progress(cfg.iters, cfg.iters, "training: done")
    tut_rate = 1 / statistics.median(t_tut)
    studio_rate = 1 / statistics.median(t_studio)
    flops = res["flops_per_image_train"]
    res.update(
        tutorial_img_per_s=tut_rate,
        studio_img_per_s=studio_rate,
        speedup=studio_rate / tut_rate,
        tutorial_tflops=tut_rate * flops / 1e12,
        studio_tflops=studio_rate * flops / 1e12,
        tutorial_img_per_s_all=[1 / x for x in t_tut],
        studio_img_per_s_all=[1 / x for x in t_studio],
    )
    log(f"  training: tutorial loop {tut_rate:9.1f} img/s  ({res['tutorial_tflops']:.3f} TFLOP/s)")
    log(f"            DDPM Studio   {studio_rate:9.1f} img/s  ({res['studio_tflops']:.3f} TFLOP/s)")
    log(f"            speedup       {res['speedup']:9.2f}x")
    return learner.bundle(), mem_tut, mem_studio


def _measure_peak(
    cfg: BenchConfig, dev: torch.device, res: dict, log: Callable[[str], None], progress
) -> None:
    progress(0, 1, "matmul peak: timing")
    peak, peak_dtype = matmul_peak_tflops(dev, cfg.peak_size)
    progress(1, 1, "matmul peak: done")
    res.update(
        matmul_peak_tflops=peak,
        matmul_peak_dtype=peak_dtype,
        peak_fraction=res["studio_tflops"] / peak,
        tutorial_peak_fraction=res["tutorial_tflops"] / peak,
    )
    log(
        f"  {peak_dtype} matmul peak measured now: {peak:.3f} TFLOP/s; DDPM Studio reaches "
        f"{100 * res['peak_fraction']:.1f}% of it, the tutorial {100 * res['tutorial_peak_fraction']:.1f}%"
    )


def _time_sampling_modes(cfg: BenchConfig, bundle, dev: torch.device, res: dict, log, progress) -> float:
    """Sampling times with the configured acceleration mode, into `res`; returns the peak memory."""
    from ddpm_gui.engine.accel import accelerate

    model = accelerate(bundle.model, cfg.sample_mode)
    bundle = dataclasses.replace(bundle, model=model)
    _reset_peak(dev)
    res["sampling_s"] = _time_sampling(
        bundle, cfg.sample_batches, cfg.sample_repeats, log, cfg.ddim_steps, progress
    )
    res["sampling_steps"] = bundle.schedule.T
    res["sample_mode"] = cfg.sample_mode
    reason = getattr(model, "fallback_reason", None)
    if reason:
        res["sample_mode_fallback"] = reason
        log(f"  note: {reason}")
    _sync(dev)
    return _peak_mb(dev)


def load_average() -> tuple[float, float, float]:
    try:
        import os

        return os.getloadavg()
    except (OSError, AttributeError):
        return (float("nan"),) * 3
