"""`ddpm-gui bench`: DDPM Studio's training and sampling speed against the tutorial's own loop.

In one process, on the same model preset, batch and device:

(a) the tutorial's loop, re-implemented faithfully: for each batch, 128 PIL images are taken from a
    datasets-like list (`dataset[idx]['img']`), each converted by the tutorial's `img_to_tensor`
    (numpy -> float64 tensor) and copied to the device on its own, `torch.cat`-ed, noised in float64 by
    its `q_xt_x0`, `unet(xt.float(), t)`, MSE, `loss.item()` every step, AdamW(lr=3e-4);
(b) DDPM Studio's trainer: the real `Learner.train_step` after `Learner.setup` (dataset on the device
    as uint8, one gather per batch, EMA, gradient clipping, bf16 autocast on CUDA, fused AdamW on CUDA),
    reading the loss every `log_every` steps as the Trainer does.

Each is built and warmed up in turn (its own peak memory: on CUDA the allocation peak less what was
allocated before it), then `iters` rounds of one chunk of each (ABBA order), every chunk between two device
syncs so that neither is charged for the other's queued work, and a short matmul peak probe (fp32; bf16 too
on CUDA) after every round, so that "% of peak" compares each chunk with the peak of the same minute. Every
ratio comes with a 95% interval over the rounds and says "no measurable difference" when it contains 1.
Then: FLOPs per image (torch's FlopCounterMode), achieved TFLOP/s, sampling time for the full DDPM chain at
several batch sizes, and peak memory.

The tutorial's list holds decoded PIL images, so (a) skips the PNG decode that `datasets` does on every
`dataset[idx]` access: the tutorial measured here is, if anything, faster than the real one.

All of the above is the `compare` section; the `busy` section (bench_busy.py) times the app's CPU thread
count against torch's default while other processes compete for the cores, `scaling` (bench_size.py) the
training step over batch and image size per preset, `profile` (bench_profile.py) where a step's time goes,
`samplers` (bench_samplers.py) the quality and time of each sampler at 10, 20, 50 and 100 steps.
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
from ddpm_gui.bench_busy import BusyConfig, ci_text, mean_ci, pct_text, ratio_ci
from ddpm_gui.bench_profile import ProfileConfig
from ddpm_gui.bench_samplers import SamplersBench
from ddpm_gui.bench_size import SizeConfig


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
    size: SizeConfig = field(default_factory=SizeConfig)  # the scaling section's cells
    profile: ProfileConfig = field(default_factory=ProfileConfig)  # the profile section's
    samplers: SamplersBench = field(default_factory=SamplersBench)  # the samplers section's

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
            size=SizeConfig.quick_config(),
            profile=ProfileConfig.quick_config(),
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


def device_sync(dev: torch.device) -> Callable[[], None]:
    """What every timing boundary calls: waits for the device's queued work (nothing to wait for on the CPU).
    The timing code takes it as an argument, so that a test can count the boundaries on a CPU."""
    if dev.type == "cuda":
        return lambda: torch.cuda.synchronize(dev)
    return lambda: None


def _reset_peak(dev: torch.device) -> float:
    """Starts a peak-memory window; returns what is allocated now (CUDA; 0 on the CPU), its baseline."""
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        return torch.cuda.memory_allocated(dev) / 2**20
    return 0.0


def _peak_mb(dev: torch.device, baseline: float = 0.0) -> float:
    """CUDA: the most memory allocated since _reset_peak, less what was allocated then (the window's own
    objects only); CPU: the process's peak RSS so far (cumulative: RSS has no reset)."""
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**20 - baseline
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / 2**20 if platform.system() == "Darwin" else rss / 2**10


class PeakProbe:
    """The device's dense matmul throughput now, short enough to run between two timed chunks: fp32 (the
    trainer's CPU dtype) everywhere, and bf16 (its autocast dtype) on CUDA. Each call: {dtype: TFLOP/s},
    the median of `reps` timed products, each between two calls of `sync`."""

    def __init__(self, dev: torch.device, size: int | None = None, sync=None, reps: int | None = None):
        cuda = dev.type == "cuda"
        self.n = size or (8192 if cuda else 2048)
        self.reps = reps or (10 if cuda else 3)
        self.sync = sync or device_sync(dev)
        g = torch.Generator(device=dev).manual_seed(0)
        self.mats = {}
        for dtype in (torch.float32, torch.bfloat16) if cuda else (torch.float32,):
            a, b = (torch.randn((self.n, self.n), device=dev, dtype=dtype, generator=g) for _ in range(2))
            self.mats[str(dtype).replace("torch.", "")] = (a, b, a @ b)  # the product: warm-up and output
        self.sync()

    @property
    def primary(self) -> str:
        """The dtype the trainer computes in on this device: what "% of peak" refers to."""
        return "bfloat16" if "bfloat16" in self.mats else "float32"

    def __call__(self) -> dict[str, float]:
        out = {}
        for name, (a, b, c) in self.mats.items():
            times = []
            for _ in range(self.reps):
                self.sync()
                t0 = time.perf_counter()
                torch.mm(a, b, out=c)
                self.sync()
                times.append(time.perf_counter() - t0)
            out[name] = 2 * self.n**3 / statistics.median(times) / 1e12
        return out


def interleave(
    chunks: dict[str, Callable[[], int]],
    n: int,
    sync: Callable[[], None],
    probe: Callable[[], dict[str, float]] | None = None,
    progress=None,
    clock: Callable[[], float] = time.perf_counter,
) -> dict:
    """Times `n` rounds of every chunk (a callable that runs some steps and returns the images it
    processed), the order reversed every other round (ABBA), each chunk between two calls of `sync` so that
    no chunk's queued device work is charged to the next; `probe` (a PeakProbe) runs after every round.
    Returns {"s_per_image": {name: [per round]}, "peak_tflops": {dtype: [per round]}}."""
    names = list(chunks)
    per: dict[str, list[float]] = {k: [] for k in names}
    peaks: dict[str, list[float]] = {}
    for i in range(n):
        if progress:
            progress(i, n, "training: interleaved chunks")
        for name in names if i % 2 == 0 else names[::-1]:
            sync()
            t0 = clock()
            images = chunks[name]()
            sync()
            per[name].append((clock() - t0) / images)
        for dtype, tflops in (probe() if probe else {}).items():
            peaks.setdefault(dtype, []).append(tflops)
    if progress:
        progress(n, n, "training: done")
    return {"s_per_image": per, "peak_tflops": peaks}


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


# `--sections`: the tutorial comparison; the app's threads on a busy CPU; batch and image size; a profile
SECTIONS = ("compare", "busy", "scaling", "profile", "samplers")


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
        if "scaling" in cfg.sections:
            from ddpm_gui.bench_size import run_size

            res["scaling"] = run_size(cfg.size, log, progress)
        if "profile" in cfg.sections:
            from ddpm_gui.bench_profile import run_profile

            res["profile"] = run_profile(cfg.profile, cfg.threads, log, progress)
        if "samplers" in cfg.sections:
            from ddpm_gui.bench_samplers import run_samplers

            res["samplers"] = run_samplers(cfg.samplers, log, progress)
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
        "float32_matmul_precision": torch.get_float32_matmul_precision(),  # "highest": no TF32 in the probe
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
    """The tutorial's loop against DDPM Studio's trainer with the matmul peak probed between their chunks,
    sampling, peak memory."""
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
    if cfg.variants:
        from ddpm_gui.bench_profile import time_variants

        res["variants_img_per_s"] = time_variants(cfg, data, log, progress)
    mem_sampling = None
    if not cfg.skip_sampling:
        mem_sampling = _time_sampling_modes(cfg, bundle, dev, res, log, progress)

    res["peak_memory_mb"] = {"tutorial": mem_tut, "studio": mem_studio, "sampling": mem_sampling}
    res["peak_memory_kind"] = (
        "torch.cuda.max_memory_allocated less what was allocated before, each loop built and warmed up in "
        "turn"
        if dev.type == "cuda"
        else "process peak RSS, cumulative (the tutorial loop first)"
    )
    log(
        f"  peak memory ({res['peak_memory_kind']}): tutorial {mem_tut:.0f} MiB, studio {mem_studio:.0f} MiB"
        + (f", sampling {mem_sampling:.0f} MiB" if mem_sampling is not None else "")
    )


def _time_training(
    cfg: BenchConfig, data, dev: torch.device, res: dict, log: Callable[[str], None], progress, sync=None
):
    """(a) and (b): each built and warmed up in turn (its own peak memory), then `cfg.iters` interleaved
    rounds of a chunk of each with the matmul peak probed after every round; the figures go into `res`.
    `sync` (default device_sync) is called at every chunk boundary. Returns the studio model as a bundle
    (for sampling) and each loop's peak memory."""
    from ddpm_gui.errors import ConfigError
    from ddpm_gui.models.presets import build_model, count_parameters, get_preset

    sync = sync or device_sync(dev)
    n_needed = cfg.batch_size * (cfg.warmup + cfg.iters)
    ds = tutorial_dataset(data.images[: min(len(data), n_needed)])
    if len(ds) < cfg.batch_size:
        raise ConfigError(f"The data has {len(ds)} images, fewer than one batch of {cfg.batch_size}.")
    progress(0, 2, "warm-up: the tutorial loop")
    base = _reset_peak(dev)
    torch.manual_seed(cfg.seed)  # the seed the learner builds its model from: the same initial weights
    unet = build_model(get_preset(cfg.preset)).to(dev)
    res["parameters"] = count_parameters(unet)
    tut = TutorialLoop(unet, ds, dev, cfg.batch_size)
    for _ in range(cfg.warmup):
        tut.step()
    sync()
    mem_tut = _peak_mb(dev, base)
    progress(1, 2, "warm-up: DDPM Studio")
    base = _reset_peak(dev)
    learner = studio_learner(cfg, data)
    studio = StudioStepper(learner)
    stride = learner.config.log_every if dev.type == "cuda" else 1  # CUDA: one loss read per chunk
    studio.steps(cfg.warmup * stride)
    studio.flush()
    sync()
    mem_studio = _peak_mb(dev, base)
    progress(2, 2, "warm-up: done")

    def tut_chunk() -> int:
        for _ in range(stride):
            tut.step()
        return stride * cfg.batch_size

    def studio_chunk() -> int:
        studio.steps(stride)
        studio.flush()
        return stride * learner.batch_size

    probe = PeakProbe(dev, cfg.peak_size, sync)
    timed = interleave({"tutorial": tut_chunk, "studio": studio_chunk}, cfg.iters, sync, probe, progress)
    _training_figures(res, timed, probe.primary, stride, log)
    return learner.bundle(), mem_tut, mem_studio


def _training_figures(res: dict, timed: dict, primary: str, stride: int, log: Callable[[str], None]) -> None:
    """img/s, the speedup and the shares of the peak, each with its 95% interval over the chunks."""
    flops = res["flops_per_image_train"]
    t_tut, t_studio = timed["s_per_image"]["tutorial"], timed["s_per_image"]["studio"]
    peaks = timed["peak_tflops"]
    speed = ratio_ci(t_tut, t_studio)  # time ratio tutorial/studio: the studio's speedup
    tut_rate, studio_rate = 1 / statistics.median(t_tut), 1 / statistics.median(t_studio)
    res.update(
        chunk_steps=stride,
        tutorial_img_per_s=tut_rate,
        studio_img_per_s=studio_rate,
        tutorial_img_per_s_all=[1 / x for x in t_tut],
        studio_img_per_s_all=[1 / x for x in t_studio],
        speedup=speed["ratio"],
        speedup_ci95=speed["ci95"],
        speedup_verdict=speed["verdict"],
        tutorial_tflops=tut_rate * flops / 1e12,
        studio_tflops=studio_rate * flops / 1e12,
        matmul_peak_dtype=primary,
        matmul_peak_tflops=statistics.median(peaks[primary]),
        matmul_peaks_all=peaks,
        peak_fractions={},
    )
    for dtype, ps in peaks.items():
        res["peak_fractions"][dtype] = {
            name: mean_ci([flops / t / p / 1e12 for t, p in zip(ts, ps, strict=True)])
            for name, ts in (("tutorial", t_tut), ("studio", t_studio))
        }
    fr = res["peak_fractions"][primary]
    res.update(peak_fraction=fr["studio"]["mean"], tutorial_peak_fraction=fr["tutorial"]["mean"])
    log(f"  training, medians of {len(t_tut)} interleaved rounds of a {stride}-step chunk each, [min-max]:")
    for name, label, ts in (("tutorial", "tutorial loop", t_tut), ("studio", "DDPM Studio  ", t_studio)):
        rates = [1 / x for x in ts]
        log(
            f"            {label} {1 / statistics.median(ts):9.1f} img/s [{min(rates):.1f}-{max(rates):.1f}]  "
            f"({res[name + '_tflops']:.3f} TFLOP/s)"
        )
    log(
        f"            speedup       {speed['ratio']:9.2f}x (95% CI {ci_text(speed['ci95'])}): {speed['verdict']}"
    )
    for dtype, ps in peaks.items():
        f = res["peak_fractions"][dtype]
        log(
            f"  {dtype} matmul peak probed after every round: {statistics.median(ps):.3f} TFLOP/s (per round: "
            f"{', '.join(f'{x:.3f}' for x in ps)}); share of it, mean of the rounds (95% CI): DDPM Studio "
            f"{pct_text(f['studio'])}, the tutorial {pct_text(f['tutorial'])}"
        )


def _time_sampling_modes(cfg: BenchConfig, bundle, dev: torch.device, res: dict, log, progress) -> float:
    """Sampling times with the configured acceleration mode, into `res`; returns the peak memory."""
    from ddpm_gui.engine.accel import accelerate

    model = accelerate(bundle.model, cfg.sample_mode)
    bundle = dataclasses.replace(bundle, model=model)
    base = _reset_peak(dev)
    res["sampling_s"] = _time_sampling(
        bundle, cfg.sample_batches, cfg.sample_repeats, log, cfg.ddim_steps, progress
    )
    res["sampling_steps"] = bundle.schedule.T
    res["sample_mode"] = cfg.sample_mode
    reason = getattr(model, "fallback_reason", None)
    if reason:
        res["sample_mode_fallback"] = reason
        log(f"  note: {reason}")
    device_sync(dev)()
    return _peak_mb(dev, base)


def load_average() -> tuple[float, float, float]:
    try:
        import os

        return os.getloadavg()
    except (OSError, AttributeError):
        return (float("nan"),) * 3
