"""Training recipes: valid configs, and `ddpm-gui train --recipe` with options that override it."""

from __future__ import annotations

import pytest

from ddpm_gui import cli
from ddpm_gui.engine.config import SETTINGS, load_run_config
from ddpm_gui.engine.recipes import RECIPES, get_recipe, matching_recipe
from ddpm_gui.errors import ConfigError


@pytest.mark.parametrize("name", list(RECIPES))
def test_every_recipe_is_a_valid_config(name):
    cfg = RECIPES[name].apply().validate()
    assert cfg.preset == RECIPES[name].changes["preset"] and cfg.steps == RECIPES[name].changes["steps"]
    assert set(RECIPES[name].changes) <= set(SETTINGS)  # a partial of TrainConfig, nothing else
    assert matching_recipe(cfg) == name and matching_recipe(cfg.replace(lr=0.123)) is None


def test_quick_cpu_ends_in_noise_and_tutorial_keeps_the_articles_schedule():
    from ddpm_gui.core.schedule import NoiseSchedule

    quick = NoiseSchedule(get_recipe("quick-cpu").changes["schedule"])
    tut = NoiseSchedule(get_recipe("tutorial").changes["schedule"])
    assert float(quick.alpha_bars[-1]) < 1e-3  # x_T is noise: sampling from N(0, I) matches training
    assert float(tut.alpha_bars[-1]) == pytest.approx(0.131, abs=0.002)


def test_unknown_recipe_is_a_clear_error():
    with pytest.raises(ConfigError, match="quick-cpu"):
        get_recipe("fast")


def test_cli_recipe_with_an_option_that_wins(tmp_path):
    out = tmp_path / "run"
    code = cli.main(
        ["train", "--recipe", "quick-cpu", "--data", "builtin:64", "--image-size", "16", "--steps", "2",
         "--batch-size", "4", "--device", "cpu", "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    cfg = load_run_config(out)
    # from the recipe
    assert cfg.preset == "tiny" and cfg.lr == 1e-3 and cfg.ema_decay == 0.995
    assert cfg.schedule.kind == "cosine" and cfg.prediction == "v"
    assert cfg.conditional is True  # the built-in shapes have labels: the recipe conditions on them
    # given on the command line: wins over the recipe
    assert cfg.steps == 2 and cfg.batch_size == 4 and cfg.image_size == 16


def _image_folder_without_classes(root, n=8):
    import numpy as np
    from PIL import Image

    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / f"img{i}.png")
    return root


def test_cli_recipe_on_unlabelled_data_says_to_use_unconditional(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DDPM_GUI_CACHE", str(tmp_path / "cache"))
    folder = _image_folder_without_classes(tmp_path / "imgs")
    base = ["train", "--recipe", "quick-cpu", "--data", str(folder), "--image-size", "16", "--steps", "2",
            "--batch-size", "4", "--device", "cpu"]  # fmt: skip
    code = cli.main([*base, "--out", str(tmp_path / "r1")])
    err = capsys.readouterr().err
    assert code != 0 and "no class labels" in err and "--unconditional" in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    code = cli.main([*base, "--unconditional", "--out", str(tmp_path / "r2")])
    assert code == 0
    assert load_run_config(tmp_path / "r2").conditional is False


def test_cli_conditional_and_unconditional_exclude_each_other(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "--conditional", "--unconditional", "--out", str(tmp_path / "r")])
    assert exc.value.code == 2 and "not allowed with" in capsys.readouterr().err


def test_cli_unknown_recipe_is_one_line(tmp_path, capsys):
    code = cli.main(["train", "--recipe", "fast", "--out", str(tmp_path / "r"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "Unknown recipe" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


# ----------------------------------------------------------------------------- Min-SNR weighting


def _paper_weight(snr: float, gamma: float, prediction: str) -> float:
    """Hang et al. 2023: the x_0-loss weight min(SNR, gamma), over SNR for eps and SNR + 1 for v."""
    return min(snr, gamma) / (snr if prediction == "eps" else snr + 1)


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("gamma", [1.0, 5.0, 20.0])
def test_min_snr_weight_is_the_papers_formula(prediction, gamma):
    import torch

    from ddpm_gui.core.schedule import NoiseSchedule
    from ddpm_gui.core.spec import SCHEDULE_PRESETS
    from ddpm_gui.core.weighting import loss_weight

    snr = NoiseSchedule(SCHEDULE_PRESETS["cosine"]).snr  # float64, from about 1e4 down to about 0
    assert float(snr.max()) > gamma > float(snr.min())  # both sides of the clip are exercised
    got = loss_weight(snr, gamma, prediction)
    want = torch.tensor([_paper_weight(float(s), gamma, prediction) for s in snr], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    # clean timesteps (SNR >= gamma) are cut down; noisy eps ones keep their full weight
    if prediction == "eps":
        assert float(got[0]) == pytest.approx(gamma / float(snr[0])) and float(got[-1]) == 1.0


def test_min_snr_weight_edges_and_off():
    import torch

    from ddpm_gui.core.weighting import loss_weight

    snr = torch.tensor([0.0, 1.0, float("inf")])
    assert loss_weight(snr, 5.0, "eps").tolist() == [1.0, 1.0, 0.0]  # the limit at SNR 0, not 0/0
    assert loss_weight(snr, 5.0, "v").tolist() == [0.0, 0.5, 0.0]
    assert loss_weight(snr, 0.0, "v").tolist() == [1.0, 1.0, 1.0]  # gamma 0: off, every timestep alike
    with pytest.raises(ValueError, match="prediction"):
        loss_weight(snr, 5.0, "x0")


def _fixed_batch_mse(learner, data, n=64) -> float:
    """The plain (unweighted) loss of the raw weights on a fixed batch: fixed images, timesteps, noise."""
    import torch

    from ddpm_gui.core.diffusion import from_uint8, q_sample, training_target

    g = torch.Generator().manual_seed(123)
    x0 = from_uint8(torch.from_numpy(data.images[:n]))
    t = torch.randint(0, learner.schedule.T, (n,), generator=g)
    xt, eps = q_sample(x0, t, learner.sched_dev, noise=torch.randn(x0.shape, generator=g))
    target = training_target(x0, eps, t, learner.sched_dev, learner.config.prediction)
    y = torch.from_numpy(data.labels[:n]).long()
    with torch.no_grad():
        return float(((learner.model.eval()(xt, t, y) - target) ** 2).mean())


def test_training_with_min_snr_weighting_lowers_the_loss(one_thread):
    from conftest import small_config

    from ddpm_gui.core.spec import SCHEDULE_PRESETS
    from ddpm_gui.data import load_data
    from ddpm_gui.engine.learner import Learner

    data = load_data("builtin:256", image_size=16)
    kw = dict(conditional=True, prediction="v", schedule=SCHEDULE_PRESETS["cosine"], batch_size=16)
    weighted, plain = (Learner(small_config(min_snr_gamma=g, **kw), data=data) for g in (5.0, 0.0))
    for lr in (weighted, plain):
        lr.setup()
    before = _fixed_batch_mse(weighted, data)
    first = [float(lr.model.train() and lr.train_step()) for lr in (weighted, plain)]
    # the same batch and weights: the reported loss is the plain MSE either way, but the step differs
    assert first[0] == first[1]
    assert any(
        not (a == b).all() for a, b in zip(weighted.model.parameters(), plain.model.parameters(), strict=True)
    )
    for _ in range(59):
        weighted.train_step()
    after = _fixed_batch_mse(weighted, data)
    assert after < 0.8 * before, (before, after)


def test_cli_min_snr_gamma_option(tmp_path, capsys):
    out = tmp_path / "run"
    base = ["train", "--data", "builtin:64", "--image-size", "16", "--steps", "2", "--batch-size", "4",
            "--device", "cpu"]  # fmt: skip
    assert cli.main([*base, "--min-snr-gamma", "5", "--out", str(out)]) == 0
    assert load_run_config(out).min_snr_gamma == 5.0
    with pytest.raises(SystemExit) as exc:
        cli.main([*base, "--min-snr-gamma", "-1", "--out", str(tmp_path / "bad")])
    assert exc.value.code == 2 and "min-snr-gamma" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
