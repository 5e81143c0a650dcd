"""Every term of one reverse step, from the sampler's own step functions: pure tensor math, no Qt.

A DDPM or DDIM step is x_(t-1) = m(x_t, x_0) + sigma_t z: a deterministic part m (DDPM: the posterior mean
mu~_t of eq. 7, equal to eq. 11 unclipped; DDIM: eq. 12 without its random term) plus injected noise. The terms
here are not derived again: m is the step function itself called with noise = 0, and sigma_t is what the step
adds for noise = 1 (the step is affine in its noise), so they stay those of the sampler whatever its
coefficients are. eps-hat comes from diffusion.split_prediction (the model's output read as noise), x_0-hat is
the step's own (clipped when the sampler clips). A sampler without a separate noise term (a multistep solver)
gets x_t, eps-hat, x_0-hat and x_(t-1) only.

With classifier-free guidance the model gives a conditional and an unconditional output; their eps-hat and
the difference eps_c - eps_u (the direction guidance scales: eps = eps_u + w (eps_c - eps_u)) are terms too.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ddpm_gui.core.diffusion import StepOptions, ddim_step, ddpm_step, split_prediction
from ddpm_gui.core.schedule import NoiseSchedule

# The terms of a step, in the order they are shown; guidance adds GUIDANCE_TERMS.
STEP_TERMS = ("x_t", "eps", "x0", "mean", "noise", "x_prev")
GUIDANCE_TERMS = ("eps_cond", "eps_uncond", "eps_diff")
# What each term is, for captions, legends and the command line.
TERM_LABELS = {
    "x_t": "x_t",
    "eps": "ε̂ (predicted noise)",
    "x0": "x̂₀ (predicted x₀)",
    "mean": "mean (deterministic part)",
    "noise": "σ_t·z (injected noise)",
    "x_prev": "x_(t-1)",
    "eps_cond": "ε̂ conditional",
    "eps_uncond": "ε̂ unconditional",
    "eps_diff": "ε̂_c − ε̂_u (guidance direction)",
}
# Terms that live on the image scale [-1, 1]; the others are noise-like (zero-mean, any scale).
IMAGE_TERMS = frozenset({"x_t", "x0", "mean", "x_prev"})

# x_(t_prev) = step(model_out, x_t, t, t_prev, sched, opts, noise) with the noise given.
NoisyStep = Callable[[torch.Tensor, torch.Tensor, int, int, NoiseSchedule, StepOptions, torch.Tensor], tuple]


def _ddpm(out, x, t, _t_prev, sched, o: StepOptions, noise):
    return ddpm_step(
        out, x, t, sched, o.variance, o.prediction, o.clip_x0, noise=noise, clip_range=o.clip_range
    )


def _ddim(out, x, t, t_prev, sched, o: StepOptions, noise, eta: float | None = None):
    eta = o.eta if eta is None else eta
    return ddim_step(
        out, x, t, t_prev, sched, eta, o.prediction, o.clip_x0, noise=noise, clip_range=o.clip_range
    )


# The samplers whose step splits into a deterministic part and sigma_t z: core.diffusion's step functions with
# an explicit noise argument. Euler ancestral is DDIM's step with eta = 1 (diffusion.STEP_FUNCTIONS says so;
# tests/test_terms.py checks every entry against the sampler itself).
NOISY_STEPS: dict[str, NoisyStep] = {
    "ddpm": _ddpm,
    "ddim": _ddim,
    "euler_a": lambda out, x, t, t_prev, sched, o, noise: _ddim(out, x, t, t_prev, sched, o, noise, eta=1.0),
}


def decomposes(sampler: str) -> bool:
    """Whether the sampler's step has a deterministic part and a separate noise term."""
    return sampler in NOISY_STEPS


def term_names(sampler: str, guided: bool) -> tuple[str, ...]:
    """The terms shown for a sampler (without mean and noise where it has no separate noise term)."""
    names = STEP_TERMS if decomposes(sampler) else tuple(n for n in STEP_TERMS if n not in ("mean", "noise"))
    return names + GUIDANCE_TERMS if guided else names


def step_terms(
    sampler: str,
    model_out: torch.Tensor,
    x_t: torch.Tensor,
    t: int,
    t_prev: int,
    sched: NoiseSchedule,
    opts: StepOptions,
    x_prev: torch.Tensor,
    x0: torch.Tensor,
    z: torch.Tensor | None = None,
    cond: torch.Tensor | None = None,
    uncond: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The terms of one step of `sampler` (term_names order), each shaped like x_t.

    x_prev and x0 are what the sampler's step returned for model_out; z is the standard normal noise that step
    drew (None: it drew none, and the noise term is 0); cond and uncond are the model's two outputs under guidance. Also returns
    "sigma" (shape (B,)): the noise scale sigma_t of the step (0 where it adds no noise).
    """
    tt = torch.full((x_t.shape[0],), int(t), device=x_t.device, dtype=torch.long)
    eps, _ = split_prediction(model_out, x_t, tt, sched, opts.prediction)
    terms = {"x_t": x_t, "eps": eps, "x0": x0}
    if decomposes(sampler):
        step = NOISY_STEPS[sampler]
        mean, _ = step(model_out, x_t, t, t_prev, sched, opts, torch.zeros_like(x_t))
        unit, _ = step(model_out, x_t, t, t_prev, sched, opts, torch.ones_like(x_t))
        # the step is affine in its noise: what noise = 1 adds is sigma_t (one number per image)
        sigma = (unit - mean).flatten(1).mean(1)
        terms["mean"] = mean
        noise = torch.zeros_like(x_t) if z is None else sigma.view(-1, 1, 1, 1) * z
        terms["noise"] = noise
        terms["sigma"] = sigma
    terms["x_prev"] = x_prev
    if cond is not None and uncond is not None:
        eps_c, _ = split_prediction(cond, x_t, tt, sched, opts.prediction)
        eps_u, _ = split_prediction(uncond, x_t, tt, sched, opts.prediction)
        terms.update(eps_cond=eps_c, eps_uncond=eps_u, eps_diff=eps_c - eps_u)
    return terms


def rms(x: torch.Tensor) -> torch.Tensor:
    """The norm of each image of a batch per pixel: ||x|| / sqrt(C H W), shape (B,). An image of pure
    standard noise has 1; an image in [-1, 1] at most 1."""
    return x.float().flatten(1).pow(2).mean(1).sqrt()


def display_gain(name: str, norm: torch.Tensor) -> torch.Tensor:
    """The factor an image of term `name` is multiplied by to be shown in [-1, 1]: 1 for the image-scale terms,
    1 / (3 rms) for the noise-like ones (so +-3 standard deviations fill the range), shape (B,)."""
    if name in IMAGE_TERMS:
        return torch.ones_like(norm)
    return 1.0 / (3.0 * norm.clamp(min=1e-8))
