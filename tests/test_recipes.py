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
