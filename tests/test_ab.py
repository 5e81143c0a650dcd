"""A/B on the same noise (engine/ab.py): one x_T for both chains, identical settings give identical frames,
lockstep by the fraction of the chain, timings, the difference image and the quality judge."""

from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from ddpm_gui.core.spec import SAMPLERS, SCHEDULE_PRESETS
from ddpm_gui.engine.ab import (
    ABResult,
    ABSide,
    ab_frames,
    check_pair,
    difference,
    headline,
    judge_data,
    load_model,
    progress,
    score_pair,
)
from ddpm_gui.engine.demo import DEMO_NOTE
from ddpm_gui.engine.sampler import SampleConfig
from ddpm_gui.errors import CheckpointError, ConfigError


@pytest.fixture(scope="module")
def demo():
    return load_model("demo", device="cpu")


def run(a: ABSide, b: ABSide, stop=None) -> tuple[ABResult, list]:
    result, steps = ABResult(a, b), []
    for step in ab_frames(a, b, stop):
        result.add(step)
        steps.append(step)
    return result, steps


def test_the_demo_and_checkpoints_load_with_the_apps_loaders(demo, tmp_path):
    assert demo.notes[0] == DEMO_NOTE and demo.image_size == 16
    with pytest.raises(CheckpointError, match="No such file"):
        load_model(str(tmp_path / "missing.safetensors"))


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_identical_settings_give_identical_frames(demo, sampler):
    cfg = SampleConfig(n=3, sampler=sampler, steps=8, eta=0.5, seed=11, class_label=4, guidance=2.5)
    result, _ = run(ABSide(demo, cfg), ABSide(demo, cfg))
    assert not torch.is_inference_mode_enabled()  # the chains gave the caller's state back
    fa, fb = (r.frames for r in result.runs)
    assert result.finished() and len(fa) == len(fb) == (8 if SAMPLERS[sampler].strided else 100)
    for x, y in zip(fa, fb, strict=True):
        assert (x.index, x.t) == (y.index, y.t)
        np.testing.assert_array_equal(x.xt, y.xt)
        np.testing.assert_array_equal(x.x0, y.x0)
    final = result.final_difference()
    assert final.max == 0 and final.mean == 0 and not final.images.any()
    assert final.text().startswith("identical")


class FirstInput(nn.Module):
    """The model, recording the x it is first called with: the chain's x_T."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.first: torch.Tensor | None = None

    def forward(self, x, t, y=None):
        if self.first is None:
            self.first = x.detach().clone()
        return self.model(x, t, y)


def test_both_chains_start_from_the_seeds_noise_whatever_the_sampler_steps_schedule_or_model(demo):
    pa, pb = FirstInput(demo.model), FirstInput(demo.model)
    a = ABSide(replace(demo, model=pa), SampleConfig(n=2, sampler="ddim", steps=4, seed=5))
    b = ABSide(
        replace(demo, model=pb),
        SampleConfig(n=2, sampler="ddim", steps=3, eta=1.0, seed=5, class_label=1),
        schedule=SCHEDULE_PRESETS["tutorial"],  # linear, where the model was trained on a cosine schedule
    )
    result, _ = run(a, b)
    assert result.runs[0].steps() == 4 and result.runs[1].steps() == 3
    gen = torch.Generator().manual_seed(5)
    x_T = torch.randn((2, demo.image_channels, 16, 16), generator=gen)
    torch.testing.assert_close(pa.first, x_T, rtol=0, atol=0)
    torch.testing.assert_close(pb.first, x_T, rtol=0, atol=0)
    assert result.final_difference().max > 0  # other settings, other images: from the same start


def test_different_lengths_run_and_show_in_lockstep_by_fraction(demo):
    a = ABSide(demo, SampleConfig(n=1, sampler="ddim", steps=10, seed=0))
    b = ABSide(demo, SampleConfig(n=1, sampler="ddim", steps=4, seed=0))
    result, steps = run(a, b)
    done = [0.0, 0.0]
    for step in steps:  # the worker always advances the side that is behind
        assert done[step.side] <= done[1 - step.side]
        done[step.side] = progress(step.frame)
    assert result.count() == 10 and [r.steps() for r in result.runs] == [10, 4]
    for i in range(result.count()):
        fa, fb = result.frames(i)
        assert fa is result.runs[0].frames[i]
        # B's nearest frame: its first (at 25%) before it, then within half of B's step
        assert abs(progress(fa) - progress(fb)) <= max(0.25 - progress(fa), 0.5 / 4) + 1e-9
    assert result.pair(9) == (9, 3) and result.pair(0) == (0, 0) and result.pair(4) == (4, 1)
    assert result.pair(99) == (9, 3)  # past the end: the last position
    d = result.difference(4, "x0")
    np.testing.assert_array_equal(
        d.images, difference(result.runs[0].frames[4].x0, result.runs[1].frames[1].x0).images
    )


def test_times_add_up_per_side(demo):
    cfg = SampleConfig(n=1, sampler="ddim", steps=6, seed=0, every=2)
    result, steps = run(ABSide(demo, cfg), ABSide(demo, replace(cfg, steps=3, every=1)))
    for k, r in enumerate(result.runs):
        assert r.elapsed == sorted(r.elapsed) and r.seconds() > 0
        assert r.seconds() == pytest.approx(sum(s.seconds for s in steps if s.side == k))
    assert [len(r.frames) for r in result.runs] == [4, 3] and result.runs[0].steps() == 6  # 0, 2, 4, 5
    assert result.elapsed(3) == (result.runs[0].elapsed[3], result.runs[1].elapsed[2])


def test_a_stopped_comparison_ends_early(demo):
    stop = threading.Event()
    cfg = SampleConfig(n=1, sampler="ddpm", seed=0)
    result = ABResult(ABSide(demo, cfg), ABSide(demo, cfg))
    for step in ab_frames(*result.sides, stop):
        result.add(step)
        stop.set()
    assert result.count() == 1 and not result.finished() and result.final_difference() is None


def test_pairs_that_cannot_share_the_noise_are_refused(demo):
    a = ABSide(demo, SampleConfig(n=2, seed=1))
    with pytest.raises(ConfigError, match="same seed"):
        check_pair(a, ABSide(demo, SampleConfig(n=2, seed=2)))
    with pytest.raises(ConfigError, match="same seed and number of images"):
        check_pair(a, ABSide(demo, SampleConfig(n=3, seed=1)))
    with pytest.raises(ConfigError, match="cannot start from the same noise"):
        check_pair(a, ABSide(replace(demo, image_size=32), SampleConfig(n=2, seed=1)))
    with pytest.raises(ConfigError, match="class must lie"):
        check_pair(a, ABSide(demo, SampleConfig(n=2, seed=1, class_label=99)))
    assert check_pair(a, a)[0].cfg.variance == demo.variance  # the model's defaults filled in


def test_the_difference_image():
    a = np.zeros((2, 4, 4, 3), np.uint8)
    b = a.copy()
    b[1, 2, 3] = (30, 0, 0)  # one pixel, one channel: 10 levels on average
    b[0, 0, 0] = (0, 3, 0)  # 1 level on average
    d = difference(a, b)
    assert d.max == 30 and d.mean == pytest.approx(33 / a.size) and d.gain == pytest.approx(25.5)
    assert tuple(d.images[1, 2, 3]) == (255, 255, 255)  # the largest difference is white
    assert 0 < d.images[0, 0, 0, 0] < 255 and d.images[0, 0, 0, 1:].max() == 0  # a small one: dim red
    assert not d.images[1, 0].any()  # equal pixels are black
    assert "max 30" in d.text()
    tiny = difference(a, np.ones_like(a))  # all 1 level: the gain stops at MAX_GAIN
    assert tiny.gain == 32 and tuple(tiny.images[0, 0, 0]) == (96, 0, 0)
    with pytest.raises(ConfigError, match="differ in shape"):
        difference(a, a[:1])


def test_the_quality_judge_scores_each_sides_own_settings(demo, tmp_path):
    from ddpm_gui.data import load_data
    from ddpm_gui.engine.evaluate import ClassifierSpec, get_classifier

    data = load_data("builtin:256", image_size=16)
    clf = get_classifier(data, spec=ClassifierSpec(steps=150, batch_size=64), cache_dir=tmp_path)
    cond = SampleConfig(n=4, sampler="ddim", steps=10, seed=2, class_label=3, guidance=3.0)
    a, b = ABSide(demo, cond), ABSide(demo, replace(cond, class_label=None))
    said = []
    scored = dict(score_pair(a, b, data, n=6, classifier=clf, report=said.append))
    assert said == ["Scoring A: 6 samples…", "Scoring B: 6 samples…"]
    assert scored[0].n == scored[1].n == 6
    assert scored[0].accuracy is not None and scored[1].accuracy is None  # B asked for no class
    assert "the class asked for" in headline(scored[0]) and "recognisable" in headline(scored[1])
    again = dict(score_pair(a, a, data, n=6, classifier=clf))  # the same settings: the same images
    assert again[0].frechet_distance == again[1].frechet_distance == scored[0].frechet_distance


def test_the_judges_data_is_the_models(demo):
    from ddpm_gui.data import load_data

    small = load_data("builtin:64", image_size=16)
    assert judge_data(demo, small) is small
    blank = replace(demo, meta={})
    with pytest.raises(ConfigError, match="Load the dataset this model was trained on"):
        judge_data(blank, load_data("builtin:64", image_size=32))


def test_a_side_in_one_line(demo):
    ddim = SampleConfig(sampler="ddim", steps=20, eta=0.5, class_label=3, guidance=2.0)
    assert ABSide(demo, ddim).describe() == "ddim · 20 steps · eta 0.5 · class 3, w = 2"
    assert ABSide(demo, replace(ddim, sampler="dpm++2m", class_label=None)).describe() == "dpm++2m · 20 steps"
    paper = ABSide(demo, SampleConfig(sampler="ddpm", variance="posterior"), SCHEDULE_PRESETS["ddpm-paper"])
    assert paper.describe() == "ddpm (posterior variance) · 1000 steps · linear schedule, T = 1000"
    assert paper.prepared().schedule.T == 1000 and demo.schedule.T == 100  # the model's own is untouched
