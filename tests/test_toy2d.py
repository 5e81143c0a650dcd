"""The 2D mode: the point clouds, the MLP, and that training brings the reverse process's particles onto the
data (a sliced Wasserstein distance far below that of the noise or of an untrained model's samples)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ddpm_gui.core.spec import SAMPLERS, SCHEDULE_PRESETS, ScheduleConfig
from ddpm_gui.data.points2d import (
    DATASETS,
    GENERATORS,
    check_drawn,
    drawn_points,
    load_points,
    make_points,
    mixture_centers,
)
from ddpm_gui.engine import toy2d
from ddpm_gui.engine.toy2d import (
    Toy2DConfig,
    Toy2DFinished,
    Toy2DProgress,
    Toy2DTrainer,
    denoise_field,
    diffuse,
    merge_progress,
    new_model,
    reverse_chain,
    sliced_wasserstein,
    start_noise,
)
from ddpm_gui.errors import ConfigError, DataError
from ddpm_gui.models.mlp2d import MLP2D, timestep_embedding

# The trained model's particles lie within this sliced W1 distance of fresh data; two independent draws of
# the same cloud are about 0.01 apart, pure noise about 0.45 and an untrained model's samples further still.
BOUND = 0.06


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Many small steps: one thread is as fast and never waits for a core another test is using."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ----------------------------------------------------------------------------- the point clouds


@pytest.mark.parametrize("name", list(GENERATORS))
def test_every_cloud_is_seeded_in_range_and_of_the_size_asked(name):
    a, b, c = make_points(name, 500, seed=1), make_points(name, 500, seed=1), make_points(name, 500, seed=2)
    assert a.shape == (500, 2) and a.dtype == np.float32
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.abs(a).max() <= 1.0 and a.std(0).min() > 0.2  # in [-1, 1], and spread over it


def test_two_moons_lie_on_two_half_circles():
    p = make_points("moons", 2000, seed=0) * 1.65 + [0.5, 0.25]  # back to make_moons' own coordinates
    upper, lower = p[:1000], p[1000:]
    assert abs(np.hypot(*upper.T).mean() - 1) < 0.01 and upper[:, 1].mean() > 0.5
    assert abs(np.hypot(lower[:, 0] - 1, lower[:, 1] - 0.5).mean() - 1) < 0.01 and lower[:, 1].mean() < 0
    assert np.hypot(*upper.T).std() < 0.08  # the noise is 0.05: the half circles are thin


def test_swiss_roll_radius_grows_with_its_angle():
    p = make_points("swiss-roll", 3000, seed=0) / 0.9 * 4.5 * math.pi  # back to a * (cos a, sin a)
    r = np.hypot(*p.T)
    assert 1.5 * math.pi - 1 < r.min() and r.max() < 4.5 * math.pi + 1  # one and a half turns
    # on the spiral the radius is the angle (mod 2 pi): a circle or a blob would miss by pi/2 on average
    miss = np.abs(np.angle(np.exp(1j * (np.arctan2(p[:, 1], p[:, 0]) - r))))
    assert np.median(miss) < 0.3


def test_gaussian_mixture_has_its_components_on_a_circle():
    p = make_points("gaussians", 4000, seed=0)
    centres = mixture_centers(8)
    nearest = np.linalg.norm(p[:, None] - centres[None], axis=2).argmin(1)
    counts = np.bincount(nearest, minlength=8)
    assert counts.min() > 400  # equal weights: about 500 each
    for k in range(8):
        assert np.linalg.norm(p[nearest == k].mean(0) - centres[k]) < 0.01
        assert np.abs(p[nearest == k].std(0) - 0.06).max() < 0.01


def test_drawn_points_make_a_cloud_around_them():
    drawn = np.array([[0.5, 0.5], [-0.5, -0.25]], np.float32)
    p = drawn_points(drawn, 1000, seed=0)
    d = np.linalg.norm(p[:, None] - drawn[None], axis=2)
    assert d.min(1).max() < 0.1  # every point near a drawn one
    assert np.bincount(d.argmin(1)).min() > 400  # both are used
    assert np.array_equal(load_points("drawn", 1000, 0, drawn=drawn), p)
    assert "drawn" in DATASETS


@pytest.mark.parametrize(
    "bad, words",
    [([], "No points drawn"), ([[1, 2, 3]], "pairs"), ([[0, float("nan")]], "finite"), ("ab", "pairs")],
)
def test_bad_drawn_points_say_what_to_do(bad, words):
    with pytest.raises(DataError, match=words):
        check_drawn(bad)


def test_unknown_cloud_and_bad_sizes_are_one_line_errors():
    with pytest.raises(DataError, match="choose one of"):
        make_points("spiral", 10)
    with pytest.raises(DataError, match="whole number"):
        make_points("moons", 0)
    with pytest.raises(ConfigError, match="prediction"):
        Toy2DConfig(prediction="x0").validate()
    with pytest.raises(ConfigError, match="steps"):
        Toy2DConfig(steps=0).validate()


# ----------------------------------------------------------------------------- the model and the math


def test_mlp_keeps_the_shape_and_depends_on_the_timestep():
    net = MLP2D()
    x = torch.randn(7, 2, 1, 1)
    t0, t1 = torch.zeros(7, dtype=torch.long), torch.full((7,), 50, dtype=torch.long)
    assert net(x, t0).shape == x.shape and net(x.reshape(7, 2), t0).shape == (7, 2)
    assert not torch.allclose(net(x, t0), net(x, t1))
    e = timestep_embedding(torch.tensor([0, 1, 99]), 32)
    assert e.shape == (3, 32) and torch.allclose(e[0, :16], torch.ones(16))  # cos(0) = 1
    assert timestep_embedding(torch.tensor([3]), 7).shape == (1, 7)


def test_diffuse_is_q_sample_and_reaches_noise():
    sched = toy2d.NoiseSchedule(SCHEDULE_PRESETS["cosine"])
    x0 = make_points("moons", 1000, seed=0)
    eps = start_noise(1000, 1)
    assert np.array_equal(diffuse(x0, -1, sched, eps), x0)
    ab = float(sched.alpha_bars[10])
    assert np.allclose(diffuse(x0, 10, sched, eps), math.sqrt(ab) * x0 + math.sqrt(1 - ab) * eps, atol=1e-5)
    assert sliced_wasserstein(diffuse(x0, sched.T - 1, sched, eps), eps) < 0.01


def test_sliced_wasserstein_is_zero_for_equal_clouds_and_grows_with_a_shift():
    a = make_points("moons", 1000, seed=0)
    assert sliced_wasserstein(a, a) < 1e-9
    d1, d2 = sliced_wasserstein(a, a + [0.1, 0]), sliced_wasserstein(a, a + [0.3, 0])
    assert 0.05 < d1 < 0.08 and abs(d2 / d1 - 3) < 0.01  # the mean |cos| of a direction is 2/pi ~ 0.64
    assert sliced_wasserstein(a, a[:10]) > 0  # any sizes


def test_progress_events_merge_their_losses_and_keep_the_newest_model():
    a = Toy2DProgress(10, 100, 0.5, 1.0, np.arange(1, 11), np.ones(10, np.float32), model="m1")
    b = Toy2DProgress(20, 100, 0.4, 2.0, np.arange(11, 21), np.zeros(10, np.float32))
    m = merge_progress(a, b)
    assert m.step == 20 and list(m.steps) == list(range(1, 21)) and m.losses.sum() == 10 and m.model == "m1"
    assert merge_progress(a, "finished") is None


# ----------------------------------------------------------------------------- training works


@pytest.fixture(scope="module")
def trained():
    """The default configuration, trained for its default number of steps (a few seconds on a CPU)."""
    cfg = Toy2DConfig(snapshot_every=1000)
    events = list(Toy2DTrainer(cfg).run())
    return cfg, events


def test_training_reports_every_loss_and_snapshots(trained):
    cfg, events = trained
    progress = [e for e in events if isinstance(e, Toy2DProgress)]
    done = events[-1]
    assert isinstance(done, Toy2DFinished) and done.step == cfg.steps and not done.stopped
    steps = np.concatenate([e.steps for e in progress])
    assert np.array_equal(steps, np.arange(1, cfg.steps + 1))
    losses = np.concatenate([e.losses for e in progress])
    assert np.isfinite(losses).all() and losses[-200:].mean() < 0.8 * losses[:10].mean()  # it learns
    assert [e.model.step for e in progress if e.model is not None] == list(range(1000, cfg.steps + 1, 1000))


def test_trained_particles_land_on_the_data_and_untrained_ones_do_not(trained):
    cfg, events = trained
    model = events[-1].model
    data = make_points(cfg.data, 2000, seed=123)  # fresh points of the same cloud
    ddpm = reverse_chain(model, 2000, seed=5)
    ddim = reverse_chain(model, 2000, sampler="ddim", steps=50, clip_x0=True, seed=5)
    untrained = reverse_chain(new_model(cfg), 2000, seed=5)
    noise = start_noise(2000, 7)
    d = {
        k: sliced_wasserstein(c.xs[-1], data)
        for k, c in (("ddpm", ddpm), ("ddim", ddim), ("untrained", untrained))
    }
    d["noise"] = sliced_wasserstein(noise, data)
    assert d["ddpm"] < BOUND and d["ddim"] < BOUND, d
    assert d["noise"] > 5 * BOUND and d["untrained"] > 5 * BOUND, d
    # the chain: x_T first, every step kept, the last frame clean
    assert (
        ddpm.xs.shape == (cfg.schedule.T + 1, 2000, 2)
        and ddpm.ts[0] == cfg.schedule.T - 1
        and ddpm.ts[-1] == -1
    )
    assert len(ddim.xs) == 51
    for name, spec in SAMPLERS.items():  # every sampler the app offers, strided ones at 50 steps
        x = reverse_chain(model, 2000, sampler=name, steps=50, clip_x0=True, seed=5).xs[-1]
        assert sliced_wasserstein(x, data) < BOUND, (name, spec)


def test_the_arrows_point_from_noise_towards_the_data(trained):
    cfg, events = trained
    model = events[-1].model
    xy, d = denoise_field(model, t=20, kind="x0", n=15)
    assert xy.shape == d.shape == (225, 2)
    data = make_points(cfg.data, 2000, seed=0)
    # following the arrows from the grid ends nearer the data than the grid itself is
    near = lambda p: np.linalg.norm(p[:, None] - data[None], axis=2).min(1).mean()  # noqa: E731
    assert near(xy + d) < 0.5 * near(xy)
    _, score = denoise_field(model, t=20, kind="score", n=15)
    cos = (score * d).sum(1) / (np.linalg.norm(score, axis=1) * np.linalg.norm(d, axis=1) + 1e-12)
    assert np.median(cos) > 0.9  # the score points the same way as x0 - x_t (up to the sqrt(ab) scaling)
    with pytest.raises(ConfigError):
        denoise_field(model, 0, kind="curl")


def test_drawn_points_are_the_data_trained_on():
    drawn = np.array([[0.8, 0.8], [-0.8, -0.8]], np.float32)
    points = drawn_points(drawn, 1000)
    cfg = Toy2DConfig(data="drawn", steps=600, schedule=ScheduleConfig(kind="cosine", T=50))
    trainer = Toy2DTrainer(cfg, points)
    assert np.array_equal(trainer.points, points)
    *_, done = trainer.run()
    x = reverse_chain(done.model, 500, seed=1).xs[-1]
    nearest = np.linalg.norm(x[:, None] - drawn[None], axis=2)
    assert np.median(nearest.min(1)) < 0.15  # the particles gather at the drawn points ...
    assert min(np.bincount(nearest.argmin(1), minlength=2)) > 100  # ... at both


def test_stop_ends_training_with_a_finished_event():
    trainer = Toy2DTrainer(Toy2DConfig(steps=10_000, log_every=5))
    events = []
    for ev in trainer.run():
        events.append(ev)
        if isinstance(ev, Toy2DProgress) and ev.step >= 20:
            trainer.stop()
    assert isinstance(events[-1], Toy2DFinished) and events[-1].stopped and events[-1].step == 20
