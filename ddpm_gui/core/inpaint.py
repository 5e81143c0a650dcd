"""Inpainting with an unconditional (or class-conditional) DDPM: RePaint (Lugmayr et al. 2022, "RePaint:
Inpainting using Denoising Diffusion Probabilistic Models", Algorithm 1). Pure tensor math, no Qt.

The model is never trained for inpainting. At every reverse step the region the user keeps is replaced by
the original image noised to the same level, so the model only ever fills in the painted region, in
agreement with a "known" part that carries exactly the noise the chain expects there:

    x_(t-1) = keep * x_known(t-1) + (1 - keep) * x_unknown(t-1)
    x_known(t-1) ~ q(x_(t-1) | x_0)   (DDPM eq. 4; the clean image itself after the last step)
    x_unknown(t-1) ~ p(x_(t-1) | x_t)  (one ancestral DDPM step)

Pasting alone harmonises poorly: the known part enters each step without having seen the generated one.
RePaint's resampling lets the two mix: every `jump_length` steps the chain goes back up `jump_length` steps
by forward diffusion q(x_t | x_(t-1)) (DDPM eq. 2) and denoises them again, `resamples` times.

Levels follow core.schedule: level t is an image distributed as q(x_t | x_0) (alpha_bars[t]); level -1 is
the clean image. A reverse move t -> t-1 calls the model at t; a forward move t -> t+1 adds beta_(t+1).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ddpm_gui.core.diffusion import Denoiser, ddpm_step, q_sample, q_step
from ddpm_gui.core.schedule import NoiseSchedule
from ddpm_gui.errors import ConfigError

MAX_RESAMPLES = 50


def repaint_schedule(t_start: int, jump_length: int = 0, resamples: int = 0) -> list[int]:
    """The levels the chain visits, from t_start down to -1 (RePaint's `get_schedule_jump`).

    Jump points are the levels 0, j, 2j, ... below t_start + 1 - j; on reaching one, the chain goes back up
    j levels and comes down again, `resamples` times. jump_length = 0 or resamples = 0: every level once,
    t_start + 1 reverse moves (plain RePaint, no resampling).
    """
    if t_start < 0:
        raise ConfigError(f"The starting step must be at least 0, got {t_start}.")
    if jump_length < 0 or resamples < 0:
        raise ConfigError("The jump length and the number of resamples must be 0 or more.")
    if resamples > MAX_RESAMPLES:
        raise ConfigError(f"At most {MAX_RESAMPLES} resamples, got {resamples}.")
    jumps_left: dict[int, int] = {}
    if jump_length > 0 and resamples > 0:
        if jump_length > t_start:
            raise ConfigError(
                f"The jump length must be at most {t_start} (the starting step), got {jump_length}."
            )
        jumps_left = dict.fromkeys(range(0, t_start + 1 - jump_length, jump_length), resamples)
    levels = [t_start]
    t = t_start
    while t >= 0:
        t -= 1
        levels.append(t)
        if jumps_left.get(t, 0) > 0:
            jumps_left[t] -= 1
            for _ in range(jump_length):
                t += 1
                levels.append(t)
    return levels


def model_calls(levels: list[int]) -> int:
    """The number of reverse moves (each one model call per image) of a schedule."""
    return sum(b < a for a, b in zip(levels, levels[1:], strict=False))


def keep_mask(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The painted `mask` (1 where the image is regenerated; (H, W), (1|B, H, W) or (1|B, 1, H, W), bool or
    float in [0, 1]) as the weight of the known part, `keep = 1 - mask`, broadcastable over `like`."""
    m = mask.to(device=like.device, dtype=like.dtype)
    if m.dim() == 2:
        m = m[None, None]
    elif m.dim() == 3:
        m = m[:, None]
    if m.dim() != 4 or m.shape[-2:] != like.shape[-2:] or m.shape[1] not in (1, like.shape[1]):
        raise ConfigError(
            f"The mask ({tuple(mask.shape)}) does not fit the images ({tuple(like.shape)}): paint it on the "
            "image it belongs to."
        )
    return 1 - m.clamp(0, 1)


def known_at(
    x0: torch.Tensor, level: int, sched: NoiseSchedule, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The known part at `level`: q(x_level | x_0), and x_0 itself at level -1 (no noise is left)."""
    if level < 0:
        return x0
    return q_sample(x0, level, sched, generator=generator)[0]


def paste(x: torch.Tensor, known: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """keep * known + (1 - keep) * x: the known part over the generated one."""
    return keep * known + (1 - keep) * x


def repaint_start(
    x0: torch.Tensor,
    mask: torch.Tensor,
    sched: NoiseSchedule,
    t_start: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The chain's first x: pure noise in the painted region, the original noised to t_start elsewhere."""
    t_start = sched.T - 1 if t_start is None else int(t_start)
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    return paste(noise, known_at(x0, t_start, sched, generator), keep_mask(mask, x0))


@dataclass
class InpaintStep:
    """One move of the RePaint chain."""

    index: int  # 0-based position in the chain
    total: int  # number of moves in the chain
    t: int  # the level this move started from
    t_next: int  # the level it reached: t - 1 (a reverse step) or t + 1 (a forward resampling step)
    x: torch.Tensor  # x at level t_next, the known part pasted in
    x0: torch.Tensor  # the last prediction of x_0 (kept through forward moves)

    @property
    def forward(self) -> bool:
        return self.t_next > self.t


def repaint_process(
    denoiser: Denoiser,
    x0: torch.Tensor,
    mask: torch.Tensor,
    sched: NoiseSchedule,
    t_start: int | None = None,
    jump_length: int = 0,
    resamples: int = 0,
    x_start: torch.Tensor | None = None,
    variance: str = "beta",
    prediction: str = "eps",
    clip_x0: bool = False,
    generator: torch.Generator | None = None,
    clip_range: float = 1.0,
) -> Iterator[InpaintStep]:
    """Regenerate the painted region of x0 ((B, C, H, W) in [-1, 1]; `mask` as keep_mask takes it) with the
    ancestral DDPM sampler, yielding every move of repaint_schedule(t_start, jump_length, resamples).

    x_start: the chain's first x (default repaint_start: pure noise where painted). The last x holds x0
    exactly outside the painted region.
    """
    T = sched.T
    t_start = T - 1 if t_start is None else int(t_start)
    if not 0 <= t_start < T:
        raise ConfigError(f"The starting step must lie in 0..{T - 1}, got {t_start}.")
    levels = repaint_schedule(t_start, jump_length, resamples)
    keep = keep_mask(mask, x0)
    x = repaint_start(x0, mask, sched, t_start, generator) if x_start is None else x_start
    x0_pred = x0
    B = x.shape[0]
    total = len(levels) - 1
    for i, (t, t_next) in enumerate(zip(levels, levels[1:], strict=False)):
        if t_next < t:
            tt = torch.full((B,), t, device=x.device, dtype=torch.long)
            unknown, x0_pred = ddpm_step(
                denoiser(x, tt),
                x,
                t,
                sched,
                variance=variance,
                prediction=prediction,
                clip_x0=clip_x0,
                generator=generator,
                clip_range=clip_range,
            )
            x = paste(unknown, known_at(x0, t_next, sched, generator), keep)
        else:  # resampling: back up one level, the whole image (RePaint's "undo")
            x = q_step(x, t_next, sched, generator=generator)
        yield InpaintStep(i, total, t, t_next, x, x0_pred)
