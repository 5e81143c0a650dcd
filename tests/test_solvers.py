"""DPM-Solver++(2M) and Euler ancestral: against their published update rules written out here in float64, and
against diffusers' schedulers fed the same model, timesteps and noise."""

import math

import pytest
import torch

from ddpm_gui.core.diffusion import ddim_timesteps, q_sample, reverse_process, v_target
from ddpm_gui.core.schedule import NoiseSchedule, ScheduleConfig
from ddpm_gui.core.spec import SAMPLERS


def tiny_model(seed: int = 0, T: int = 100):
    """A fixed random conv whose output depends on t: (x, t) -> an eps- or v-like output, dtype of x."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(3, 3, 3, 3, generator=g, dtype=torch.float64) * 0.2
    b = torch.randn(3, generator=g, dtype=torch.float64) * 0.1

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        tt = torch.as_tensor(t, dtype=x.dtype).reshape(-1, 1, 1, 1) / T
        y = torch.nn.functional.conv2d(x, w.to(x.dtype), b.to(x.dtype), padding=1)
        return torch.tanh(y) * (0.5 + tt) + 0.3 * x

    return model


def _ref_dpmpp_2m(model, x, ts, s, prediction, clip):
    """Lu et al. 2022, DPM-Solver++ Algorithm 2, in float64: the first step first order, then
    D_i = (1 + 1/(2 r_i)) x0_(i-1) - 1/(2 r_i) x0_(i-2), r_i = h_(i-1) / h_i,
    x_i = sigma_i / sigma_(i-1) x_(i-1) - alpha_i (exp(-h_i) - 1) D_i;
    the last step (to the clean image, sigma = 0) first order, as diffusers' lower_order_final does."""
    ab = s.alpha_bars.double()

    def coefs(t):  # alpha, sigma, lambda (t = -1: the clean image)
        a = torch.tensor(1.0, dtype=torch.float64) if t < 0 else ab[t]
        return a.sqrt(), (1 - a).sqrt(), a.sqrt().log() - (1 - a).sqrt().log()

    x = x.double()
    prev = None
    targets = ts[1:] + [-1]
    for t, t_to in zip(ts, targets, strict=True):
        out = model(x, torch.full((x.shape[0],), t))
        a_s, s_s, lam_s = coefs(t)
        a_t, s_t, lam_t = coefs(t_to)
        x0 = (x - s_s * out) / a_s if prediction == "eps" else a_s * x - s_s * out
        if clip:
            x0 = x0.clamp(-1, 1)
        h = lam_t - lam_s
        if prev is None or t_to < 0:
            d = x0
        else:
            r = (lam_s - prev[0]) / h
            d = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * prev[1]
        x = s_t / s_s * x - a_t * (torch.exp(-h) - 1) * d
        prev = (lam_s, x0)
    return x


def _run(sampler, model, x, s, steps, t_start=None, prediction="eps", clip=False, generator=None):
    chain = reverse_process(model, x, s, sampler, t_start=t_start, steps=steps, prediction=prediction,
                            clip_x0=clip, generator=generator)  # fmt: skip
    return list(chain)


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("t_start, steps", [(None, 10), (None, 4), (60, 6), (None, 1)])
def test_dpmpp_2m_is_the_published_rule(prediction, clip, t_start, steps):
    """float32 chain (the app's) vs Algorithm 2 in float64 with the same model: within float32 rounding."""
    master = NoiseSchedule(ScheduleConfig(T=30, beta_end=0.2))  # small T: every step a large one
    T = master.T
    model = tiny_model(1, T)
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(3))
    if t_start is not None:
        t_start = t_start * T // 100
    frames = _run("dpm++2m", model, x, master.to("cpu"), steps, t_start, prediction, clip)
    ts = ddim_timesteps((T - 1 if t_start is None else t_start) + 1, steps)
    assert [f.t for f in frames] == ts and frames[-1].index == len(ts) - 1
    want = _ref_dpmpp_2m(model, x, ts, master, prediction, clip)
    err = float((frames[-1].x.double() - want).abs().max() / want.abs().max())
    assert err < 2e-6
    # the last step is first order to sigma = 0: the image is the last predicted x_0
    assert torch.equal(frames[-1].x, frames[-1].x0)


def test_dpmpp_2m_differs_from_ddim_only_by_its_second_order_term():
    """Its first step is DDIM's (eta = 0); from the second on the extrapolation changes the result."""
    s = NoiseSchedule().to("cpu")
    model = tiny_model(2)
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(4))
    dpm = _run("dpm++2m", model, x, s, 8)
    ddim = _run("ddim", model, x, s, 8)
    assert torch.allclose(dpm[0].x, ddim[0].x, atol=1e-6)
    assert (dpm[1].x - ddim[1].x).abs().max() > 1e-3
    # and a fresh chain starts fresh: the solver keeps no state from one chain to the next
    again = _run("dpm++2m", model, x, s, 8)
    assert torch.equal(again[-1].x, dpm[-1].x)


def _diffusers_scheduler(name, prediction, clip, T):
    diffusers = pytest.importorskip("diffusers")
    common = dict(num_train_timesteps=T, beta_start=1e-4, beta_end=0.04, beta_schedule="linear",
                  prediction_type="epsilon" if prediction == "eps" else "v_prediction")  # fmt: skip
    if name == "dpm++2m":
        # dynamic thresholding with sample_max_value = 1 clamps x_0 to [-1, 1]: our clip
        return diffusers.DPMSolverMultistepScheduler(
            **common, algorithm_type="dpmsolver++", solver_order=2, thresholding=clip, sample_max_value=1.0
        )
    return diffusers.EulerAncestralDiscreteScheduler(**common)


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("t_start", [None, 55])
def test_dpmpp_2m_matches_diffusers(prediction, clip, t_start):
    """diffusers' DPMSolverMultistepScheduler (dpmsolver++, order 2, lower_order_final, final sigma 0) given
    our timesteps (its `timesteps=` argument; they are DDIM's, T-1 .. 0 evenly) and the same betas (our
    float32 schedule is diffusers' arithmetic): the same chain, step for step."""
    T, steps = 100, 10
    sched = _diffusers_scheduler("dpm++2m", prediction, clip, T)
    s = NoiseSchedule(ScheduleConfig(float32=True)).to("cpu")
    model = tiny_model(5, T)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(6))
    ours = _run("dpm++2m", model, x, s, steps, t_start, prediction, clip)
    ts = ddim_timesteps((T - 1 if t_start is None else t_start) + 1, steps)
    sched.set_timesteps(timesteps=ts)
    sample = x.clone()
    for frame, t in zip(ours, sched.timesteps, strict=True):
        sample = sched.step(model(sample, t.expand(2)), t, sample).prev_sample
        assert torch.allclose(frame.x, sample, atol=2e-5, rtol=1e-5), int(t)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_euler_ancestral_matches_diffusers(prediction):
    """diffusers' EulerAncestralDiscreteScheduler, linspace spacing: for T = 100 and 12 steps its timesteps
    0, 9, ..., 99 are ours. It works on x / sqrt(ab): the same start in its coordinates, the same noise (one
    draw per step from the same generator), and its samples scaled back by sqrt(ab) equal ours."""
    T, steps = 100, 12
    sched = _diffusers_scheduler("euler_a", prediction, False, T)
    sched.set_timesteps(steps)
    s = NoiseSchedule(ScheduleConfig(float32=True)).to("cpu")
    ts = ddim_timesteps(T, steps)
    assert [int(t) for t in sched.timesteps] == ts
    model = tiny_model(7, T)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(8))
    ours = _run(
        "euler_a", model, x, s, steps, prediction=prediction, generator=torch.Generator().manual_seed(9)
    )
    gen = torch.Generator().manual_seed(9)
    sample = x / s.alpha_bar(T - 1) ** 0.5
    for i, (frame, t) in enumerate(zip(ours, sched.timesteps, strict=True)):
        out = model(sched.scale_model_input(sample, t), t.expand(2))
        sample = sched.step(out, t, sample, generator=gen).prev_sample
        ab_to = s.alpha_bar(ts[i + 1]) if i + 1 < len(ts) else 1.0
        assert torch.allclose(frame.x, sample * ab_to**0.5, atol=2e-5, rtol=1e-5), int(t)


@pytest.mark.parametrize("sampler", ["dpm++2m", "euler_a"])
@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("clip", [False, True])
def test_zero_terminal_snr_no_nan_and_exact_with_an_oracle(sampler, prediction, clip):
    """At ab_T = 0 (lambda = -inf, sigma = inf) the chain stays finite; given the exact model output for one
    image x_0 (an oracle), it lands on that x_0 (eps-prediction too: only its first x_0, at ab = 0, is lost)."""
    s = NoiseSchedule(ScheduleConfig(rescale_zero_snr=True)).to("cpu")
    assert s.alpha_bar(s.T - 1) == 0.0
    g = torch.Generator().manual_seed(10)
    target = torch.rand(2, 3, 6, 6, generator=g) * 1.6 - 0.8

    def oracle(x, t):  # the output that gives x_0 = target at x_t (v stays defined at ab = 0, eps does not)
        ab = s.alpha_bars[t].reshape(-1, 1, 1, 1)
        eps = (x - ab.sqrt() * target) / (1 - ab).sqrt()
        return eps if prediction == "eps" else v_target(target, eps, t, s)

    x = torch.randn(2, 3, 6, 6, generator=g)
    frames = _run(sampler, oracle, x, s, 10, prediction=prediction, clip=clip, generator=g)
    assert all(torch.isfinite(f.x).all() and torch.isfinite(f.x0).all() for f in frames)
    assert torch.allclose(frames[-1].x, target, atol=1e-5)
    # an ordinary model at the zero-SNR step: finite too
    frames = _run(sampler, tiny_model(11), x, s, 10, prediction=prediction, clip=clip, generator=g)
    assert all(torch.isfinite(f.x).all() for f in frames)


def test_new_samplers_are_offered_everywhere():
    from ddpm_gui.cli import build_parser
    from ddpm_gui.engine.sampler import SampleConfig

    for name in ("dpm++2m", "euler_a"):
        assert SAMPLERS[name].strided and not SAMPLERS[name].takes_eta
        assert SampleConfig(sampler=name, steps=10).validate().sampler == name
        for cmd in (["sample", "--run", "r"], ["eval", "--model", "demo"]):
            assert build_parser().parse_args([*cmd, "--sampler", name]).sampler == name


def test_oracle_lands_on_x0_from_an_intermediate_start():
    """The Denoise tab's use: start at t = 50 from q(x_50 | x_0); with the exact eps the solver's x_t stays on
    the path of that x_0 and ends on it."""
    s = NoiseSchedule().to("cpu")
    g = torch.Generator().manual_seed(12)
    x0 = torch.rand(3, 3, 6, 6, generator=g) * 2 - 1
    xt, eps = q_sample(x0, 50, s, generator=g)
    for sampler in ("dpm++2m", "ddim"):
        frames = _run(sampler, lambda x, t: eps, xt, s, 7, t_start=50, generator=g)
        if sampler == "dpm++2m":
            for f, t_prev in zip(frames[:-1], ddim_timesteps(51, 7)[1:], strict=True):
                ab = s.alpha_bar(t_prev)
                assert torch.allclose(f.x, math.sqrt(ab) * x0 + math.sqrt(1 - ab) * eps, atol=1e-5)
        assert torch.allclose(frames[-1].x, x0, atol=1e-5), sampler
