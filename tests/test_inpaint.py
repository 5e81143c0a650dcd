"""Inpainting (RePaint): the jump schedule, the known region held at its noise level, the final image equal to
the original outside the mask, resampling off = plain RePaint, one model call per reverse move, and the
engine's frames for our models, the demo model (class + guidance) and a diffusers model."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
import torch

from ddpm_gui.core.diffusion import ddpm_step, q_sample
from ddpm_gui.core.inpaint import (
    keep_mask,
    model_calls,
    repaint_process,
    repaint_schedule,
    repaint_start,
)
from ddpm_gui.core.schedule import NoiseSchedule, ScheduleConfig
from ddpm_gui.engine.inpaint import EMPTY_MASK_TEXT, chain_moves, fit_mask, inpaint_frames
from ddpm_gui.engine.sampler import SampleConfig
from ddpm_gui.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")


def _image(size: int, seed: int = 0) -> np.ndarray:
    """A smooth colour gradient with a square: an image with structure, in uint8."""
    y, x = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    img = np.stack([x, y, 1 - x * y], axis=-1) * 255
    img[size // 4 : size // 2, size // 4 : size // 2] = (20, 200, 60)
    return img.round().astype(np.uint8)


def _mask(size: int) -> np.ndarray:
    """The right half painted (True: regenerate)."""
    m = np.zeros((size, size), bool)
    m[:, size // 2 :] = True
    return m


class Counting:
    """A stand-in denoiser with the shape of a model's output; it counts its calls. The RePaint loop is what
    these tests check, not a model."""

    def __init__(self):
        self.calls = 0
        self.timesteps: list[int] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.timesteps.append(int(t[0]))
        return 0.3 * torch.tanh(x)


# ----------------------------------------------------------------------------- the schedule


def test_without_resampling_every_level_is_visited_once():
    plain = list(range(9, -2, -1))
    assert repaint_schedule(9) == plain
    assert repaint_schedule(9, jump_length=3, resamples=0) == plain  # no resamples: no jumps
    assert repaint_schedule(9, jump_length=0, resamples=4) == plain  # no jump length: no jumps
    assert model_calls(plain) == 10


def test_jumps_go_back_up_and_come_down_again():
    # t_start 5, jump 2, once: jump points 0 and 2 (RePaint's get_schedule_jump(6, 1, 2, 2))
    assert repaint_schedule(5, 2, 1) == [5, 4, 3, 2, 3, 4, 3, 2, 1, 0, 1, 2, 1, 0, -1]
    levels = repaint_schedule(99, 10, 9)  # the paper's setting (jump_n_sample 10) on a 100-step schedule
    assert levels[0] == 99 and levels[-1] == -1 and max(levels) == 99
    assert all(abs(b - a) == 1 for a, b in zip(levels, levels[1:], strict=False))
    assert model_calls(levels) == 100 + 9 * 9 * 10  # 9 jump points (0..80), 9 times 10 levels again
    assert chain_moves(100, 10, 9) == (len(levels) - 1, 910)


@pytest.mark.parametrize(
    ("t_start", "jump", "resamples", "what"),
    [(-1, 0, 0, "at least 0"), (9, -1, 1, "0 or more"), (9, 12, 1, "at most 9"), (9, 2, 10_000, "At most")],
)
def test_bad_schedules_say_what_to_do(t_start, jump, resamples, what):
    with pytest.raises(ConfigError, match=what):
        repaint_schedule(t_start, jump, resamples)


# ----------------------------------------------------------------------------- the chain


@pytest.fixture(scope="module")
def sched():
    return NoiseSchedule(ScheduleConfig(T=20))


def _x0(k: int = 3, size: int = 8) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return (torch.rand((1, 3, size, size), generator=gen) * 2 - 1).expand(k, -1, -1, -1)


def _chain(sched, jump=0, resamples=0, seed=0, denoiser=None, **kw):
    x0, mask = _x0(), torch.from_numpy(_mask(8))
    gen = torch.Generator().manual_seed(seed)
    return list(
        repaint_process(denoiser or Counting(), x0, mask, sched, None, jump, resamples, generator=gen, **kw)
    )


@pytest.mark.parametrize("variance", ["beta", "posterior"])
def test_the_known_region_stays_at_its_noise_level_and_ends_as_the_original(sched, variance):
    x0 = _x0()
    keep = keep_mask(torch.from_numpy(_mask(8)), x0).expand_as(x0).bool()
    steps = _chain(sched, jump=3, resamples=2, variance=variance, clip_x0=True)
    for st in steps:
        if st.forward:
            continue
        if st.t_next < 0:  # q(x_0 | x_0): the original itself
            assert torch.equal(st.x[keep], x0[keep])
            continue
        ab = float(sched.alpha_bars[st.t_next])
        z = (st.x - ab**0.5 * x0)[keep] / (1 - ab) ** 0.5  # standard normal where kept
        assert z.abs().max() < 6, (st.t_next, float(z.abs().max()))
        assert abs(float(z.std()) - 1) < 0.3
    last_but_one = next(st for st in steps if st.t_next == 0)  # level 0: within sqrt(1 - ab_0) per unit
    bound = 6 * float(1 - sched.alpha_bars[0]) ** 0.5
    assert (last_but_one.x - x0)[keep].abs().max() < bound + (1 - float(sched.alpha_bars[0]) ** 0.5)
    final = steps[-1].x
    assert not torch.equal(final[~keep], x0[~keep])  # the painted region was regenerated
    assert not torch.allclose(final[0][~keep[0]], final[1][~keep[1]])  # differently for each image


def test_no_resampling_is_plain_repaint(sched):
    """Jump length 0 or no resamples: the paper's Algorithm 1 with U = 1, written out here from the
    diffusion primitives, draw for draw."""
    plain = _chain(sched)[-1].x
    assert torch.equal(_chain(sched, jump=4, resamples=0)[-1].x, plain)
    assert torch.equal(_chain(sched, jump=0, resamples=3)[-1].x, plain)
    x0, mask = _x0(), torch.from_numpy(_mask(8))
    keep = keep_mask(mask, x0)
    gen = torch.Generator().manual_seed(0)
    x = repaint_start(x0, mask, sched, None, gen)
    model = Counting()
    for t in range(sched.T - 1, -1, -1):
        unknown, _ = ddpm_step(model(x, torch.full((3,), t)), x, t, sched, generator=gen)
        known = q_sample(x0, t - 1, sched, generator=gen)[0] if t > 0 else x0
        x = keep * known + (1 - keep) * unknown
    assert torch.equal(x, plain)
    assert not torch.equal(_chain(sched, jump=4, resamples=1)[-1].x, plain)  # resampling changes it


@pytest.mark.parametrize(("jump", "resamples"), [(0, 0), (3, 2), (5, 1), (19, 1)])
def test_one_model_call_per_reverse_move(sched, jump, resamples):
    model = Counting()
    steps = _chain(sched, jump, resamples, denoiser=model)
    levels = repaint_schedule(sched.T - 1, jump, resamples)
    assert model.calls == model_calls(levels) == sum(not s.forward for s in steps)
    assert len(steps) == len(levels) - 1
    # the model is asked at the level each reverse move starts from
    assert model.timesteps == [a for a, b in zip(levels, levels[1:], strict=False) if b < a]


def test_nothing_painted_gives_the_original_and_a_wrong_mask_is_refused(sched):
    x0 = _x0()
    out = deque(repaint_process(Counting(), x0, torch.zeros(8, 8), sched), maxlen=1)[0].x
    assert torch.equal(out, x0)
    with pytest.raises(ConfigError, match="does not fit the images"):
        keep_mask(torch.ones(4, 4), x0)


# ----------------------------------------------------------------------------- the engine


def _tiny_bundle(num_classes=None, size=16):
    from ddpm_gui.engine.sampler import ModelBundle
    from ddpm_gui.models.presets import build_model

    torch.manual_seed(0)
    model = build_model("tiny", num_classes=num_classes).eval()
    return ModelBundle(
        model, NoiseSchedule(ScheduleConfig(T=12)), "eps", size, num_classes, None, 0, "tiny", "untrained",
        torch.device("cpu"),
    )  # fmt: skip


def _check_result(frames, image, mask, k):
    final = frames[-1]
    assert final.final and final.xt.shape == (k, *image.shape)
    for img in final.xt:  # kept exactly outside the mask
        np.testing.assert_array_equal(img[~mask], image[~mask])
    painted = final.xt[:, mask].astype(int)
    for a in range(k):
        for b in range(a + 1, k):
            assert np.abs(painted[a] - painted[b]).mean() > 1, (a, b)


@pytest.mark.parametrize("variance", ["beta", "posterior"])
def test_inpaint_frames_with_our_model(variance):
    bundle, image, mask = _tiny_bundle(), _image(16), _mask(16)
    cfg = SampleConfig(variance=variance)
    frames = list(inpaint_frames(bundle, image, mask, k=3, seed=2, cfg=cfg, jump_length=3, resamples=1))
    moves, calls = chain_moves(12, 3, 1)
    assert frames[0].index == -1 and frames[0].t == 11 and len(frames) == 1 + moves
    np.testing.assert_array_equal(frames[0].x0, np.repeat(image[None], 3, 0))
    assert frames[-1].calls == calls and sum(f.t_next > f.t for f in frames[1:]) == moves - calls
    _check_result(frames, image, mask, 3)
    again = list(inpaint_frames(bundle, image, mask, k=3, seed=2, cfg=cfg, jump_length=3, resamples=1))
    np.testing.assert_array_equal(again[-1].xt, frames[-1].xt)  # the seed decides


def test_inpaint_frames_with_the_demo_model_a_class_and_guidance():
    from ddpm_gui.engine.demo import load_demo_bundle

    bundle = load_demo_bundle(device="cpu")
    image, mask = _image(bundle.image_size), _mask(bundle.image_size)
    cfg = SampleConfig(class_label=2, guidance=3.0, every=10)
    frames = list(inpaint_frames(bundle, image, mask, k=2, seed=0, cfg=cfg))
    assert len(frames) == 1 + 10 + 1  # the starts, every 10th of the 100 moves, and the last
    _check_result(frames, image, mask, 2)


def test_inpaint_frames_with_a_diffusers_model(tmp_path):
    pytest.importorskip("diffusers")
    from test_diffusers_in import save_pipeline

    from ddpm_gui.engine.diffusers_io import load_diffusers_bundle

    folder, _ = save_pipeline(tmp_path / "pipe", num_train_timesteps=10, variance_type="fixed_small")
    bundle = load_diffusers_bundle(folder, device="cpu")
    assert bundle.variance == "posterior"
    image, mask = _image(8), _mask(8)
    frames = list(inpaint_frames(bundle, image, mask, k=2, seed=0, jump_length=2, resamples=1))
    _check_result(frames, image, mask, 2)


def test_inpaint_frames_refuses_what_it_cannot_do():
    bundle, image = _tiny_bundle(), _image(16)
    with pytest.raises(ConfigError, match="DDPM sampler"):
        next(inpaint_frames(bundle, image, _mask(16), cfg=SampleConfig(sampler="ddim")))
    with pytest.raises(ConfigError, match="Paint the region"):
        next(inpaint_frames(bundle, image, np.zeros((16, 16), bool)))
    assert "mask is empty" in EMPTY_MASK_TEXT
    with pytest.raises(ConfigError, match="jump length must be at most 11"):
        next(inpaint_frames(bundle, image, _mask(16), jump_length=20, resamples=1))


def test_inpaint_frames_stops_when_asked():
    import threading

    stop = threading.Event()
    frames = []
    for f in inpaint_frames(_tiny_bundle(), _image(16), _mask(16), k=1, stop=stop):
        frames.append(f)
        stop.set()
    assert len(frames) == 2 and not frames[-1].final


def test_fit_mask_crops_like_the_image_and_stays_binary():
    wide = np.zeros((20, 40), np.uint8)
    wide[:, 10:20] = 255  # the left half of the centred 20 x 20 square
    m = fit_mask(wide, 10)
    assert m.dtype == np.bool_ and m.shape == (10, 10)
    assert m[:, :5].all() and not m[:, 5:].any()
    rgb = np.zeros((10, 10, 3), np.uint8)
    rgb[2, 3, 1] = 200
    assert fit_mask(rgb, 10).sum() == 1
    with pytest.raises(ConfigError, match="H x W"):
        fit_mask(np.zeros(5), 4)


# ----------------------------------------------------------------------------- the CLI


def test_cli_denoise_with_a_mask_inpaints(tmp_path, capsys):
    from PIL import Image

    from ddpm_gui import cli

    image, mask = _image(16), _mask(16)
    Image.fromarray(image).save(tmp_path / "image.png")
    Image.fromarray(np.repeat(mask[..., None], 3, 2).astype(np.uint8) * 255).save(tmp_path / "mask.png")
    out = tmp_path / "row.png"
    args = ["denoise", "--model", "demo", "--image", tmp_path / "image.png", "--mask", tmp_path / "mask.png",
            "--k", 2, "--jump-length", 20, "--resamples", 1, "--device", "cpu", "--scale", 1, "--out", out]  # fmt: skip
    assert cli.main([str(a) for a in args]) == 0
    assert "2 inpaintings" in capsys.readouterr().out
    with Image.open(out) as im:
        row = np.asarray(im.convert("RGB"))
    tiles = [row[1:17, 1 + 17 * i : 17 + 17 * i] for i in range(4)]  # original, start, 2 results; 1 px gaps
    np.testing.assert_array_equal(tiles[0], image)
    for res in tiles[2:]:
        np.testing.assert_array_equal(res[~mask], image[~mask])
    assert np.abs(tiles[2][mask].astype(int) - tiles[3][mask]).mean() > 1
    assert cli.main(["denoise", "--model", "demo", "--resamples", "2", "--out", str(out)]) == 2
    assert "give a --mask too" in capsys.readouterr().err
