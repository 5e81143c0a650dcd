"""Forward and reverse diffusion steps: pure tensor math, no nn.Module, no Qt.

Equation numbers refer to Ho et al. 2020, "Denoising Diffusion Probabilistic Models" (DDPM) and
Song et al. 2021, "Denoising Diffusion Implicit Models" (DDIM). Timesteps are 0-based indices into
the schedule's arrays (see schedule.py). Images are float tensors in [-1, 1], shape (B, C, H, W).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from ddpm_gui.core.schedule import NoiseSchedule, gather
from ddpm_gui.core.spec import PREDICTIONS, SAMPLERS
from ddpm_gui.errors import ConfigError

VARIANCES = ("beta", "posterior")

# A denoiser: (x_t, t as a (B,) long tensor) -> the model's output (eps or v, same shape as x_t).
Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def _timesteps(t: torch.Tensor | int, batch: int, device) -> torch.Tensor:
    if not torch.is_tensor(t):
        return torch.full((batch,), int(t), device=device, dtype=torch.long)
    t = t.to(device).long().reshape(-1)
    return t.expand(batch) if t.numel() == 1 else t


# ----------------------------------------------------------------------------- forward process


def q_step(
    x_prev: torch.Tensor,
    t: torch.Tensor | int,
    sched: NoiseSchedule,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One forward step q(x_t | x_(t-1)) = N(sqrt(1 - beta_t) x_(t-1), beta_t I)   (DDPM eq. 2)."""
    if noise is None:
        noise = _randn_like(x_prev, generator)
    t = _timesteps(t, x_prev.shape[0], x_prev.device)
    beta = gather(sched.betas, t).to(x_prev.dtype)
    return (1 - beta).sqrt() * x_prev + beta.sqrt() * noise


def q_sample(
    x0: torch.Tensor,
    t: torch.Tensor | int,
    sched: NoiseSchedule,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed form q(x_t | x_0) = N(sqrt(ab_t) x_0, (1 - ab_t) I)   (DDPM eq. 4).

    Batched over t (one timestep per image). Returns (x_t, eps): eps is the training target.
    """
    if noise is None:
        noise = _randn_like(x0, generator)
    t = _timesteps(t, x0.shape[0], x0.device)
    ab = gather(sched.alpha_bars, t).to(x0.dtype)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * noise, noise


def v_target(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, sched: NoiseSchedule) -> torch.Tensor:
    """v = sqrt(ab) eps - sqrt(1 - ab) x_0 (Salimans & Ho 2022): the target for v-prediction, which
    stays well defined at alpha_bar = 0 (a zero-terminal-SNR schedule), where eps-prediction cannot
    recover x_0."""
    ab = gather(sched.alpha_bars, t).to(x0.dtype)
    return ab.sqrt() * eps - (1 - ab).sqrt() * x0


def training_target(
    x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, sched: NoiseSchedule, prediction: str
) -> torch.Tensor:
    return eps if prediction == "eps" else v_target(x0, eps, t, sched)


# ----------------------------------------------------------------------------- reverse process


def split_prediction(
    model_out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, sched: NoiseSchedule, prediction: str = "eps"
) -> tuple[torch.Tensor, torch.Tensor]:
    """From the model's output to (eps, predicted x_0).

    eps-prediction: x_0 = (x_t - sqrt(1 - ab_t) eps) / sqrt(ab_t)       (DDPM eq. 15 solved for x_0)
    v-prediction:   x_0 = sqrt(ab_t) x_t - sqrt(1 - ab_t) v,  eps = sqrt(1 - ab_t) x_t + sqrt(ab_t) v
    """
    sqrt_ab = gather(sched.sqrt_alpha_bars, t).to(x_t.dtype)
    sqrt_1m_ab = gather(sched.sqrt_one_minus_alpha_bars, t).to(x_t.dtype)
    if prediction == "eps":
        eps = model_out
        x0 = (x_t - sqrt_1m_ab * eps) / sqrt_ab.clamp(min=1e-12)
    elif prediction == "v":
        x0 = sqrt_ab * x_t - sqrt_1m_ab * model_out
        eps = sqrt_1m_ab * x_t + sqrt_ab * model_out
    else:
        raise ConfigError(f"Unknown prediction type '{prediction}': use one of {PREDICTIONS}.")
    return eps, x0


def ddpm_step(
    model_out: torch.Tensor,
    x_t: torch.Tensor,
    t: int,
    sched: NoiseSchedule,
    variance: str = "beta",
    prediction: str = "eps",
    clip_x0: bool = False,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    clip_range: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One ancestral step x_t -> x_(t-1) ~ p(x_(t-1) | x_t). Returns (x_(t-1), predicted x_0).

    With clip_x0=False and eps-prediction this is exactly the tutorial's `p_xt` (DDPM eq. 11):
        mean = 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - ab_t) eps)
    otherwise (a clipped x_0, or v-prediction, which gives x_0 directly and stays finite where alpha_t = 0
    at the end of a zero-terminal-SNR schedule) the posterior mean of eq. 7:
        mean = sqrt(ab_prev) beta_t / (1 - ab_t) x_0 + sqrt(alpha_t) (1 - ab_prev) / (1 - ab_t) x_t
    Both are algebraically equal; every coefficient comes from the schedule's float64 arrays.
    variance: "beta" uses sigma^2 = beta_t (the tutorial), "posterior" uses beta~_t (eq. 7); both are
    the paper's two choices (section 3.2). No noise is added at the last step (t = 0).
    clip_range: x_0 is clipped to [-clip_range, clip_range] (1 for images in [-1, 1]; diffusers models
    may say otherwise with `clip_sample_range`).
    """
    if variance not in VARIANCES:
        raise ConfigError(f"Unknown variance '{variance}': use 'beta' or 'posterior'.")
    tt = _timesteps(t, x_t.shape[0], x_t.device)
    # a Python int needs no device read (int(tt[0]) would sync the host with the GPU at every step)
    ti = int(t) if not torch.is_tensor(t) else int(tt[0])
    # 1. predicted noise and predicted x_0 (eq. 15)
    eps, x0 = split_prediction(model_out, x_t, tt, sched, prediction)
    if clip_x0:
        x0 = x0.clamp(-clip_range, clip_range)
    # 2. the mean: eq. 11, or the posterior mean mu~_t(x_t, x_0) of eq. 7 (the form that keeps a clipped
    #    step stable)
    if clip_x0 or prediction != "eps":
        c1 = gather(sched.posterior_mean_coef1, tt).to(x_t.dtype)
        c2 = gather(sched.posterior_mean_coef2, tt).to(x_t.dtype)
        mean = c1 * x0 + c2 * x_t
    else:
        eps_coef = gather(sched.eps_coef, tt).to(x_t.dtype)
        mean = gather(sched.sqrt_recip_alphas, tt).to(x_t.dtype) * (x_t - eps_coef * eps)
    if ti == 0:
        return mean, x0
    # 3. add noise with sigma_t^2 = beta_t or beta~_t
    sigma = gather(sched.sqrt_betas if variance == "beta" else sched.sqrt_posterior_variance, tt)
    if noise is None:
        noise = _randn_like(x_t, generator)
    return mean + sigma.to(x_t.dtype) * noise, x0


def ddim_timesteps(T: int, steps: int) -> list[int]:
    """`steps` evenly spaced timesteps, descending, from T-1 down to 0 (DDIM section 4.2)."""
    if steps < 1:
        raise ConfigError(f"The number of sampling steps must be at least 1, got {steps}.")
    steps = min(steps, T)
    ts = torch.linspace(T - 1, 0, steps).round().long().tolist()
    return list(dict.fromkeys(int(t) for t in ts))  # unique, still descending


def ddim_step(
    model_out: torch.Tensor,
    x_t: torch.Tensor,
    t: int,
    t_prev: int,
    sched: NoiseSchedule,
    eta: float = 0.0,
    prediction: str = "eps",
    clip_x0: bool = False,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    clip_range: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDIM step x_t -> x_(t_prev) (DDIM eq. 12), t_prev = -1 meaning the clean image.

    eta = 0 is deterministic; eta = 1 has the variance of ancestral DDPM with the posterior variance.
    The coefficients pair two timesteps and are computed in float64 from the schedule's alpha_bar.
    """
    tt = _timesteps(t, x_t.shape[0], x_t.device)
    t, t_prev = int(t), int(t_prev)
    # 1. predicted noise and x_0 (DDIM eq. 9)
    eps, x0 = split_prediction(model_out, x_t, tt, sched, prediction)
    ab_t, ab_prev = sched.alpha_bar(t), sched.alpha_bar(t_prev)
    if clip_x0:
        x0 = x0.clamp(-clip_range, clip_range)
        # re-derive eps from the clipped x_0 so the step stays consistent
        eps = (x_t - math.sqrt(ab_t) * x0) * (1 / max(math.sqrt(1 - ab_t), 1e-12))
    # 2. sigma_t(eta) (DDIM eq. 16); 1 - ab_t / ab_prev as (ab_prev - ab_t) / ab_prev keeps its digits
    var = (1 - ab_prev) / (1 - ab_t) * (ab_prev - ab_t) / ab_prev if ab_prev > 0 else 0.0
    sigma = eta * math.sqrt(max(var, 0.0))
    # 3. "direction pointing to x_t" and the step (eq. 12)
    x_prev = math.sqrt(ab_prev) * x0 + math.sqrt(max(1 - ab_prev - sigma**2, 0.0)) * eps
    if eta > 0 and t_prev >= 0:
        if noise is None:
            noise = _randn_like(x_t, generator)
        x_prev = x_prev + sigma * noise
    return x_prev, x0


@dataclass(frozen=True)
class StepOptions:
    """What a sampler's step may use besides the model output, x_t and the timesteps."""

    eta: float = 0.0  # DDIM's noise scale
    variance: str = "beta"  # DDPM's sigma^2: beta_t or the posterior's beta~_t
    prediction: str = "eps"
    clip_x0: bool = False
    generator: torch.Generator | None = None
    clip_range: float = 1.0  # x_0 is clipped to [-clip_range, clip_range]


# A step: (model_out, x_t, t, t_prev, sched, opts) -> (x_(t_prev), predicted x_0); t_prev = -1 is the clean image.
Step = Callable[
    [torch.Tensor, torch.Tensor, int, int, NoiseSchedule, StepOptions], tuple[torch.Tensor, torch.Tensor]
]


def _ddim(out, x, t, t_prev, sched, o: StepOptions, eta: float | None = None):
    return ddim_step(
        out,
        x,
        t,
        t_prev,
        sched,
        o.eta if eta is None else eta,
        o.prediction,
        o.clip_x0,
        generator=o.generator,
        clip_range=o.clip_range,
    )


# name (core.spec.SAMPLERS) -> step, for the samplers whose step depends on nothing but its arguments.
# Euler ancestral (k-diffusion's sample_euler_ancestral, diffusers' EulerAncestralDiscreteScheduler) works on
# x / sqrt(ab) with sigma = sqrt((1 - ab) / ab): x0 + sigma_down eps + sigma_up z with sigma_up^2 =
# sigma_to^2 (1 - sigma_to^2 / sigma_from^2). Scaled back by sqrt(ab_prev) that is term for term DDIM's step
# with eta = 1, so it is that step (tests/test_solvers.py checks it against diffusers' scheduler).
STEP_FUNCTIONS: dict[str, Step] = {
    "ddpm": lambda out, x, t, _t_prev, sched, o: ddpm_step(
        out, x, t, sched, o.variance, o.prediction, o.clip_x0, generator=o.generator, clip_range=o.clip_range
    ),
    "ddim": _ddim,
    "euler_a": lambda out, x, t, t_prev, sched, o: _ddim(out, x, t, t_prev, sched, o, eta=1.0),
}


def chain_step(sampler: str) -> Step:
    """The step for one reverse chain: a STEP_FUNCTIONS entry, or for a multistep sampler (one that keeps the
    previous steps' predictions, core/solvers.py) a fresh solver object, called like a step. Take a new one
    for every chain."""
    if sampler in STEP_FUNCTIONS:
        return STEP_FUNCTIONS[sampler]
    from ddpm_gui.core.solvers import MULTISTEP_SOLVERS  # solvers build on this module

    if sampler in MULTISTEP_SOLVERS:
        return MULTISTEP_SOLVERS[sampler]()
    raise ConfigError(f"Unknown sampler '{sampler}': use one of {', '.join(SAMPLERS)}.")


@dataclass
class ReverseStep:
    """One frame of the reverse process."""

    index: int  # 0-based position in the chain
    total: int  # number of steps in the chain
    t: int  # the timestep this step started from
    x: torch.Tensor  # x after the step (x_(t-1), or x_(t_prev) for DDIM)
    x0: torch.Tensor  # the prediction of x_0 made at this step


def reverse_process(
    denoiser: Denoiser,
    x_start: torch.Tensor,
    sched: NoiseSchedule,
    sampler: str = "ddpm",
    t_start: int | None = None,
    steps: int | None = None,
    eta: float = 0.0,
    variance: str = "beta",
    prediction: str = "eps",
    clip_x0: bool = False,
    generator: torch.Generator | None = None,
    clip_range: float = 1.0,
) -> Iterator[ReverseStep]:
    """Run the reverse chain from x_start at timestep t_start (default T-1, i.e. pure noise) to x_0,
    yielding every step. DDPM visits every timestep; a strided sampler (DDIM, DPM-Solver++, Euler ancestral)
    visits `steps` of them (ddim_timesteps), then steps to the clean image. A multistep sampler's state lives
    in the solver object chain_step makes for this chain."""
    T = sched.T
    t_start = T - 1 if t_start is None else int(t_start)
    if not 0 <= t_start < T:
        raise ConfigError(f"The starting step must lie in 0..{T - 1}, got {t_start}.")
    if sampler not in SAMPLERS:
        raise ConfigError(f"Unknown sampler '{sampler}': use one of {', '.join(SAMPLERS)}.")
    n = t_start + 1 if steps is None or not SAMPLERS[sampler].strided else steps
    ts = ddim_timesteps(t_start + 1, n)  # n = t_start + 1 visits every timestep
    step = chain_step(sampler)
    opts = StepOptions(eta, variance, prediction, clip_x0, generator, clip_range)
    x = x_start
    B = x.shape[0]
    for i, t in enumerate(ts):
        tt = torch.full((B,), t, device=x.device, dtype=torch.long)
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        x, x0 = step(denoiser(x, tt), x, t, t_prev, sched, opts)
        yield ReverseStep(i, len(ts), t, x, x0)


def noise_to(
    x0: torch.Tensor, t: int, k: int, sched: NoiseSchedule, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The tutorial's horse experiment, first half: k independent draws of q(x_t | x_0) for one image.

    x0: (C, H, W) or (1, C, H, W). Returns (k, C, H, W). Run `reverse_process(..., t_start=t)` on it.
    (The tutorial noises to index 50 but denoises from index 49, one step short; we start where we noised.)
    """
    if x0.dim() == 3:
        x0 = x0.unsqueeze(0)
    xs, _ = q_sample(x0.expand(k, *x0.shape[1:]).contiguous(), t, sched, generator=generator)
    return xs


# ----------------------------------------------------------------------------- image conversion


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float (B, C, H, W) -> uint8 (B, H, W, 3) on the CPU, ready for a viewer."""
    x = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x.permute(0, 2, 3, 1).contiguous().cpu()


def from_uint8(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [-1, 1] (on the images' device)."""
    return images.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
