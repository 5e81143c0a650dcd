"""`ddpm-gui` sub-commands end to end, in this process: files written, sizes, frames, help and errors."""

import argparse
import json
import re

import numpy as np
import pytest
from PIL import Image
from test_imageio import HOSTILE_KEYS, gradient, hostile_files

from ddpm_gui import __version__, cli

SUBCOMMANDS = ["train", "sample", "forward", "denoise", "info", "bench", "eval"]


@pytest.fixture(scope="module", autouse=True)
def isolated_env(tmp_path_factory):
    """The decoded-data cache in a temporary folder; no network."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DDPM_GUI_CACHE", str(tmp_path_factory.mktemp("cache")))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.delenv("DDPM_GUI_DEBUG", raising=False)
        yield


def run(argv) -> int:
    """cli.main(argv), with argparse's exits turned into the exit code."""
    try:
        return cli.main([str(a) for a in argv])
    except SystemExit as e:
        return e.code


def grid_size(n: int, size: int, scale: int, columns: int | None = None) -> tuple[int, int]:
    """(width, height) of make_grid's mosaic of n size x size tiles, 1 pixel apart."""
    cols = columns or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    return ((cols * (size + 1) + 1) * scale, (rows * (size + 1) + 1) * scale)


def gif_frames(path) -> list[np.ndarray]:
    with Image.open(path) as im:
        assert im.format == "GIF"
        frames = []
        for i in range(im.n_frames):
            im.seek(i)
            frames.append(np.asarray(im.convert("RGB")))
    return frames


def pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A real run folder: tiny preset, 16x16, 3 steps of the built-in shapes."""
    out = tmp_path_factory.mktemp("cli") / "run"
    code = run(["train", "--data", "builtin:64", "--preset", "tiny", "--steps", 3, "--batch-size", 8,
                "--image-size", 16, "--warmup", 0, "--device", "cpu", "--out", out])  # fmt: skip
    assert code == 0
    assert list((out / "checkpoints").glob("*.safetensors")), "train wrote no checkpoint"
    return out


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    assert "error: " in lines[0], err
    return lines[0]


# ----------------------------------------------------------------------------- forward


def test_forward_writes_strip_and_gif_of_every_step(tmp_path, capsys):
    strip, gif = tmp_path / "strip.png", tmp_path / "forward.gif"
    code = run(["forward", "--data", "builtin:16", "--index", 3, "--out", strip, "--gif", gif])
    assert code == 0
    out = capsys.readouterr().out
    # defaults: the tutorial schedule (T=100), 6 frames of 32x32 at scale 4
    assert "T=100" in out and "(101 frames)" in out
    with Image.open(strip) as im:
        assert im.format == "PNG" and im.size == grid_size(6, 32, 4, columns=6)
    frames = gif_frames(gif)
    assert len(frames) == 100 + 1  # x_0 and every x_t, t = 1..T
    assert frames[0].shape == (32 * 4, 32 * 4, 3)
    assert np.abs(frames[0].astype(int) - frames[-1].astype(int)).mean() > 20  # the image, then noise
    # the strip's first tile and the GIF's first frame are x_0: image 3 of the data
    from ddpm_gui.data import load_data

    x0 = load_data("builtin:16", image_size=32).images[3].repeat(4, 0).repeat(4, 1).astype(int)
    assert np.abs(pixels(strip)[4 : 4 + 128, 4 : 4 + 128].astype(int) - x0).max() <= 1
    assert np.abs(frames[0].astype(int) - x0).mean() < 4  # the GIF's palette rounds a little


def test_forward_of_an_image_file(tmp_path, capsys):
    src = tmp_path / "picture.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)).save(src)
    strip = tmp_path / "strip.png"
    code = run(["forward", "--image", src, "--image-size", 16, "--frames", 3, "--scale", 1, "--T", 10,
                "--out", strip])  # fmt: skip
    assert code == 0
    assert "T=10" in capsys.readouterr().out
    got = pixels(strip)
    assert got.shape[1::-1] == grid_size(3, 16, 1, columns=3)
    with Image.open(src) as im:  # the loader's policy: the centred 12x12 square, resized (not stretched)
        want = np.asarray(im.convert("RGB").resize((16, 16), Image.Resampling.BICUBIC, box=(4, 0, 16, 12)))
    assert np.abs(got[1:17, 1:17].astype(int) - want.astype(int)).max() <= 1  # x_0 is the file's image


def test_forward_of_a_missing_image_is_one_line(tmp_path, capsys):
    assert run(["forward", "--image", tmp_path / "nope.png", "--out", tmp_path / "x.png"]) == 2
    assert "nope.png" in one_error_line(capsys)
    assert not (tmp_path / "x.png").exists()


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """Files every image door must refuse in one line (see test_imageio.hostile_files)."""
    return hostile_files(tmp_path_factory.mktemp("hostile"))


@pytest.mark.parametrize("key", HOSTILE_KEYS)
def test_forward_of_a_hostile_image_is_one_line(hostile, key, tmp_path, capsys):
    path, pattern = hostile[key]
    assert run(["forward", "--image", path, "--out", tmp_path / "x.png"]) == 2
    line = one_error_line(capsys)
    assert path.name in line and re.search(pattern, line), line
    assert not (tmp_path / "x.png").exists()


def test_forward_frames_are_the_engines(tmp_path):
    """The strip shows engine.forward's frames: the same x_t as the Forward tab for the same seed."""
    from ddpm_gui.core.schedule import NoiseSchedule, ScheduleConfig
    from ddpm_gui.data import load_data
    from ddpm_gui.engine.forward import forward_frames

    x0 = load_data("builtin:16", image_size=32).images[3]
    want = forward_frames(x0, NoiseSchedule(ScheduleConfig(T=10)), seed=5)
    for flag, frames in (([], want.iterative), (["--closed-form"], want.closed)):
        out = tmp_path / f"strip{len(flag)}.png"
        code = run(["forward", "--data", "builtin:16", "--index", 3, "--T", 10, "--frames", 11, "--seed", 5,
                    "--scale", 1, "--out", out, *flag])  # fmt: skip
        assert code == 0
        got = pixels(out)
        tiles = np.stack([got[1 : 1 + 32, 1 + 33 * i : 1 + 33 * i + 32] for i in range(11)])
        assert np.array_equal(tiles, frames), flag


# ----------------------------------------------------------------------------- info


def test_info_lists_presets_with_parameters(capsys):
    assert run(["info"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^\s*tutorial\s+42,253,539\s", out, re.M), out
    assert re.search(r"^\s*tiny\s+[\d,]+\s", out, re.M), out


def test_info_without_the_diffusers_extra_names_what_to_install(capsys, monkeypatch):
    """The diffusers-architecture presets need the optional extra; without it `info` still lists the rest."""
    from ddpm_gui.errors import ConfigError
    from ddpm_gui.models import diffusers_unet

    def missing():
        raise ConfigError(diffusers_unet.INSTALL_HINT)

    monkeypatch.setattr(diffusers_unet, "import_diffusers", missing)
    assert run(["info"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^\s*tiny\s+[\d,]+\s", out, re.M), out
    assert re.search(r"^\s*ddpm-cifar10\s+needs an optional extra: .*pip install", out, re.M), out


def test_info_json(capsys):
    assert run(["info", "--json", "--image-size", 16]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["ddpm_gui"] == __version__
    assert info["presets"]["tutorial"]["parameters"] == 42_253_539
    tiny = info["presets"]["tiny"]
    assert 0 < tiny["parameters"] < 42_253_539 and tiny["gflop_train"] > tiny["gflop_forward"] > 0


# ----------------------------------------------------------------------------- train, sample, denoise


def test_sample_ddim_grid_and_gif(trained_run, tmp_path, capsys):
    grid, gif = tmp_path / "grid.png", tmp_path / "reverse.gif"
    code = run(["sample", "--run", trained_run, "--n", 4, "--sampler", "ddim", "--steps", 3, "--device", "cpu",
                "--out", grid, "--gif", gif])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "4 samples" in out and "model step 3" in out and "3 steps" in out
    with Image.open(grid) as im:
        assert im.format == "PNG" and im.size == grid_size(4, 16, 2)  # 2x2 tiles of 16x16 at scale 2
    frames = gif_frames(gif)
    assert len(frames) > 1 and f"({len(frames)} frames)" in out
    assert frames[0].shape[1::-1] == grid_size(4, 16, 2)
    assert not np.array_equal(frames[0], frames[-1])


def test_sample_ddpm_runs_the_full_chain(trained_run, tmp_path, capsys):
    grid = tmp_path / "grid.png"
    code = run(["sample", "--run", trained_run, "--n", 2, "--sampler", "ddpm", "--device", "cpu", "--scale", 1,
                "--out", grid])  # fmt: skip
    assert code == 0
    assert "100 steps" in capsys.readouterr().out  # the run's schedule: T=100
    with Image.open(grid) as im:
        assert im.size == grid_size(2, 16, 1)


def test_sample_modes_give_the_same_grid_on_cpu(trained_run, tmp_path):
    """On the CPU every --sample-mode is eager underneath: bitwise the same images for the same seed
    (cuda-graph goes through the wrapper, which runs the model eagerly off CUDA)."""
    grids = {}
    for mode, seed in (("eager", 0), ("auto", 0), ("cuda-graph", 0), ("eager", 1)):
        out = tmp_path / f"{mode}-{seed}.png"
        code = run(["sample", "--run", trained_run, "--n", 4, "--sampler", "ddim", "--steps", 3, "--seed", seed,
                    "--device", "cpu", "--sample-mode", mode, "--out", out])  # fmt: skip
        assert code == 0
        grids[mode, seed] = pixels(out)
    assert np.array_equal(grids["eager", 0], grids["auto", 0])
    assert np.array_equal(grids["eager", 0], grids["cuda-graph", 0])
    assert not np.array_equal(grids["eager", 0], grids["eager", 1])  # the seed matters: not a constant image


def test_denoise_with_sample_modes(trained_run, tmp_path, capsys):
    rows = {}
    for mode in ("eager", "auto"):
        out = tmp_path / f"denoise-{mode}.png"
        code = run(["denoise", "--run", trained_run, "--index", 4, "--t", 5, "--k", 2, "--device", "cpu",
                    "--sample-mode", mode, "--scale", 1, "--out", out])  # fmt: skip
        assert code == 0
        rows[mode] = pixels(out)
    assert "t=5" in capsys.readouterr().out
    assert rows["eager"].shape[1::-1] == grid_size(4, 16, 1, columns=4)  # original, noised, 2 denoised
    assert np.array_equal(rows["eager"], rows["auto"])


def test_denoise_of_a_bomb_image_is_one_line(trained_run, hostile, tmp_path, capsys):
    path, pattern = hostile["bomb"]
    code = run(["denoise", "--run", trained_run, "--image", path, "--t", 2, "--k", 1, "--device", "cpu",
                "--out", tmp_path / "d.png"])  # fmt: skip
    assert code == 2
    line = one_error_line(capsys)
    assert path.name in line and re.search(pattern, line), line
    assert not (tmp_path / "d.png").exists()


def test_denoise_of_an_image_file_uses_the_crop_policy(trained_run, tmp_path):
    from ddpm_gui.data.imageio import load_image

    src = tmp_path / "wide.png"
    Image.fromarray(gradient(20, 36)).save(src)
    out = tmp_path / "d.png"
    code = run(["denoise", "--run", trained_run, "--image", src, "--t", 1, "--k", 1, "--device", "cpu",
                "--scale", 1, "--out", out])  # fmt: skip
    assert code == 0
    assert np.array_equal(pixels(out)[1:17, 1:17], load_image(src, 16))  # the original: the centre square


def test_sample_mode_choices_are_accel_modes():
    from ddpm_gui.engine.accel import MODES

    parser = cli.build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name in ("sample", "denoise", "bench", "eval"):
        action = next(a for a in subs[name]._actions if "--sample-mode" in a.option_strings)
        assert list(action.choices) == list(MODES) and action.default == "auto", name


# ----------------------------------------------------------------------------- help, version, errors


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_help(command, capsys):
    assert run([command, "--help"]) == 0
    assert capsys.readouterr().out.startswith(f"usage: ddpm-gui {command}")


def test_top_level_help_and_version(capsys):
    assert run(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: ddpm-gui") and all(c in out for c in SUBCOMMANDS)
    assert run(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"ddpm-gui {__version__}"


def test_every_option_has_help():
    parser = cli.build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    missing = [
        f"{name} {a.option_strings[0]}"
        for name, sp in subs.items()
        for a in sp._actions
        if a.option_strings and not a.help
    ]
    assert not missing, missing


@pytest.mark.parametrize(
    "argv,words",
    [
        (["info", "--bogus"], "unrecognized arguments: --bogus"),
        (["forward", "--index", "-1"], "must be 0 or more"),
        (["sample", "--run", "r", "--n", "zero"], "expected a whole number"),
        (["sample", "--run", "r", "--sample-mode", "warp"], "invalid choice: 'warp'"),
        (["sample", "--n", "2"], "--run --checkpoint is required"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_bad_arguments_are_one_line(argv, words, capsys):
    assert run(argv) == 2
    line = one_error_line(capsys)
    assert words in line and line.startswith("ddpm-gui") and "--help" in line


def test_sample_of_a_missing_run_is_one_line(tmp_path, capsys):
    assert run(["sample", "--run", tmp_path / "none", "--device", "cpu", "--out", tmp_path / "x.png"]) == 2
    assert one_error_line(capsys).startswith("error: ")
    assert not (tmp_path / "x.png").exists()


# ----------------------------------------------------------------------------- output files


def _no_model(*_a, **_k):
    raise AssertionError("the output path must be checked before any model is loaded")


@pytest.mark.parametrize(
    "setup,words",
    [
        (lambda p, mp: p.mkdir(), "is a folder"),
        (lambda p, mp: mp.setattr("os.access", lambda *a, **k: False), "not writable"),
        (
            lambda p, mp: mp.setattr(
                "os.statvfs", lambda _p: type("S", (), {"f_bavail": 0, "f_frsize": 4096})()
            ),
            "free some disk space",
        ),
    ],
    ids=["folder", "read-only", "disk-full"],
)
@pytest.mark.parametrize("command", ["sample", "denoise", "eval"])
def test_bad_output_is_said_before_the_work(
    trained_run, tmp_path, capsys, monkeypatch, setup, words, command
):
    """sample/denoise/eval check --out/--grid before loading the model (sampling takes minutes), and the
    message is about that option, not about a run folder."""
    import ddpm_gui.cli.images as images
    import ddpm_gui.engine.evaluate as evaluate

    monkeypatch.setattr(images, "load_bundle", _no_model)
    monkeypatch.setattr(evaluate, "evaluate_run", _no_model)
    out = tmp_path / "out.png"
    setup(out, monkeypatch)
    flag = "--grid" if command == "eval" else "--out"
    assert run([command, "--run", trained_run, flag, out]) == 2
    err = one_error_line(capsys)
    assert flag in err and words in err and "resume" not in err and "run folder" not in err, err


def test_a_write_that_fails_after_the_check_is_worded_for_the_output(
    trained_run, tmp_path, capsys, monkeypatch
):
    import errno
    import os

    from ddpm_gui.engine import fileio

    real = os.replace

    def refuse(src, dst, *a, **k):
        if str(dst).endswith("grid.png"):
            raise OSError(errno.EACCES, os.strerror(errno.EACCES), str(dst))
        return real(src, dst, *a, **k)

    monkeypatch.setattr(fileio.os, "replace", refuse)
    out = tmp_path / "grid.png"
    out.write_bytes(b"the user's old file")
    argv = ["sample", "--run", trained_run, "--n", "1", "--sampler", "ddim", "--steps", "2", "--out", out]
    assert run(argv) == 2
    text = capsys.readouterr().err
    errors = [ln for ln in text.splitlines() if "error" in ln.lower()]  # the progress bar's lines aside
    assert len(errors) == 1 and "Traceback" not in text, text
    err = errors[0]
    assert "Permission denied" in err and "choose a folder you can write to" in err and "resume" not in err
    assert out.read_bytes() == b"the user's old file"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left


@pytest.mark.parametrize(
    "err,words",
    [
        ("ENOSPC", "free some disk space"),
        ("EROFS", "folder you can write to"),
        ("EISDIR", "choose a file name"),
    ],
)
def test_write_advice_by_cause(err, words):
    import errno

    from ddpm_gui.engine.fileio import write_advice

    assert words in write_advice(getattr(errno, err))


def test_long_commands_show_progress_on_stderr(trained_run, tmp_path, capsys):
    """denoise draws a progress bar on stderr; stdout keeps only the result line."""
    out = tmp_path / "d.png"
    assert run(["denoise", "--run", trained_run, "--t", "20", "--k", "2", "--out", out]) == 0
    cap = capsys.readouterr()
    assert "denoising 2 ways from t=20" in cap.err and "21/21" in cap.err
    assert cap.out.strip().startswith("wrote") and "denoising" not in cap.out


def test_phase_bars_follow_the_engine_progress(capsys):
    from ddpm_gui.cli.common import PhaseBars

    bars = PhaseBars()
    for i in (25, 50):
        bars(i, 50, f"Training the quality classifier: step {i}/50")
    bars(8, 16, "Sampling: 8/16 images")
    bars.close()
    err = capsys.readouterr().err
    assert "Training the quality classifier" in err and "50/50" in err and "Sampling" in err and "8/16" in err
