"""The diffusion math: schedules, forward process, reverse steps."""

import math

import pytest
import torch

from ddpm_gui.core.diffusion import (
    ddim_step,
    ddim_timesteps,
    ddpm_step,
    noise_to,
    q_sample,
    q_step,
    reverse_process,
    split_prediction,
    v_target,
)
from ddpm_gui.core.schedule import SCHEDULE_PRESETS, NoiseSchedule, ScheduleConfig
from ddpm_gui.errors import ConfigError


def test_tutorial_schedule_numbers():
    s = NoiseSchedule()  # the tutorial's: linear 1e-4..0.04, T=100
    assert s.T == 100
    assert float(s.betas[0]) == pytest.approx(1e-4)
    assert float(s.betas[-1]) == pytest.approx(0.04)
    # paper notation alpha_bar_50 is index 49 (0-based indices, as in the tutorial's code)
    assert float(s.alpha_bars[49]) == pytest.approx(0.605, abs=1e-3)
    assert float(s.alpha_bars[-1]) == pytest.approx(0.131, abs=1e-3)
    assert s.terminal_signal() == pytest.approx(math.sqrt(0.131), abs=2e-3)
    # the arrays agree with the tutorial's own float32 computation
    beta = torch.linspace(0.0001, 0.04, 100)
    assert torch.allclose(s.alpha_bars.float(), torch.cumprod(1 - beta, 0), atol=1e-6)
    assert torch.allclose(s.snr, s.alpha_bars / (1 - s.alpha_bars))


def test_ddpm_paper_and_cosine_schedules():
    paper = NoiseSchedule(SCHEDULE_PRESETS["ddpm-paper"])
    assert paper.T == 1000 and float(paper.betas[-1]) == pytest.approx(0.02)
    assert float(paper.alpha_bars[-1]) < 1e-4  # ends in (almost) pure noise
    cos = NoiseSchedule(ScheduleConfig(kind="cosine", T=100))
    ab = cos.alpha_bars
    assert torch.all(ab[1:] < ab[:-1])  # strictly decreasing
    assert float(ab[-1]) < 1e-3
    assert float(cos.betas.max()) <= 0.999


def test_zero_terminal_snr_rescale():
    s = NoiseSchedule(ScheduleConfig(rescale_zero_snr=True))
    assert float(s.alpha_bars[-1]) == pytest.approx(0.0, abs=1e-12)
    base = NoiseSchedule()
    assert float(s.alpha_bars[0]) == pytest.approx(float(base.alpha_bars[0]))  # first one unchanged
    assert torch.all(s.alpha_bars[1:] <= s.alpha_bars[:-1])


@pytest.mark.parametrize(
    "cfg",
    [
        ScheduleConfig(T=0),
        ScheduleConfig(beta_start=0.0),
        ScheduleConfig(beta_end=1.0),
        ScheduleConfig(beta_start=0.1, beta_end=0.01),
        ScheduleConfig(kind="sigmoid"),
    ],
)
def test_schedule_validation(cfg):
    with pytest.raises(ConfigError):
        NoiseSchedule(cfg)


def test_closed_form_matches_iterated_steps_in_distribution():
    """q(x_t | x_0) in one step vs t applications of q(x_t | x_(t-1)): same mean and variance."""
    s = NoiseSchedule()
    gen = torch.Generator().manual_seed(0)
    n = 20000
    x0 = torch.tensor([0.8, -0.5, 0.1]).repeat(n, 1).reshape(n, 3, 1, 1)
    t = 60
    x = x0.clone()
    for k in range(t + 1):
        x = q_step(x, k, s, generator=gen)
    xc, _ = q_sample(x0, t, s, generator=gen)
    ab = float(s.alpha_bars[t])
    for sample in (x, xc):
        mean = sample.mean(0).flatten()
        var = sample.var(0).flatten()
        # mean: sqrt(ab) x0 within 5 standard errors; variance: 1 - ab within 5 standard errors
        se_mean = math.sqrt((1 - ab) / n)
        assert torch.allclose(mean, math.sqrt(ab) * x0[0].flatten().double().float(), atol=5 * se_mean)
        se_var = (1 - ab) * math.sqrt(2 / (n - 1))
        assert torch.allclose(var, torch.full_like(var, 1 - ab), atol=5 * se_var)
    # and the two agree with each other
    assert torch.allclose(x.mean(0), xc.mean(0), atol=0.03)


def test_q_sample_batched_over_t_and_returns_noise():
    s = NoiseSchedule()
    x0 = torch.rand(4, 3, 8, 8) * 2 - 1
    t = torch.tensor([0, 10, 50, 99])
    noise = torch.randn_like(x0)
    xt, eps = q_sample(x0, t, s, noise=noise)
    assert eps is noise
    for i, ti in enumerate(t.tolist()):
        ab = s.alpha_bars[ti].float()
        assert torch.allclose(xt[i], ab.sqrt() * x0[i] + (1 - ab).sqrt() * noise[i], atol=1e-6)


def test_reverse_step_with_true_noise_moves_toward_x0():
    """Fed the true noise, the DDPM step's mean is the posterior mean mu~(x_t, x_0) (eq. 7), and the
    predicted x_0 is x_0 exactly."""
    s = NoiseSchedule()
    torch.manual_seed(0)
    x0 = torch.rand(8, 3, 16, 16) * 2 - 1
    for t in (99, 50, 10, 1):
        xt, eps = q_sample(x0, t, s)
        x_prev, x0_pred = ddpm_step(eps, xt, t, s, noise=torch.zeros_like(xt))
        assert torch.allclose(x0_pred, x0, atol=1e-4)
        ab, ab_prev, beta, alpha = (float(a[t]) for a in (s.alpha_bars, s.alpha_bars_prev, s.betas, s.alphas))
        mu = (math.sqrt(ab_prev) * beta / (1 - ab)) * x0 + (math.sqrt(alpha) * (1 - ab_prev) / (1 - ab)) * xt
        assert torch.allclose(x_prev, mu, atol=1e-4)
        # closer to x_0 than x_t was (in the scaled sense: the signal fraction grows)
        err_t = (xt / math.sqrt(ab) - x0).pow(2).mean()
        err_prev = (x_prev / math.sqrt(ab_prev) - x0).pow(2).mean()
        assert err_prev < err_t
    # the last step (t = 0) adds no noise and lands on x_0
    xt, eps = q_sample(x0, 0, s)
    x_prev, _ = ddpm_step(eps, xt, 0, s)
    assert torch.allclose(x_prev, x0, atol=1e-4)


def test_ddpm_step_equals_tutorial_formula_and_clip_form():
    s = NoiseSchedule()
    torch.manual_seed(1)
    xt = torch.randn(2, 3, 4, 4)
    eps = torch.randn_like(xt)
    z = torch.randn_like(xt)
    t = 40
    alpha_t, ab_t, beta_t = s.alphas[t].float(), s.alpha_bars[t].float(), s.betas[t].float()
    tutorial = 1 / alpha_t.sqrt() * (xt - (1 - alpha_t) / (1 - ab_t).sqrt() * eps) + beta_t.sqrt() * z
    ours, _ = ddpm_step(eps, xt, t, s, variance="beta", noise=z)
    assert torch.allclose(ours, tutorial, atol=1e-5)
    # the posterior-mean form (used with clipping) is algebraically the same when nothing is clipped
    small = torch.rand_like(xt) * 0.1
    xt2, eps2 = q_sample(small, t, s)
    a, _ = ddpm_step(eps2, xt2, t, s, noise=z, clip_x0=False)
    b, _ = ddpm_step(eps2, xt2, t, s, noise=z, clip_x0=True)
    assert torch.allclose(a, b, atol=1e-4)
    # posterior variance is smaller than beta
    c, _ = ddpm_step(eps, xt, t, s, variance="posterior", noise=z)
    assert not torch.allclose(c, ours)


def test_ddim_eta0_is_deterministic_and_exact_with_true_noise():
    s = NoiseSchedule()
    torch.manual_seed(2)
    x0 = torch.rand(3, 3, 8, 8) * 2 - 1
    xt, eps = q_sample(x0, 80, s)
    a, _ = ddim_step(eps, xt, 80, 40, s, eta=0.0)
    b, _ = ddim_step(eps, xt, 80, 40, s, eta=0.0)
    assert torch.equal(a, b)
    # with the true noise, DDIM lands exactly on q(x_40 | x_0) with the same noise
    expect, _ = q_sample(x0, 40, s, noise=eps)
    assert torch.allclose(a, expect, atol=1e-5)
    final, x0_pred = ddim_step(eps, xt, 80, -1, s)
    assert torch.allclose(final, x0, atol=1e-4)

    # a whole deterministic DDIM chain with any model gives identical outputs for identical input
    def model(x, t):
        return 0.5 * x

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return [st.x for st in reverse_process(model, xt.clone(), s, "ddim", steps=10, generator=g)][-1]

    assert torch.equal(run(0), run(1))


def test_ddim_timesteps():
    ts = ddim_timesteps(100, 10)
    assert ts[0] == 99 and ts[-1] == 0 and len(ts) == 10
    assert ts == sorted(ts, reverse=True)
    assert ddim_timesteps(5, 50) == [4, 3, 2, 1, 0]
    with pytest.raises(ConfigError):
        ddim_timesteps(100, 0)


def test_v_prediction_roundtrip_and_zero_snr():
    s = NoiseSchedule(ScheduleConfig(rescale_zero_snr=True))
    torch.manual_seed(3)
    x0 = torch.rand(4, 3, 4, 4) * 2 - 1
    t = torch.tensor([0, 30, 70, 99])
    xt, eps = q_sample(x0, t, s)
    v = v_target(x0, eps, t, s)
    eps_hat, x0_hat = split_prediction(v, xt, t, s, "v")
    assert torch.allclose(x0_hat, x0, atol=1e-5)  # including t = T-1 where alpha_bar = 0
    assert torch.allclose(eps_hat, eps, atol=1e-5)


def test_reverse_process_partial_and_counts():
    s = NoiseSchedule()
    x0 = torch.zeros(1, 3, 4, 4)
    xs = noise_to(x0, 50, 10, s, generator=torch.Generator().manual_seed(0))
    assert xs.shape == (10, 3, 4, 4)
    assert not torch.allclose(xs[0], xs[1])  # ten different draws
    steps = list(reverse_process(lambda x, t: torch.zeros_like(x), xs, s, "ddpm", t_start=50))
    assert len(steps) == 51 and steps[0].t == 50 and steps[-1].t == 0
    steps = list(reverse_process(lambda x, t: torch.zeros_like(x), xs, s, "ddim", t_start=50, steps=5))
    assert len(steps) == 5 and steps[0].t == 50
    with pytest.raises(ConfigError):
        list(reverse_process(lambda x, t: x, xs, s, t_start=100))


def test_a_sampler_registered_in_core_runs_everywhere(monkeypatch):
    """A sampler is an entry in core.spec.SAMPLERS plus its step function: reverse_process, SampleConfig
    and the CLI's --sampler choices take it with no other change (here an "x0-jump" that steps straight to
    the predicted x_0's noised version at t_prev, i.e. DDIM with eta = 0 written independently)."""
    from ddpm_gui.cli import build_parser
    from ddpm_gui.core import diffusion, spec
    from ddpm_gui.engine.sampler import SampleConfig

    def jump(out, x, t, t_prev, sched, o):
        eps, x0 = split_prediction(out, x, torch.full((x.shape[0],), t), sched, o.prediction)
        ab_prev = sched.alpha_bars[t_prev] if t_prev >= 0 else torch.tensor(1.0)
        return ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps, x0

    monkeypatch.setitem(spec.SAMPLERS, "x0-jump", spec.SamplerSpec("x0-jump", "test", strided=True))
    monkeypatch.setitem(diffusion.STEP_FUNCTIONS, "x0-jump", jump)
    s = NoiseSchedule()
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    model = lambda x, t: 0.1 * x  # noqa: E731
    mine = list(reverse_process(model, x, s, "x0-jump", steps=7))
    ddim = list(reverse_process(model, x, s, "ddim", steps=7, eta=0.0))
    assert len(mine) == 7 and torch.allclose(mine[-1].x, ddim[-1].x, atol=1e-5)
    assert SampleConfig(sampler="x0-jump", steps=7).validate().sampler == "x0-jump"
    args = build_parser().parse_args(["sample", "--run", "r", "--sampler", "x0-jump"])
    assert args.sampler == "x0-jump"


# ----------------------------------------------------------------------------- float32 steps vs float64 math


def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want).abs().max() / want.abs().max())


def _floor(ab: float, prediction: str) -> float:
    """The float32 inputs' own rounding, as eps-prediction's x_0 = (x_t - sqrt(1-ab) eps) / sqrt(ab) amplifies
    it (by sqrt((1-ab)/ab), 1e4 at the end of the cosine schedule): no float32 step can do better."""
    return 1e-6 * max(1.0, math.sqrt((1 - ab) / ab)) if prediction == "eps" else 1e-6


def _ref_split(out, x, ab, prediction):
    """x_0 and eps in float64 from the paper's formulas (DDPM eq. 15; v of Salimans & Ho 2022)."""
    if prediction == "eps":
        return out, (x - math.sqrt(1 - ab) * out) / math.sqrt(ab)
    return math.sqrt(1 - ab) * x + math.sqrt(ab) * out, math.sqrt(ab) * x - math.sqrt(1 - ab) * out


def _ref_ddpm(out, x, t, s, variance, prediction, clip, z):
    beta, ab = float(s.betas[t]), float(s.alpha_bars[t])
    ab_prev, alpha = (float(s.alpha_bars[t - 1]) if t > 0 else 1.0), 1 - beta
    eps, x0 = _ref_split(out, x, ab, prediction)
    if clip:  # the posterior mean of eq. 7
        x0 = x0.clamp(-1, 1)
        mean = math.sqrt(ab_prev) * beta / (1 - ab) * x0 + math.sqrt(alpha) * (1 - ab_prev) / (1 - ab) * x
    else:  # eq. 11
        mean = (x - beta / math.sqrt(1 - ab) * eps) / math.sqrt(alpha)
    var = beta if variance == "beta" else (1 - ab_prev) / (1 - ab) * beta
    return mean + (math.sqrt(var) * z if t > 0 else 0), x0


def _ref_ddim(out, x, t, t_prev, s, eta, prediction, clip, z):
    ab = float(s.alpha_bars[t])
    ab_prev = float(s.alpha_bars[t_prev]) if t_prev >= 0 else 1.0
    eps, x0 = _ref_split(out, x, ab, prediction)
    if clip:
        x0 = x0.clamp(-1, 1)
        eps = (x - math.sqrt(ab) * x0) / math.sqrt(1 - ab)
    sigma = eta * math.sqrt((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev))  # DDIM eq. 16
    x_prev = math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev - sigma**2) * eps  # eq. 12
    return x_prev + (sigma * z if t_prev >= 0 else 0), x0


def _step_inputs(t, s, seed=0):
    """float32 x_t (a noised image), a model output near the true eps, and the step's noise."""
    g = torch.Generator().manual_seed(seed + t)
    x0 = torch.rand(2, 3, 8, 8, generator=g) * 2.4 - 1.2  # some of it outside [-1, 1]: clipping acts
    xt, eps = q_sample(x0, t, s, noise=torch.randn(x0.shape, generator=g))
    out = eps + 0.3 * torch.randn(x0.shape, generator=g)
    return xt, out, torch.randn(x0.shape, generator=g)


@pytest.mark.parametrize("schedule", ["tutorial", "cosine", "ddpm-paper"])
@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("clip", [True, False])
def test_float32_ddpm_step_matches_float64_formulas(schedule, prediction, clip):
    """The float32 step (the sampler's: the schedule's float32 copy, float32 tensors) is within 1e-6 of the
    float64 formulas (up to the inputs' own rounding, _floor), at t = 0 too, where the clipped step must scale
    x_0 by exactly beta/(1-ab) = 1."""
    master = NoiseSchedule(SCHEDULE_PRESETS[schedule])
    s32 = master.to("cpu")
    for t in (0, 1, master.T // 2, master.T - 1):
        xt, out, z = _step_inputs(t, master)
        for variance in ("beta", "posterior"):
            got, got_x0 = ddpm_step(out, xt, t, s32, variance, prediction, clip, noise=z)
            want, want_x0 = _ref_ddpm(
                out.double(), xt.double(), t, master, variance, prediction, clip, z.double()
            )
            tol = _floor(float(master.alpha_bars[t]), prediction)
            assert got.dtype == torch.float32
            assert _rel_err(got, want) < tol, (t, variance)
            assert _rel_err(got_x0, want_x0) < tol, (t, variance)


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("clip", [True, False])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_float32_ddim_step_matches_float64_formulas(prediction, clip, eta):
    master = NoiseSchedule()
    s32 = master.to("cpu")
    for t, t_prev in ((99, 88), (50, 49), (11, 0), (1, 0), (0, -1)):
        xt, out, z = _step_inputs(t, master)
        got, got_x0 = ddim_step(out, xt, t, t_prev, s32, eta, prediction, clip, noise=z)
        want, want_x0 = _ref_ddim(
            out.double(), xt.double(), t, t_prev, master, eta, prediction, clip, z.double()
        )
        tol = _floor(float(master.alpha_bars[t]), prediction)
        assert _rel_err(got, want) < tol, (t, t_prev)
        assert _rel_err(got_x0, want_x0) < tol, (t, t_prev)


def test_schedule_coefficients_are_float64_and_travel_with_to():
    s = NoiseSchedule()
    assert s.posterior_mean_coef1.dtype == torch.float64
    assert float(s.posterior_mean_coef1[0]) == pytest.approx(1.0, abs=1e-12)  # beta_1 / (1 - ab_1) = 1
    assert float(s.posterior_mean_coef2[0]) == 0.0
    s32 = s.to("cpu")
    assert s32.posterior_mean_coef1.dtype == torch.float32 and float(s32.posterior_mean_coef1[0]) == 1.0
    # each float32 coefficient is the float64 one rounded once
    for name in ("sqrt_alpha_bars", "eps_coef", "posterior_mean_coef2", "sqrt_posterior_variance"):
        assert torch.equal(getattr(s32, name), getattr(s, name).float()), name
    assert s32.alpha_bar(40) == float(s.alpha_bars[40]) and s32.alpha_bar(-1) == 1.0
    assert torch.allclose(s.eps_coef, s.betas / (1 - s.alpha_bars).sqrt(), rtol=1e-14)


def test_ddpm_step_with_v_prediction_is_finite_at_zero_terminal_snr():
    """alpha_T = 0 there, so eq. 11's 1/sqrt(alpha_T) is infinite: v-prediction, which gives x_0 directly, takes
    the posterior mean of eq. 7 (clipped or not) and stays finite."""
    s = NoiseSchedule(ScheduleConfig(rescale_zero_snr=True)).to("cpu")
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    v = torch.randn_like(x)
    for clip in (False, True):
        x_prev, x0 = ddpm_step(v, x, s.T - 1, s, prediction="v", clip_x0=clip, noise=torch.zeros_like(x))
        assert torch.isfinite(x_prev).all()
        assert torch.allclose(x0, (-v).clamp(-1, 1) if clip else -v)  # x_0 = sqrt(ab) x - sqrt(1 - ab) v
