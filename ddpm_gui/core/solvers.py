"""Multistep samplers: a solver object per reverse chain that remembers what earlier steps predicted.

A solver is called exactly like a diffusion.STEP_FUNCTIONS entry, (model_out, x_t, t, t_prev, sched, opts) ->
(x_(t_prev), predicted x_0), with t_prev = -1 meaning the clean image; diffusion.chain_step makes a fresh one
for every chain, so reverse_process and its frames stay the same for every sampler.

DPM-Solver++(2M): Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic
Models", Algorithm 2 (multistep, second order, data prediction). In the schedule's terms alpha_t = sqrt(ab_t),
sigma_t = sqrt(1 - ab_t), lambda_t = log(alpha_t / sigma_t), and with D the (clipped) predicted x_0:

    h_i = lambda_(t_i) - lambda_(t_(i-1)),   r_i = h_(i-1) / h_i
    D_i = (1 + 1/(2 r_i)) D(t_(i-1)) - 1/(2 r_i) D(t_(i-2))              (first step: D_i = D(t_(i-1)))
    x_(t_i) = sigma_(t_i) / sigma_(t_(i-1)) x_(t_(i-1)) - alpha_(t_i) (exp(-h_i) - 1) D_i

As diffusers' DPMSolverMultistepScheduler does (lower_order_final, final_sigmas_type="zero"), the step to the
clean image is first order: it lands on the last predicted x_0. At the end of a zero-terminal-SNR schedule
(ab = 0) lambda = -inf: the first step's exp(-h) is 0, written below without the infinities, and the next
step's 1/r = h / h_(i-1) = 0, i.e. first order again (diffusers instead moves ab_T to 2^-24).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ddpm_gui.core.diffusion import StepOptions, split_prediction
from ddpm_gui.core.schedule import NoiseSchedule


def log_snr(alpha_bar: float) -> float:
    """lambda = log(alpha / sigma) = log(ab / (1 - ab)) / 2, -inf at ab = 0 and +inf at ab = 1."""
    if alpha_bar <= 0.0:
        return -math.inf
    if alpha_bar >= 1.0:
        return math.inf
    return 0.5 * (math.log(alpha_bar) - math.log1p(-alpha_bar))


class DPMSolverPP2M:
    """DPM-Solver++(2M) for one chain (module docstring). Coefficients in float64 from the schedule."""

    def __init__(self) -> None:
        self._prev: tuple[float, torch.Tensor] | None = None  # (lambda, D) of the previous step

    def __call__(
        self,
        model_out: torch.Tensor,
        x: torch.Tensor,
        t: int,
        t_prev: int,
        sched: NoiseSchedule,
        opts: StepOptions,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        t, t_prev = int(t), int(t_prev)
        tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        _eps, x0 = split_prediction(model_out, x, tt, sched, opts.prediction)
        if (
            opts.clip_x0
        ):  # the data prediction is what the solver integrates: clip it (diffusers' thresholding)
            x0 = x0.clamp(-opts.clip_range, opts.clip_range)
        ab_s, ab_t = sched.alpha_bar(t), sched.alpha_bar(t_prev)
        lam_s = log_snr(ab_s)
        d = x0
        if self._prev is not None and t_prev >= 0:
            lam_prev, x0_prev = self._prev
            h, h_prev = log_snr(ab_t) - lam_s, lam_s - lam_prev
            half_inv_r = 0.5 * h / h_prev if math.isfinite(h) and h_prev > 0 else 0.0  # 0 for h_prev = inf
            if half_inv_r:
                d = (1 + half_inv_r) * x0 - half_inv_r * x0_prev
        self._prev = (lam_s, x0)
        # sigma_t / sigma_s x - alpha_t (exp(-h) - 1) D, with exp(-h) = alpha_s sigma_t / (sigma_s alpha_t)
        ratio = math.sqrt((1 - ab_t) / (1 - ab_s))
        return ratio * x + (math.sqrt(ab_t) - math.sqrt(ab_s) * ratio) * d, x0


# name (core.spec.SAMPLERS) -> a new solver for one chain
MULTISTEP_SOLVERS: dict[str, Callable[[], Callable[..., tuple[torch.Tensor, torch.Tensor]]]] = {
    "dpm++2m": DPMSolverPP2M,
}
