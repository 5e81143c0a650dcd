"""Training settings defined once: the `train` options are generated from TrainConfig, the options a user
gave are argparse's own record (every spelling it accepts), recipes and TOML files are partials of the
same config, and a resumed run takes exactly the settings that are safe to change."""

from __future__ import annotations

import argparse

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ddpm_gui import cli
from ddpm_gui.cli.train import config_from_args, resumed_config
from ddpm_gui.core.spec import SCHEDULE_PRESETS
from ddpm_gui.engine.config import (
    RESUMABLE,
    SETTING_TYPES,
    SETTINGS,
    TrainConfig,
    config_toml,
    load_run_config,
    parse_config_toml,
)
from ddpm_gui.engine.recipes import get_recipe
from ddpm_gui.errors import ConfigError


def _train_parser() -> argparse.ArgumentParser:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["train"]


def _parse(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(["train", "--out", "unused", *argv])


def _option_strings() -> list[str]:
    return [o for a in _train_parser()._actions for o in a.option_strings if o.startswith("--")]


def _shortest_prefix(flag: str) -> str | None:
    """The shortest abbreviation argparse accepts for `flag` (unique among the options), if any."""
    others = [o for o in _option_strings() if o != flag]
    for n in range(3, len(flag)):
        if not any(o.startswith(flag[:n]) for o in others):
            return flag[:n]
    return None


def test_every_setting_has_one_option_and_no_option_restates_a_default():
    actions = [a for a in _train_parser()._actions]
    for name, s in SETTINGS.items():
        if name == "schedule":
            continue
        mine = [a for a in actions if a.dest == name]
        assert {s.flag, s.negative} - {None} == {o for a in mine for o in a.option_strings}
        assert all(a.default is argparse.SUPPRESS for a in mine)  # the default lives in TrainConfig only
    # with no option given, the command line means exactly TrainConfig's defaults
    assert config_from_args(_parse()) == TrainConfig()


def test_help_shows_the_config_defaults(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    d = TrainConfig()
    assert f"(default: {d.preview_every})" in out and f"(default: {d.batch_size})" in out


def test_abbreviated_options_win_over_the_recipe():
    """`--batch 4 --step=3` are --batch-size and --steps: the recipe must not overwrite them."""
    cfg = config_from_args(_parse("--recipe", "quick-cpu", "--batch", "4", "--step=3"))
    assert (cfg.batch_size, cfg.steps) == (4, 3)
    assert cfg.lr == get_recipe("quick-cpu").changes["lr"]  # what was not given comes from the recipe


def _value_for(name: str):
    kind, s = SETTING_TYPES[name], SETTINGS[name]
    if kind is int:
        return int(s.lo) + 1 if s.hi is None or s.lo + 1 <= s.hi else int(s.lo)
    if kind is float:
        return (s.lo or 0.0) + 1e-3 if s.hi is None else ((s.lo or 0.0) + s.hi) / 3
    if s.choices:
        return s.choices[-1]
    return {"data": "builtin:64", "preset": "small", "device": "cpu", "init_from": "runs/base"}[name]


_SCALARS = [n for n in SETTINGS if SETTING_TYPES[n] in (int, float, str)]


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(_SCALARS), spelling=st.sampled_from(["space", "equals", "prefix", "prefix="]))
def test_every_spelling_argparse_accepts_counts_as_given(name, spelling):
    flag, value = SETTINGS[name].flag, _value_for(name)
    text = repr(value) if isinstance(value, float) else str(value)
    if spelling.startswith("prefix"):
        flag = _shortest_prefix(flag) or flag
    argv = [f"{flag}={text}"] if spelling.endswith("=") or spelling == "equals" else [flag, text]
    for recipe in ("quick-cpu", "tutorial"):
        cfg = config_from_args(_parse("--recipe", recipe, *argv))
        assert getattr(cfg, name) == value, (argv, recipe)


@pytest.mark.parametrize("flag,neg", [(s.flag, s.negative) for s in SETTINGS.values() if s.negative])
def test_true_false_settings_both_ways(flag, neg):
    name = next(n for n, s in SETTINGS.items() if s.flag == flag)
    assert getattr(config_from_args(_parse(flag)), name) is True
    assert getattr(config_from_args(_parse(neg)), name) is False
    # over a recipe that sets the opposite
    assert getattr(config_from_args(_parse("--recipe", "quick-cpu", neg)), name) is False


def test_out_of_range_option_is_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        _parse("--batch-size", "0")
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "--batch-size" in err and "from 1 to 65,536" in err
    assert len(err.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- TOML files

_partials = st.fixed_dictionaries(
    {},
    optional={
        "lr": st.floats(1e-6, 0.5),
        "batch_size": st.integers(1, 4096),
        "steps": st.integers(1, 10**6),
        "conditional": st.booleans(),
        "prediction": st.sampled_from(["eps", "v"]),
        "data": st.text(min_size=1, max_size=20).filter(lambda t: t.strip() != ""),
        "schedule": st.sampled_from(list(SCHEDULE_PRESETS.values())),
        "ema_decay": st.floats(0.0, 0.9999),
        "device": st.sampled_from(["auto", "cpu", "cuda:1"]),
    },
)


@settings(max_examples=80, deadline=None)
@given(_partials)
def test_toml_round_trip_of_any_partial(partial):
    assert parse_config_toml(config_toml(partial)) == partial


def test_a_whole_config_round_trips_through_toml():
    cfg = get_recipe("quick-cpu").apply().replace(data_limit=100, seed=7)
    assert TrainConfig().replace(**parse_config_toml(config_toml(cfg))) == cfg


def test_toml_schedule_by_preset_name_or_table():
    assert parse_config_toml('schedule = "cosine"')["schedule"] == SCHEDULE_PRESETS["cosine"]
    sch = parse_config_toml("[schedule]\nkind = 'linear'\nT = 50\n")["schedule"]
    assert (sch.kind, sch.T, sch.beta_end) == ("linear", 50, 0.04)


@pytest.mark.parametrize(
    "text,match",
    [
        ("bach_size = 4", "unknown setting"),
        ("lr = ", "not valid TOML"),
        ('schedule = "nope"', "unknown schedule"),
        ("version = 99", "newer DDPM Studio"),
        ("[schedule]\nkynd = 'linear'", "schedule"),
        ("a = " + "[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ],
    ids=["unknown", "syntax", "schedule-name", "newer", "schedule-key", "deep"],
)
def test_bad_toml_is_a_clear_error(text, match):
    with pytest.raises(ConfigError, match=match):
        parse_config_toml(text, "f.toml")


def test_cli_config_file_between_recipe_and_options(tmp_path):
    f = tmp_path / "mine.toml"
    f.write_text(config_toml({"lr": 2e-3, "steps": 7, "ema_decay": 0.99}))
    cfg = config_from_args(_parse("--recipe", "quick-cpu", "--config", str(f), "--steps", "3"))
    assert cfg.lr == 2e-3 and cfg.ema_decay == 0.99  # the file over the recipe
    assert cfg.steps == 3  # the option over the file
    assert cfg.batch_size == get_recipe("quick-cpu").changes["batch_size"]  # the recipe under both


@pytest.mark.parametrize("content", [None, b"lr = [", b"\xff\xfe", b"unknown = 1"])
def test_cli_bad_config_file_is_one_line_exit_2(tmp_path, capsys, content):
    f = tmp_path / "bad.toml"
    if content is None:
        f.mkdir()
    else:
        f.write_bytes(content)
    code = cli.main(["train", "--config", str(f), "--out", str(tmp_path / "r"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r").exists()


# ----------------------------------------------------------------------------- resume


def test_resume_takes_resumable_changes_in_any_spelling():
    saved = get_recipe("quick-cpu").apply()
    cfg = resumed_config(_parse("--resume", "--lr", "1e-4", "--step", "2500", "--batch=16"), saved)
    assert (cfg.lr, cfg.steps, cfg.batch_size) == (1e-4, 2500, 16)
    assert cfg.replace(lr=saved.lr, steps=saved.steps, batch_size=saved.batch_size) == saved


def test_resume_refuses_a_change_it_cannot_take():
    saved = get_recipe("quick-cpu").apply()
    for argv, flag in ((("--preset", "small"), "--preset"), (("--pred", "eps"), "--prediction"),
                       (("--schedule", "tutorial"), "--schedule"), (("--image-size", "16"), "--image-size")):  # fmt: skip
        with pytest.raises(ConfigError, match=flag):
            resumed_config(_parse("--resume", *argv), saved)
    # giving a fixed setting its own value is no change
    assert resumed_config(_parse("--resume", "--preset", saved.preset), saved) == saved
    with pytest.raises(ConfigError, match="--recipe"):
        resumed_config(_parse("--resume", "--recipe", "tutorial"), saved)


def test_resumable_is_what_the_run_can_change():
    assert {"lr", "grad_clip", "warmup_steps", "ema_decay", "steps", "preview_every", "checkpoint_every",
            "batch_size"} <= RESUMABLE  # fmt: skip
    assert not {"preset", "image_size", "schedule", "prediction", "conditional", "data", "seed"} & RESUMABLE


def test_cli_resume_of_a_fixed_setting_is_exit_2_and_leaves_the_run(tmp_path, capsys):
    run = tmp_path / "run"
    base = ["train", "--data", "builtin:64", "--image-size", "16", "--batch-size", "4", "--device", "cpu",
            "--checkpoint-minutes", "0", "--preview-every", "0", "--out", str(run)]  # fmt: skip
    assert cli.main([*base, "--steps", "2"]) == 0
    before = {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert cli.main(["train", "--out", str(run), "--resume", "--preset", "small"]) == 2
    err = capsys.readouterr().err
    assert "--preset" in err and len(err.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    assert load_run_config(run).preset == "tiny"


def test_cli_abbreviations_train_what_was_typed(tmp_path):
    """End to end: `--recipe quick-cpu --batch 4 --step=3` trains 3 steps at batch 4."""
    run = tmp_path / "run"
    code = cli.main(["train", "--recipe", "quick-cpu", "--batch", "4", "--step=3", "--data", "builtin:64",
                     "--image-size", "16", "--device", "cpu", "--preview-every", "0", "--out", str(run)])  # fmt: skip
    assert code == 0
    cfg = load_run_config(run)
    assert (cfg.batch_size, cfg.steps) == (4, 3)


@pytest.mark.parametrize("text", ["\x7f", "a\x00b", 'quote " and \\ backslash', "\u2028", "\x1f", "é ✓"])
def test_toml_keeps_any_text_setting(text):
    """Found by the round-trip property: TOML refuses a raw DEL, which JSON's escaping leaves as it is."""
    assert parse_config_toml(config_toml({"data": text}))["data"] == text
