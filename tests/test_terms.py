"""Every term of a reverse step (core/terms.py, engine/terms.py): the terms recombine into the sampler's own
x_(t-1), match the papers' formulas, and the recording chain gives exactly sample_frames' frames."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from ddpm_gui.core.diffusion import reverse_process
from ddpm_gui.core.schedule import NoiseSchedule, ScheduleConfig
from ddpm_gui.core.spec import SAMPLERS
from ddpm_gui.core.terms import GUIDANCE_TERMS, STEP_TERMS, decomposes, rms, term_names
from ddpm_gui.engine.sampler import ModelBundle, SampleConfig, make_denoiser, sample_frames
from ddpm_gui.engine.terms import (
    TermsFrame,
    guided_outputs,
    sample_frames_with_terms,
    term_images_kept,
    term_steps,
)

pytestmark = pytest.mark.usefixtures("one_thread")

T, SIZE, N, CLASSES = 12, 8, 3, 3


class Toy(nn.Module):
    """A cheap model whose output depends on x, t and the class (with a null row), never 0."""

    def __init__(self, num_classes: int | None):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.mix = nn.Parameter(torch.randn(3, 3, generator=g) * 0.5)
        rows = (num_classes + 1) if num_classes else 1
        self.emb = nn.Parameter(torch.randn(rows, 3, generator=g) * 0.4)

    def forward(self, x, t, y=None):
        h = torch.einsum("oc,bchw->bohw", self.mix, x) + 0.05 * t.float().view(-1, 1, 1, 1)
        if y is not None:
            h = h + self.emb[y].view(-1, 3, 1, 1)
        return torch.tanh(h) + 0.3 * x


def toy_bundle(prediction: str = "eps", num_classes: int | None = CLASSES, null: bool = True) -> ModelBundle:
    return ModelBundle(
        Toy(num_classes).eval(), NoiseSchedule(ScheduleConfig(T=T)), prediction, SIZE, num_classes, None, 0,
        "toy", "test", torch.device("cpu"), has_null_class=null,
    )  # fmt: skip


# (sampler, variance, eta): DDPM with both variances, DDIM deterministic and not, and every other sampler
CASES = [("ddpm", "beta", 0.0), ("ddpm", "posterior", 0.0), ("ddim", "beta", 0.0), ("ddim", "beta", 0.6)] + [
    (s, "beta", 0.0) for s in SAMPLERS if s not in ("ddpm", "ddim")
]


def config(sampler, variance, eta, guided: bool, clip: bool = True, **kw) -> SampleConfig:
    return SampleConfig(
        n=N, sampler=sampler, steps=5, eta=eta, variance=variance, seed=7, clip_x0=clip,
        class_label=1 if guided else None, guidance=2.5 if guided else 1.0, **kw,
    )  # fmt: skip


def float_chain(bundle, cfg):
    """The sampler's own chain, float x after every step (make_denoiser, reverse_process, the seed's noise)."""
    cfg = cfg.validate(bundle)
    gen = torch.Generator().manual_seed(cfg.seed)
    x = torch.randn((cfg.n, 3, SIZE, SIZE), generator=gen)
    chain = reverse_process(
        make_denoiser(bundle, cfg.n, cfg.class_label, cfg.guidance), x, bundle.schedule.to("cpu"),
        sampler=cfg.sampler, steps=cfg.steps if SAMPLERS[cfg.sampler].strided else None, eta=cfg.eta,
        variance=cfg.variance, prediction=bundle.prediction, clip_x0=cfg.clip_x0, generator=gen,
    )  # fmt: skip
    with torch.inference_mode():
        return [st.x.clone() for st in chain]


def recorded(bundle, cfg):
    cfg = cfg.validate(bundle)
    gen = torch.Generator().manual_seed(cfg.seed)
    x = torch.randn((cfg.n, 3, SIZE, SIZE), generator=gen)
    with torch.inference_mode():
        return [
            (st, {k: v.clone() for k, v in terms.items()}) for st, terms in term_steps(bundle, cfg, x, gen)
        ]


@pytest.mark.parametrize("guided", [False, True], ids=["plain", "guided"])
@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize(("sampler", "variance", "eta"), CASES)
def test_terms_recombine_into_the_samplers_step(sampler, variance, eta, prediction, guided):
    bundle = toy_bundle(prediction)
    cfg = config(sampler, variance, eta, guided)
    theirs = float_chain(bundle, cfg)
    steps = recorded(bundle, cfg)
    assert len(steps) == len(theirs)
    names = term_names(sampler, guided)
    x_t = steps[0][1]["x_t"]
    for (_st, terms), x_prev in zip(steps, theirs, strict=True):
        assert set(names) <= set(terms)
        torch.testing.assert_close(terms["x_t"], x_t)  # the x_t of a step is the x of the one before
        torch.testing.assert_close(terms["x_prev"], x_prev, rtol=0, atol=0)  # the sampler's own step
        if decomposes(sampler):
            # deterministic part + sigma_t z, from z drawn again: the sampler's x_(t-1)
            torch.testing.assert_close(terms["mean"] + terms["noise"], x_prev, rtol=1e-5, atol=2e-6)
        else:
            assert "mean" not in terms and "noise" not in terms
        if guided:  # what the sampler used is eps_u + w (eps_c - eps_u)
            torch.testing.assert_close(
                terms["eps_uncond"] + 2.5 * terms["eps_diff"], terms["eps"], atol=2e-6, rtol=1e-5
            )
        x_t = x_prev
    noisy = sampler in ("ddpm", "euler_a") or (sampler == "ddim" and eta > 0)
    if decomposes(sampler):
        sigmas = [float(terms["sigma"].max()) for _, terms in steps]
        assert (max(sigmas) > 1e-3) == noisy, sigmas
        assert sigmas[-1] == pytest.approx(0.0, abs=1e-6)  # the last step adds no noise


def _paper_schedule():
    betas = NoiseSchedule(ScheduleConfig(T=T)).betas.double()
    ab = torch.cumprod(1 - betas, 0)
    return betas, 1 - betas, ab


@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("variance", ["beta", "posterior"])
def test_ddpm_terms_are_the_papers(variance, clip):
    """DDPM eq. 11 (unclipped) / eq. 7 (posterior mean of the clipped x_0), sigma^2 = beta_t or beta~_t."""
    bundle = toy_bundle("eps", None)
    cfg = config("ddpm", variance, 0.0, False, clip=clip)
    betas, alphas, ab = _paper_schedule()
    gen = torch.Generator().manual_seed(cfg.seed)
    x = torch.randn((N, 3, SIZE, SIZE), generator=gen).double()
    for st, terms in recorded(bundle, cfg):
        t = st.t
        ab_prev = ab[t - 1] if t > 0 else torch.tensor(1.0, dtype=torch.float64)
        with torch.no_grad():
            eps = bundle.model(x.float(), torch.full((N,), t)).double()
        torch.testing.assert_close(terms["eps"].double(), eps, atol=1e-6, rtol=1e-6)
        x0 = (x - (1 - ab[t]).sqrt() * eps) / ab[t].sqrt()  # eq. 15 solved for x_0
        if clip:
            x0 = x0.clamp(-1, 1)
            mean = (
                ab_prev.sqrt() * betas[t] / (1 - ab[t]) * x0
                + alphas[t].sqrt() * (1 - ab_prev) / (1 - ab[t]) * x
            )
        else:
            mean = (x - betas[t] / (1 - ab[t]).sqrt() * eps) / alphas[t].sqrt()
        var = betas[t] if variance == "beta" else (1 - ab_prev) / (1 - ab[t]) * betas[t]
        sigma = var.sqrt() if t > 0 else torch.tensor(0.0, dtype=torch.float64)
        z = torch.randn((N, 3, SIZE, SIZE), generator=gen).double() if t > 0 else torch.zeros_like(x)
        torch.testing.assert_close(terms["x0"].double(), x0, atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(terms["mean"].double(), mean, atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(terms["sigma"].double(), sigma.expand(N), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(terms["noise"].double(), sigma * z, atol=2e-6, rtol=1e-5)
        x = terms["x_prev"].double()


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_terms_are_the_papers(eta):
    """DDIM eq. 12: x_prev = sqrt(ab_prev) x0 + sqrt(1 - ab_prev - sigma^2) eps + sigma z, sigma from eq. 16."""
    bundle = toy_bundle("eps", None)
    cfg = config("ddim", "beta", eta, False, clip=False)
    _, _, ab = _paper_schedule()
    gen = torch.Generator().manual_seed(cfg.seed)
    x = torch.randn((N, 3, SIZE, SIZE), generator=gen).double()
    steps = recorded(bundle, cfg)
    ts = [st.t for st, _ in steps] + [-1]
    for i, (_st, terms) in enumerate(steps):
        t, t_prev = ts[i], ts[i + 1]
        ab_t = ab[t]
        ab_prev = ab[t_prev] if t_prev >= 0 else torch.tensor(1.0, dtype=torch.float64)
        eps = terms["eps"].double()
        x0 = (x - (1 - ab_t).sqrt() * eps) / ab_t.sqrt()
        sigma = eta * ((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev)).sqrt()
        mean = ab_prev.sqrt() * x0 + (1 - ab_prev - sigma**2).sqrt() * eps
        draws = eta > 0 and t_prev >= 0
        z = torch.randn((N, 3, SIZE, SIZE), generator=gen).double() if draws else torch.zeros_like(x)
        torch.testing.assert_close(terms["mean"].double(), mean, atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(terms["noise"].double(), sigma * z, atol=2e-6, rtol=1e-5)
        torch.testing.assert_close(terms["x_prev"].double(), mean + sigma * z, atol=3e-5, rtol=1e-5)
        x = terms["x_prev"].double()


@pytest.mark.parametrize(
    ("classes", "null", "label", "w"),
    [(CLASSES, True, 1, 3.0), (CLASSES, True, 1, 1.0), (CLASSES, True, None, 3.0), (CLASSES, False, 2, 3.0),
     (None, True, None, 1.0)],
)  # fmt: skip
def test_guided_outputs_are_make_denoisers(classes, null, label, w):
    bundle = toy_bundle("eps", classes, null)
    x = torch.randn(N, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    t = torch.full((N,), 5)
    with torch.inference_mode():
        out, cond, uncond = guided_outputs(bundle, N, label, w)(x, t)
        assert torch.equal(out, make_denoiser(bundle, N, label, w)(x, t))  # bit for bit
        guided = classes is not None and null and label is not None and w != 1.0
        assert (cond is not None) == guided and (uncond is not None) == guided
        if guided:
            assert torch.equal(cond, bundle.model(x, t, torch.full((N,), label)))
            assert torch.equal(uncond, bundle.model(x, t, torch.full((N,), CLASSES)))
            assert not torch.allclose(cond, uncond)  # the test's model tells the classes apart


@pytest.mark.parametrize("guided", [False, True], ids=["plain", "guided"])
@pytest.mark.parametrize(("sampler", "variance", "eta"), CASES)
def test_frames_are_sample_frames_with_bounded_terms(sampler, variance, eta, guided):
    bundle = toy_bundle("v")
    cfg = config(sampler, variance, eta, guided, every=2)
    ours = list(sample_frames_with_terms(bundle, cfg, images=2))
    theirs = list(sample_frames(bundle, cfg))
    assert len(ours) == len(theirs) >= 2
    names = term_names(sampler, guided)
    for a, b in zip(ours, theirs, strict=True):
        assert isinstance(a, TermsFrame) and (a.index, a.total, a.t, a.final) == (
            b.index,
            b.total,
            b.t,
            b.final,
        )
        np.testing.assert_array_equal(a.xt, b.xt)
        np.testing.assert_array_equal(a.x0, b.x0)
        assert a.names == names and set(a.images) == set(names)
        for k in names:  # term images for the first 2 images only
            assert a.images[k].shape == (2, SIZE, SIZE, 3) and a.images[k].dtype == np.uint8
            assert a.gains[k].shape == (2,)
        np.testing.assert_array_equal(a.images["x_prev"], b.xt[:2])  # x_(t-1) is the frame's x
        assert (a.sigma is None) == (not decomposes(sampler))
        assert a.norms.shape == (len(a.norm_ts), len(names), N)
    # the norms of every step, each once, in the chain's order
    ts = np.concatenate([f.norm_ts for f in ours])
    assert len(ts) == ours[-1].total and list(ts) == sorted(ts, reverse=True)
    norms = np.concatenate([f.norms for f in ours])
    assert np.isfinite(norms).all() and (norms[:, names.index("eps")] > 0).all()
    if guided:
        assert set(GUIDANCE_TERMS) <= set(names) and (norms[:, names.index("eps_diff")] > 0).all()


def test_term_images_kept_stay_in_budget():
    assert term_images_kept(16, 9, 32, 100) == 16  # the app's default run keeps every image's terms
    m = term_images_kept(64, 9, 64, 100)
    assert 1 <= m < 64 and m * 100 * 9 * 64 * 64 * 3 <= 64 * 2**20 < (m + 1) * 100 * 9 * 64 * 64 * 3
    assert term_images_kept(64, 9, 1024, 100) == 1  # always at least the first image


def test_rms_and_the_step_terms_order():
    assert float(rms(torch.ones(1, 3, 4, 4))[0]) == 1.0
    assert float(rms(torch.full((1, 3, 4, 4), -0.5))[0]) == 0.5
    assert term_names("ddpm", False) == STEP_TERMS
    assert term_names("ddim", True) == STEP_TERMS + GUIDANCE_TERMS


@pytest.mark.skipif("dpm++2m" not in SAMPLERS, reason="no multistep sampler here")
def test_a_multistep_sampler_has_no_noise_term():
    assert not decomposes("dpm++2m")
    assert term_names("dpm++2m", False) == ("x_t", "eps", "x0", "x_prev")


def test_the_demo_model_with_guidance():
    from ddpm_gui.engine.demo import load_demo_bundle

    bundle = load_demo_bundle("cpu")
    cfg = SampleConfig(n=2, sampler="ddim", steps=4, eta=0.5, seed=1, class_label=0, guidance=3.0)
    ours = list(sample_frames_with_terms(bundle, cfg))
    theirs = list(sample_frames(bundle, cfg))
    np.testing.assert_array_equal(ours[-1].xt, theirs[-1].xt)
    assert ours[0].names == STEP_TERMS + GUIDANCE_TERMS
    diff = np.concatenate([f.norms[:, ours[0].names.index("eps_diff")] for f in ours])
    # a trained conditional model: guidance has a direction, except at t = T-1 of this v-prediction model's
    # cosine schedule, where alpha_bar ~ 0 leaves eps = x_t whatever the class
    assert (diff[1:] > 1e-3).all() and diff[0].max() < 1e-3, diff


def test_an_opened_diffusers_model(tmp_path):
    pytest.importorskip("diffusers")
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    from ddpm_gui.engine.diffusers_io import load_diffusers_bundle

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=SIZE, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    ).eval()  # fmt: skip
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=10)).save_pretrained(tmp_path)
    bundle = load_diffusers_bundle(tmp_path, device="cpu")
    cfg = SampleConfig(n=2, seed=3).validate(bundle)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn((2, 3, SIZE, SIZE), generator=gen)
    with torch.inference_mode():
        steps = list(term_steps(bundle, cfg, x, gen))
    assert len(steps) == 10
    for _st, terms in steps:
        torch.testing.assert_close(terms["mean"] + terms["noise"], terms["x_prev"], rtol=1e-5, atol=2e-6)
    assert math.isfinite(float(steps[0][1]["sigma"][0])) and float(steps[0][1]["sigma"][0]) > 0
