"""Sampling that records every term of every step (core/terms.py) beside the frames of sample_frames. No Qt.

The chain is core.diffusion.reverse_process itself, driven by a denoiser that also reports what it saw: the
x_t it was given, the model's output (and, under classifier-free guidance, the conditional and unconditional
outputs it combined) and the random generator's state just before the step drew its noise. From that state
the step's z is drawn again, so the terms are those of the very step the sampler took, and the frames are
the same as sample_frames' for the same config and seed.

What is kept is bounded: the norm of every term for every image at every step (a few numbers a step), and the
term images (uint8, as shown) for the first `images` images at the frames kept for the player only.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from ddpm_gui.core.diffusion import ReverseStep, StepOptions, ddim_timesteps, reverse_process, to_uint8
from ddpm_gui.core.spec import SAMPLERS
from ddpm_gui.core.terms import decomposes, display_gain, rms, step_terms, term_names
from ddpm_gui.engine.sampler import ModelBundle, SampleConfig, SampleFrame, make_denoiser
from ddpm_gui.engine.threads import sampling_threads

# At most this much memory for the term images of one run (uint8; the norms are not counted: a few KB).
TERMS_BUDGET_BYTES = 64 * 2**20

# (x, t) -> (the output the sampler uses, conditional output, unconditional output); the last two are None
# unless the output combines them (classifier-free guidance with w != 1).
Outputs = Callable[
    [torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]
]


@dataclass
class TermsFrame(SampleFrame):
    """A SampleFrame with the terms of its step (core.terms.term_names order in `names`)."""

    names: tuple[str, ...] = ()
    # name -> (m, H, W, 3) uint8: the term as shown, for the first m images of the batch
    images: dict[str, np.ndarray] = field(default_factory=dict)
    gains: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (m,): what the image was scaled by
    sigma: np.ndarray | None = None  # (N,) sigma_t of this step; None: the sampler has no noise term
    # the steps since the previous frame, this one included: their timesteps (k,) and every term's norm
    # (core.terms.rms) for every image, (k, len(names), N)
    norm_ts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    norms: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0), np.float32))


def is_guided(bundle: ModelBundle, class_label: int | None, guidance: float) -> bool:
    """Whether make_denoiser combines a conditional and an unconditional output."""
    return (
        bundle.num_classes is not None
        and bundle.null_class is not None
        and class_label is not None
        and guidance != 1.0
    )


def guided_outputs(bundle: ModelBundle, n: int, class_label: int | None, guidance: float) -> Outputs:
    """make_denoiser's output, with the two outputs guidance combined: out = uncond + w (cond - uncond),
    computed exactly as make_denoiser computes it (one batched call of both halves)."""
    if class_label is None or bundle.num_classes is None or not is_guided(bundle, class_label, guidance):
        plain = make_denoiser(bundle, n, class_label, guidance)
        return lambda x, t: (plain(x, t), None, None)
    model, dev = bundle.model, bundle.device
    y = torch.full((n,), int(class_label), device=dev, dtype=torch.long)
    null = torch.full((n,), bundle.num_classes, device=dev, dtype=torch.long)

    def outputs(x: torch.Tensor, t: torch.Tensor):
        out = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]))
        cond, uncond = out.chunk(2)
        return uncond + guidance * (cond - uncond), cond, uncond

    return outputs


def term_images_kept(n: int, names: int, size: int, frames: int, budget: int | None = None) -> int:
    """How many images (the first ones of the batch) get their term images kept at `frames` frames, within
    `budget` bytes (None: TERMS_BUDGET_BYTES); always at least one."""
    budget = TERMS_BUDGET_BYTES if budget is None else budget
    per_image = max(1, frames * names * size * size * 3)
    return max(1, min(n, budget // per_image))


def sample_frames_with_terms(
    bundle: ModelBundle,
    cfg: SampleConfig | None = None,
    stop: threading.Event | None = None,
    images: int | None = None,
) -> Iterator[TermsFrame]:
    """sample_frames (the same frames for the same config), each frame a TermsFrame. `images`: how many of the
    batch's first images get term images (None: term_images_kept's answer for this run)."""
    cfg = (cfg or SampleConfig()).validate(bundle)
    gen = torch.Generator(device=bundle.device)
    gen.manual_seed(int(cfg.seed))
    s = bundle.image_size
    x = torch.randn((cfg.n, bundle.image_channels, s, s), generator=gen, device=bundle.device)
    yield from _term_frames(bundle, cfg, x, gen, stop, images)


def _timesteps(bundle: ModelBundle, cfg: SampleConfig) -> list[int]:
    """The timesteps reverse_process visits from pure noise."""
    T = bundle.schedule.T
    strided = SAMPLERS[cfg.sampler].strided
    return ddim_timesteps(T, cfg.steps if strided else T)


def term_steps(
    bundle: ModelBundle, cfg: SampleConfig, x_start: torch.Tensor, gen: torch.Generator
) -> Iterator[tuple[ReverseStep, dict[str, torch.Tensor]]]:
    """Every step of the chain sample_frames runs (cfg validated; x_start and gen as it makes them), with its
    terms (core.terms.step_terms). Call it under torch.inference_mode()."""
    sched = bundle.schedule.to(bundle.device)
    outputs = guided_outputs(bundle, x_start.shape[0], cfg.class_label, cfg.guidance)
    ts = _timesteps(bundle, cfg)
    opts = StepOptions(
        cfg.eta, cfg.variance or bundle.variance, bundle.prediction, bool(cfg.clip_x0), gen, bundle.clip_range
    )
    seen: dict = {}

    def denoiser(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out, cond, uncond = outputs(x, t)
        # the step draws its noise right after this call: the state now gives the same z again
        seen.update(x=x, out=out, cond=cond, uncond=uncond, state=gen.get_state())
        return out

    chain = reverse_process(
        denoiser,
        x_start,
        sched,
        sampler=cfg.sampler,
        steps=cfg.steps if SAMPLERS[cfg.sampler].strided else None,
        eta=opts.eta,
        variance=opts.variance,
        prediction=opts.prediction,
        clip_x0=opts.clip_x0,
        generator=gen,
        clip_range=opts.clip_range,
    )
    for st in chain:
        t_prev = ts[st.index + 1] if st.index + 1 < len(ts) else -1
        z = _redrawn_noise(seen["x"], seen["state"], gen) if decomposes(cfg.sampler) else None
        terms = step_terms(
            cfg.sampler, seen["out"], seen["x"], st.t, t_prev, sched, opts, st.x, st.x0, z,
            seen["cond"], seen["uncond"],
        )  # fmt: skip
        yield st, terms


def _term_frames(
    bundle: ModelBundle,
    cfg: SampleConfig,
    x_start: torch.Tensor,
    gen: torch.Generator,
    stop: threading.Event | None,
    images: int | None,
) -> Iterator[TermsFrame]:
    n = x_start.shape[0]
    names = term_names(cfg.sampler, is_guided(bundle, cfg.class_label, cfg.guidance))
    ts = _timesteps(bundle, cfg)
    if images is None:
        frames = -(-len(ts) // cfg.every) + 1
        images = term_images_kept(n, len(names), bundle.image_size, frames)
    m = max(1, min(int(images), n))
    pending: list[torch.Tensor] = []
    with torch.inference_mode(), sampling_threads(bundle.device) as recheck_threads:
        for st, terms in term_steps(bundle, cfg, x_start, gen):
            pending.append(torch.stack([rms(terms[k]) for k in names]))
            last = st.index == st.total - 1
            if last or st.index % cfg.every == 0:
                yield _frame(st, last, names, terms, m, pending, ts)
                pending = []
            if stop is not None and stop.is_set():
                return
            recheck_threads()


def _redrawn_noise(x: torch.Tensor, state: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The z a step draws from a generator in `state` (as core.diffusion draws it), leaving `gen` as it is."""
    g = torch.Generator(device=gen.device)
    g.set_state(state)
    return torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)


def _frame(st, last: bool, names, terms: dict, m: int, pending: list, ts: list[int]) -> TermsFrame:
    """The frame of step `st`: the host reads its images and the norms gathered since the last frame."""
    shown, gains = {}, {}
    for k in names:
        part = terms[k][:m]
        gain = display_gain(k, rms(part))
        shown[k] = to_uint8(part * gain.view(-1, 1, 1, 1)).numpy()
        gains[k] = gain.cpu().numpy()
    sigma = terms.get("sigma")
    k = len(pending)
    return TermsFrame(
        st.index,
        st.total,
        st.t,
        to_uint8(st.x).numpy(),
        to_uint8(st.x0).numpy(),
        last,
        names=tuple(names),
        images=shown,
        gains=gains,
        sigma=None if sigma is None else sigma.float().cpu().numpy(),
        norm_ts=np.asarray(ts[st.index - k + 1 : st.index + 1], np.int64),
        norms=torch.stack(pending).float().cpu().numpy(),
    )
