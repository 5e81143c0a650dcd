"""Noise schedules: how much noise each forward step adds.

Indexing follows the tutorial (and diffusers): a timestep `t` is a 0-based index into the arrays, so
`alpha_bars[t]` is the paper's alpha_bar_(t+1), the signal kept after t+1 forward steps. The GUI shows
1-based step numbers (step 0 = the clean image, step T = after all T steps).

The tutorial's schedule (linear beta 1e-4..0.04, T=100) ends at alpha_bar_T = 0.131: x_T still holds
sqrt(0.131) = 0.36 of x_0 while sampling starts from pure noise. `cosine` and `rescale_zero_snr` are
the two standard fixes (Nichol & Dhariwal 2021; Lin et al. 2023).
"""

from __future__ import annotations

import math

import torch

from ddpm_gui.core.spec import (  # noqa: F401 - re-exported: the schedule's public names
    BETA_MAX,
    BETA_MIN,
    SCHEDULE_KINDS,
    SCHEDULE_PRESETS,
    ScheduleConfig,
)


def _rescale_zero_terminal_snr(alpha_bars: torch.Tensor) -> torch.Tensor:
    """Lin et al. 2023, Algorithm 1: shift and scale sqrt(alpha_bar) so the last one is exactly 0
    and the first one is unchanged."""
    s = alpha_bars.sqrt()
    s0, sT = s[0].clone(), s[-1].clone()
    s = (s - sT) * s0 / (s0 - sT)
    return s**2


def _float32_arrays(c: ScheduleConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(betas, alpha_bars) as diffusers' schedulers compute them (DDPMScheduler.__init__, float32 throughout,
    squaredcos_cap_v2 through Python floats, zero terminal SNR by rescaling the betas), returned in float64."""
    T = c.T
    if c.kind == "linear":
        betas = torch.linspace(c.beta_start, c.beta_end, T, dtype=torch.float32)
    elif c.kind == "quadratic":
        betas = torch.linspace(c.beta_start**0.5, c.beta_end**0.5, T, dtype=torch.float32) ** 2
    else:

        def f(t: float) -> float:
            return math.cos((t + c.cosine_s) / (1 + c.cosine_s) * math.pi / 2) ** 2

        betas = torch.tensor(
            [min(1 - f((i + 1) / T) / f(i / T), BETA_MAX) for i in range(T)], dtype=torch.float32
        )
    if c.rescale_zero_snr:
        ab_sqrt = torch.cumprod(1.0 - betas, 0).sqrt()
        s0, sT = ab_sqrt[0].clone(), ab_sqrt[-1].clone()
        ab = ((ab_sqrt - sT) * (s0 / (s0 - sT))) ** 2
        betas = 1 - torch.cat([ab[0:1], ab[1:] / ab[:-1]])
    alpha_bars = torch.cumprod(1.0 - betas, 0)
    return betas.double(), alpha_bars.double()


# Every per-timestep array of a NoiseSchedule (what `to()` copies).
ARRAYS = (
    "betas",
    "alphas",
    "alpha_bars",
    "alpha_bars_prev",
    "snr",
    "posterior_variance",
    "sqrt_alpha_bars",
    "sqrt_one_minus_alpha_bars",
    "sqrt_recip_alphas",
    "eps_coef",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "sqrt_betas",
    "sqrt_posterior_variance",
)


class NoiseSchedule:
    """The arrays of one schedule (float64 on the CPU; `to()` gives float32 copies on a device).

    betas[t], alphas[t] = 1 - betas[t], alpha_bars[t] = prod(alphas[:t+1]), snr[t] = ab / (1 - ab),
    alpha_bars_prev[t] = alpha_bars[t-1] (1 for t = 0),
    posterior_variance[t] = beta~_t = (1 - ab_prev) / (1 - ab) * beta_t   (DDPM eq. 7).

    The coefficients the reverse steps use are computed here once, in float64, so that a float32 copy holds
    each one correctly rounded (recomputing them in float32 at every step loses up to 2e-4 at t = 0):
    sqrt_alpha_bars = sqrt(ab), sqrt_one_minus_alpha_bars = sqrt(1 - ab), sqrt_recip_alphas = 1/sqrt(alpha),
    eps_coef = beta / sqrt(1 - ab) (DDPM eq. 11), posterior_mean_coef1 = sqrt(ab_prev) beta / (1 - ab) and
    posterior_mean_coef2 = sqrt(alpha) (1 - ab_prev) / (1 - ab) (the posterior mean of eq. 7),
    sqrt_betas and sqrt_posterior_variance (the two sigma_t of DDPM section 3.2).
    `alpha_bar(t)` gives ab as a float64 Python number (any copy), for coefficients that pair two timesteps.
    """

    # the arrays of ARRAYS, (T,) each, set by _set() and to()
    betas: torch.Tensor
    alphas: torch.Tensor
    alpha_bars: torch.Tensor
    alpha_bars_prev: torch.Tensor
    snr: torch.Tensor
    posterior_variance: torch.Tensor
    sqrt_alpha_bars: torch.Tensor
    sqrt_one_minus_alpha_bars: torch.Tensor
    sqrt_recip_alphas: torch.Tensor
    eps_coef: torch.Tensor
    posterior_mean_coef1: torch.Tensor
    posterior_mean_coef2: torch.Tensor
    sqrt_betas: torch.Tensor
    sqrt_posterior_variance: torch.Tensor

    def __init__(self, config: ScheduleConfig | None = None, device: torch.device | str = "cpu"):
        self.config = (config or ScheduleConfig()).validate()
        c = self.config
        T = c.T
        if c.float32:
            self._set(*_float32_arrays(c), device)
            return
        if c.kind == "linear":
            betas = torch.linspace(c.beta_start, c.beta_end, T, dtype=torch.float64)
            alpha_bars = torch.cumprod(1.0 - betas, 0)
        elif c.kind == "quadratic":
            betas = torch.linspace(c.beta_start**0.5, c.beta_end**0.5, T, dtype=torch.float64) ** 2
            alpha_bars = torch.cumprod(1.0 - betas, 0)
        else:  # cosine, Nichol & Dhariwal 2021 eq. 17, betas clipped at 0.999 as in the paper
            steps = torch.arange(T + 1, dtype=torch.float64) / T
            f = torch.cos((steps + c.cosine_s) / (1 + c.cosine_s) * math.pi / 2) ** 2
            ab = f / f[0]
            betas = (1 - ab[1:] / ab[:-1]).clamp(max=0.999)
            alpha_bars = torch.cumprod(1.0 - betas, 0)
        if c.rescale_zero_snr:
            alpha_bars = _rescale_zero_terminal_snr(alpha_bars)
            prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bars[:-1]])
            # where alpha_bar already underflowed to 0 before T (large betas, long schedules) the step ratio
            # is 0/0: no signal is left there, so beta = 1 (found by tests/test_properties.py)
            has_signal = prev > 0
            betas = 1 - torch.where(has_signal, alpha_bars / torch.where(has_signal, prev, 1.0), 0.0)
        self._set(betas, alpha_bars, device)

    def _set(self, betas: torch.Tensor, alpha_bars: torch.Tensor, device) -> None:
        self.T = len(betas)
        self.betas = betas.to(device)
        self.alphas = (1.0 - betas).to(device)
        self.alpha_bars = alpha_bars.to(device)
        ab_prev = torch.cat([torch.ones(1, dtype=alpha_bars.dtype), alpha_bars[:-1]])
        self.alpha_bars_prev = ab_prev.to(device)
        self._alpha_bars64 = alpha_bars.double().cpu().tolist()  # Python floats: no device reads
        ab, alphas = alpha_bars.double().cpu(), (1.0 - betas).double().cpu()
        ab_prev, b = ab_prev.double().cpu(), betas.double().cpu()
        posterior_variance = (1 - ab_prev) / (1 - ab) * b
        derived = {
            "snr": ab / (1 - ab),  # inf where alpha_bar = 1
            "posterior_variance": posterior_variance,
            "sqrt_alpha_bars": ab.sqrt(),
            "sqrt_one_minus_alpha_bars": (1 - ab).sqrt(),
            "sqrt_recip_alphas": alphas.rsqrt(),  # inf where alpha = 0 (the last step of a zero-SNR schedule)
            "eps_coef": b / (1 - ab).sqrt(),
            "posterior_mean_coef1": ab_prev.sqrt() * b / (1 - ab),
            "posterior_mean_coef2": alphas.sqrt() * (1 - ab_prev) / (1 - ab),
            "sqrt_betas": b.sqrt(),
            "sqrt_posterior_variance": posterior_variance.sqrt(),
        }
        for name, value in derived.items():
            setattr(self, name, value.to(device=device, dtype=alpha_bars.dtype))

    @property
    def device(self) -> torch.device:
        return self.betas.device

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> NoiseSchedule:
        """A copy whose arrays live on `device` as `dtype` (float32 for the model's math)."""
        new = object.__new__(NoiseSchedule)
        new.config = self.config
        new.T = self.T
        new._alpha_bars64 = self._alpha_bars64
        for name in ARRAYS:
            setattr(new, name, getattr(self, name).to(device=device, dtype=dtype))
        return new

    def alpha_bar(self, t: int) -> float:
        """alpha_bar[t] in float64 (from the float64 arrays even on a float32 copy); t = -1 means the clean
        image (alpha_bar = 1). For the coefficients of a step between two timesteps (DDIM, DPM-Solver++)."""
        return 1.0 if t < 0 else self._alpha_bars64[t]

    def terminal_signal(self) -> float:
        """sqrt(alpha_bar_T): the fraction of x_0 still in x_T. 0 for a schedule that ends in noise."""
        return float(self.alpha_bars[-1].sqrt())

    def summary(self) -> dict:
        """Numbers a person wants to see beside the plots."""
        ab = self.alpha_bars.double().cpu()
        return {
            "T": self.T,
            "beta_min": float(self.betas.min()),
            "beta_max": float(self.betas.max()),
            "alpha_bar_T": float(ab[-1]),
            "signal_left_at_T": float(ab[-1].sqrt()),
            "alpha_bar_mid": float(ab[(self.T - 1) // 2]),
        }


def gather(consts: torch.Tensor, t: torch.Tensor | int, ndim: int = 4) -> torch.Tensor:
    """consts[t] shaped to broadcast over an image batch: (B,) -> (B, 1, 1, 1)."""
    if not torch.is_tensor(t):
        t = torch.tensor([t], device=consts.device, dtype=torch.long)
    t = t.to(consts.device).long().reshape(-1)
    return consts.gather(-1, t).reshape(-1, *([1] * (ndim - 1)))
