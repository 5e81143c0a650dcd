"""Diffusion on 2D points: train the small MLP of models/mlp2d.py on a point cloud, run the reverse process
on particles, and read the learned denoising direction on a grid. Qt-free, seeded, CPU.

The math is the image models' own (core/diffusion.py): a cloud of n points is a batch of n "images" of
shape (2, 1, 1), so q_sample, training_target and reverse_process run unchanged, with every schedule and
sampler the app offers.

    cfg = Toy2DConfig(data="moons")
    for ev in Toy2DTrainer(cfg).run():   # Toy2DProgress ... then Toy2DFinished (ev.model: a Toy2DModel)
        ...
    chain = reverse_chain(ev.model, n=2000)          # Chain: every particle at every step
    xy, d = denoise_field(ev.model, t=50)            # arrows on a grid
    sliced_wasserstein(chain.xs[-1], data_points)    # how close the particles came to the data
"""

from __future__ import annotations

import copy
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ddpm_gui.core.diffusion import q_sample, reverse_process, split_prediction, training_target
from ddpm_gui.core.schedule import NoiseSchedule, gather
from ddpm_gui.core.spec import PREDICTIONS, SCHEDULE_PRESETS, ScheduleConfig
from ddpm_gui.data.points2d import load_points
from ddpm_gui.engine.threads import sampling_threads
from ddpm_gui.errors import ConfigError
from ddpm_gui.models.mlp2d import MLP2D

FIELD_KINDS = ("x0", "score")  # the arrows: predicted x0 - x_t, or the score -eps / sqrt(1 - alpha_bar)
FIELD_LIMIT = 1.5  # the arrow grid and the plot span [-FIELD_LIMIT, FIELD_LIMIT] on both axes


@dataclass
class Toy2DConfig:
    # data
    data: str = "moons"  # moons | swiss-roll | gaussians | drawn (points passed to the trainer)
    n_points: int = 2000  # the dataset: drawn once from the generator, then batches are sampled from it
    # diffusion: the cosine schedule ends in pure noise (x_T keeps 0.3% of x_0), where sampling starts
    schedule: ScheduleConfig = field(default_factory=lambda: SCHEDULE_PRESETS["cosine"])
    prediction: str = "eps"  # eps | v
    # model
    hidden: int = 64  # width of the MLP
    depth: int = 3  # residual blocks
    # training: 2000 steps of 256 points put the samples on the data (tests/test_toy2d.py); measured 17 s of
    # CPU time (50 s wall) on a 2-core machine busy with other work
    steps: int = 2000
    batch_size: int = 256
    lr: float = 3e-3  # Adam, decayed to lr/10 along a cosine by the last step
    seed: int = 0  # the dataset, the initial weights, the batches and the noise
    # reporting
    log_every: int = 10  # a Toy2DProgress every this many steps, with the loss of every step since the last
    snapshot_every: int = 250  # ... carrying a copy of the model this often (live arrows), 0: only at the end

    def validate(self) -> Toy2DConfig:
        self.schedule.validate()
        if self.prediction not in PREDICTIONS:
            raise ConfigError(
                f"Unknown prediction {self.prediction!r}: choose one of {', '.join(PREDICTIONS)}."
            )
        for name, lo, hi in (("steps", 1, 10**7), ("batch_size", 1, 65536), ("hidden", 2, 4096),
                             ("depth", 1, 64), ("n_points", 1, 100_000), ("log_every", 1, 10**7),
                             ("snapshot_every", 0, 10**7)):  # fmt: skip
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise ConfigError(f"{name} must be a whole number from {lo} to {hi}, got {v!r}.")
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and 0 < self.lr < 1):
            raise ConfigError(f"lr must lie strictly between 0 and 1, got {self.lr!r}.")
        return self


@dataclass
class Toy2DModel:
    """A trained (or training) denoiser with what it was trained for."""

    net: MLP2D
    sched: NoiseSchedule  # float32 arrays, the model's math
    prediction: str
    step: int

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(x, t)


@dataclass
class Toy2DProgress:
    step: int  # steps completed
    total_steps: int
    loss: float  # the last step's loss
    elapsed_s: float
    steps: np.ndarray  # every step since the previous event ...
    losses: np.ndarray  # ... and its loss
    model: Toy2DModel | None = None  # a copy of the model, every snapshot_every steps


@dataclass
class Toy2DFinished:
    step: int
    total_steps: int
    seconds: float  # the training loop's time (not the setup)
    model: Toy2DModel
    stopped: bool  # stopped before the last step


def merge_progress(a, b):
    """Two consecutive progress events as one (the worker's `coalesce`): the losses of both, the newer
    model. None for anything else, which is then delivered as it is."""
    if not (isinstance(a, Toy2DProgress) and isinstance(b, Toy2DProgress)):
        return None
    return replace(b, steps=np.concatenate([a.steps, b.steps]), losses=np.concatenate([a.losses, b.losses]),
                   model=b.model if b.model is not None else a.model)  # fmt: skip


def new_model(cfg: Toy2DConfig) -> Toy2DModel:
    """The untrained model of `cfg`, its weights drawn from cfg.seed."""
    with torch.random.fork_rng(devices=[]):  # seeded weights, the global generator left as it was
        torch.manual_seed(cfg.seed)
        net = MLP2D(cfg.hidden, cfg.depth)
    return Toy2DModel(net.eval(), NoiseSchedule(cfg.schedule).to("cpu"), cfg.prediction, 0)


class Toy2DTrainer:
    """Trains a Toy2DModel on `points` ((n, 2); None: cfg.data's generator). `run()` yields the events;
    `stop()` (any thread) ends it after the current step, with a Toy2DFinished all the same."""

    def __init__(self, cfg: Toy2DConfig, points: np.ndarray | None = None):
        self.cfg = cfg.validate()
        self.points = load_points(cfg.data, cfg.n_points, cfg.seed) if points is None else np.asarray(points)
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> Iterator[Toy2DProgress | Toy2DFinished]:
        # torch's thread count as sampling chooses it: hundreds of tiny steps are the case where a second
        # thread on a core another program uses makes every step wait (engine/threads.py)
        with sampling_threads(torch.device("cpu")) as recheck:
            yield from self._run(recheck)

    def _run(self, recheck) -> Iterator[Toy2DProgress | Toy2DFinished]:
        cfg = self.cfg
        model = new_model(cfg)
        net, sched = model.net.train(), model.sched
        data = torch.as_tensor(self.points, dtype=torch.float32).reshape(-1, 2, 1, 1)
        g = torch.Generator().manual_seed(cfg.seed)
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, foreach=True)  # one kernel per op, not per tensor
        # cosine decay to lr/10: the last steps settle the fine detail the large early steps skip over
        decay = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: 0.1 + 0.45 * (1 + math.cos(math.pi * min(s / cfg.steps, 1.0)))
        )
        losses = np.zeros(cfg.steps, np.float32)
        t0, last = time.perf_counter(), 0
        step = 0
        while step < cfg.steps and not self._stop.is_set():
            x0 = data[torch.randint(0, len(data), (cfg.batch_size,), generator=g)]
            t = torch.randint(0, sched.T, (cfg.batch_size,), generator=g)
            x_t, eps = q_sample(x0, t, sched, generator=g)
            loss = torch.nn.functional.mse_loss(
                net(x_t, t), training_target(x0, eps, t, sched, cfg.prediction)
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            decay.step()
            losses[step] = loss.item()
            step += 1
            if step % cfg.log_every == 0 or step == cfg.steps:
                recheck()
                snap = cfg.snapshot_every and (step % cfg.snapshot_every < step - last or step == cfg.steps)
                yield Toy2DProgress(step, cfg.steps, float(losses[step - 1]), time.perf_counter() - t0,
                                    np.arange(last + 1, step + 1), losses[last:step].copy(),
                                    self._snapshot(net, sched, step) if snap else None)  # fmt: skip
                last = step
        seconds = time.perf_counter() - t0
        if last < step:  # stopped between two reports: the last losses still reach the plot
            yield Toy2DProgress(step, cfg.steps, float(losses[step - 1]), seconds,
                                np.arange(last + 1, step + 1), losses[last:step].copy())  # fmt: skip
        yield Toy2DFinished(step, cfg.steps, seconds, self._snapshot(net, sched, step), step < cfg.steps)

    def _snapshot(self, net: MLP2D, sched: NoiseSchedule, step: int) -> Toy2DModel:
        """A copy of the model that other threads may use while training goes on."""
        return Toy2DModel(copy.deepcopy(net).eval().requires_grad_(False), sched, self.cfg.prediction, step)


def train(cfg: Toy2DConfig, points: np.ndarray | None = None) -> Toy2DFinished:
    """Train to the end and return the last event (tests, the command line)."""
    *_, done = Toy2DTrainer(cfg, points).run()
    assert isinstance(done, Toy2DFinished)  # the run's last event
    return done


# ----------------------------------------------------------------------------- the forward process


def start_noise(n: int, seed: int = 0) -> np.ndarray:
    """(n, 2) standard normal points: the forward process's eps, and the reverse process's x_T."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n, 2), generator=g).numpy()


def diffuse(points: np.ndarray, t: int, sched: NoiseSchedule, noise: np.ndarray) -> np.ndarray:
    """x_t of every point at step t (0-based; -1: the clean points), by q(x_t | x_0) with the given noise:
    one noise draw for every t makes the cloud dissolve smoothly as t grows."""
    if t < 0:
        return np.asarray(points, np.float32)
    x0 = torch.as_tensor(points, dtype=torch.float32).reshape(-1, 2, 1, 1)
    eps = torch.as_tensor(noise, dtype=torch.float32).reshape(-1, 2, 1, 1)
    x_t, _ = q_sample(x0, int(t), sched.to("cpu"), noise=eps)
    return x_t.reshape(-1, 2).numpy()


# ----------------------------------------------------------------------------- the reverse process


@dataclass
class Chain:
    """The reverse process of n particles: xs[0] is x_T, xs[i] the particles after step i."""

    ts: np.ndarray  # (K + 1,) the timestep each frame is at (0-based, the first is t_start, -1: clean)
    xs: np.ndarray  # (K + 1, n, 2)
    x0s: np.ndarray  # (K + 1, n, 2): the prediction of x_0 made at each step (the first: none, x_T)


@torch.no_grad()
def reverse_chain(
    model: Toy2DModel,
    n: int = 2000,
    sampler: str = "ddpm",
    variance: str = "beta",
    steps: int | None = None,
    eta: float = 0.0,
    clip_x0: bool = False,
    seed: int = 0,
    stop: threading.Event | None = None,
) -> Chain | None:
    """Run the reverse process from n standard normal particles (seeded) down to x_0, keeping every step;
    None when `stop` is set first. Sampler names and options are core.diffusion.reverse_process's."""
    with sampling_threads(torch.device("cpu")) as recheck:
        return _chain(model, n, sampler, variance, steps, eta, clip_x0, seed, stop, recheck)


def _chain(model, n, sampler, variance, steps, eta, clip_x0, seed, stop, recheck) -> Chain | None:
    x = torch.as_tensor(start_noise(n, seed)).reshape(n, 2, 1, 1)
    g = torch.Generator().manual_seed(seed + 1)
    xs, x0s, ts = [x.reshape(n, 2).numpy()], [x.reshape(n, 2).numpy()], []
    for s in reverse_process(model, x, model.sched, sampler=sampler, steps=steps, eta=eta, variance=variance,
                             prediction=model.prediction, clip_x0=clip_x0, generator=g,
                             clip_range=FIELD_LIMIT):  # fmt: skip
        if stop is not None and stop.is_set():
            return None
        recheck()
        xs.append(s.x.reshape(n, 2).numpy())
        x0s.append(s.x0.reshape(n, 2).numpy())
        ts.append(s.t)  # where step s started: where frame s stands (frame 0 is x_T, at t = T - 1)
    return Chain(np.asarray([*ts, -1]), np.stack(xs), np.stack(x0s))


# ----------------------------------------------------------------------------- the learned field


def field_grid(n: int = 21, limit: float = FIELD_LIMIT) -> np.ndarray:
    """(n * n, 2) points of a square grid over [-limit, limit]^2, row by row."""
    a = np.linspace(-limit, limit, n, dtype=np.float32)
    gx, gy = np.meshgrid(a, a)
    return np.stack([gx.ravel(), gy.ravel()], 1)


@torch.no_grad()
def denoise_field(
    model: Toy2DModel, t: int, kind: str = "x0", n: int = 21, limit: float = FIELD_LIMIT
) -> tuple[np.ndarray, np.ndarray]:
    """The model's denoising direction at timestep t (0-based) on an n x n grid: (points, vectors), both
    (n * n, 2). kind "x0": predicted x_0 - x_t, where the model sends a point at noise level t; "score":
    -eps / sqrt(1 - alpha_bar_t), the gradient of log p_t (Song et al. 2021) that sampling follows."""
    if kind not in FIELD_KINDS:
        raise ConfigError(f"Unknown field {kind!r}: choose one of {', '.join(FIELD_KINDS)}.")
    sched = model.sched
    t = min(max(int(t), 0), sched.T - 1)
    xy = field_grid(n, limit)
    x = torch.as_tensor(xy).reshape(-1, 2, 1, 1)
    tt = torch.full((len(xy),), t, dtype=torch.long)
    eps, x0 = split_prediction(model(x, tt), x, tt, sched, model.prediction)
    if kind == "x0":
        d = x0 - x
    else:
        d = -eps / (1 - gather(sched.alpha_bars, tt)).sqrt().clamp(min=1e-6)
    return xy, d.reshape(-1, 2).numpy()


# ----------------------------------------------------------------------------- how close two clouds are


def sliced_wasserstein(a: np.ndarray, b: np.ndarray, n_proj: int = 256, seed: int = 0) -> float:
    """The sliced 1-Wasserstein distance between two point clouds (any sizes): the mean, over n_proj random
    directions, of the W1 distance between the clouds' projections, read from their quantiles. 0 for the
    same distribution; in the clouds' units (a shift by d moves it by about 0.64 d)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 2), np.asarray(b, np.float64).reshape(-1, 2)
    if not (len(a) and len(b)):
        raise ConfigError("Both point clouds need at least one point.")
    ang = np.random.default_rng(seed).uniform(0, np.pi, n_proj)
    dirs = np.stack([np.cos(ang), np.sin(ang)])  # (2, n_proj)
    q = (np.arange(max(len(a), len(b))) + 0.5) / max(len(a), len(b))
    pa, pb = np.quantile(a @ dirs, q, axis=0), np.quantile(b @ dirs, q, axis=0)
    return float(np.abs(pa - pb).mean())
