"""Models out to diffusers: the diffusers-architecture presets train, export as a DDPMPipeline folder that
diffusers alone loads and samples with (the same images as DDPM Studio's sampler from the same noise), and a
run can start from such a folder (fine-tuning). Offline, tiny sizes."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_all, small_config

from ddpm_gui.core.schedule import NoiseSchedule
from ddpm_gui.core.spec import SCHEDULE_PRESETS, ScheduleConfig
from ddpm_gui.engine import events as ev
from ddpm_gui.engine.checkpoint import load_latest_checkpoint, prefixed, save_checkpoint, unprefixed
from ddpm_gui.engine.config import TrainConfig
from ddpm_gui.engine.export import EXPORT_MARKER, export_diffusers, scheduler_config
from ddpm_gui.engine.trainer import Trainer
from ddpm_gui.errors import ConfigError
from ddpm_gui.models import presets

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.usefixtures("one_thread")

T = 10  # a short linear schedule keeps the full DDPM chains of the comparison quick
SCHEDULE = ScheduleConfig(T=T, beta_start=1e-4, beta_end=0.2)


def tiny_config(**kw) -> TrainConfig:
    base = dict(
        preset="diffusers-tiny", image_size=8, batch_size=4, steps=3, schedule=SCHEDULE, data="builtin:64"
    )
    return small_config(**{**base, **kw})


@pytest.fixture(scope="module")
def data8():
    from ddpm_gui.data import load_data

    return load_data("builtin:64", image_size=8)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, data8) -> Path:
    """A 3-step run of the tiny diffusers preset, with EMA."""
    run = tmp_path_factory.mktemp("diffusers") / "run"
    events = run_all(Trainer(tiny_config(), run, data=data8))
    assert isinstance(events[-1], ev.Finished) and events[-1].reason == "completed", events[-1]
    return run


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory) -> Path:
    return export_diffusers(tiny_run, tmp_path_factory.mktemp("out") / "pipe")


# ----------------------------------------------------------------------------- the presets


def test_ddpm_cifar10_preset_is_google_ddpm_cifar10_32():
    cfg = presets.diffusers_unet_config("ddpm-cifar10")
    google = {  # google/ddpm-cifar10-32's unet/config.json
        "block_out_channels": (128, 256, 256, 256),
        "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        "layers_per_block": 2,
        "downsample_padding": 0,
        "flip_sin_to_cos": False,
        "freq_shift": 1,
        "mid_block_scale_factor": 1,
        "norm_eps": 1e-06,
        "norm_num_groups": 32,
        "attention_head_dim": None,
        "act_fn": "silu",
        "time_embedding_type": "positional",
        "center_input_sample": False,
        "in_channels": 3,
        "out_channels": 3,
        "sample_size": 32,
    }
    assert {k: cfg[k] for k in google} == google
    with torch.device("meta"):
        assert presets.count_parameters(presets.build_model("ddpm-cifar10")) == 35_746_307


def test_diffusers_presets_are_in_the_table():
    assert {"ddpm-cifar10", "diffusers-tiny"} <= set(presets.PRESETS) & set(presets.PRESET_NOTES)
    TrainConfig(preset="ddpm-cifar10").validate()  # offered wherever the preset table is (CLI, Train tab)
    model = presets.build_model("diffusers-tiny", num_classes=3).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert model(x, torch.tensor([1, 9]), torch.tensor([0, 3])).shape == x.shape  # 3 = the null class


def test_without_diffusers_the_preset_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers now raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'ddpm-gui\[diffusers\]'"):
        presets.build_model("diffusers-tiny")


# ----------------------------------------------------------------------------- training and export


def test_tiny_run_trains_and_loads_back(tiny_run):
    from ddpm_gui.engine.sampler import load_bundle
    from ddpm_gui.models.diffusers_unet import DiffusersUNet

    _ckpt, tensors, meta, _ = load_latest_checkpoint(tiny_run)
    assert meta["step"] == 3 and meta["model_config"]["arch"] == "diffusers"
    fresh = presets.build_model("diffusers-tiny").state_dict()
    trained = unprefixed("model", tensors)
    assert any(not torch.equal(fresh[k], trained[k]) for k in fresh)  # the weights moved
    bundle = load_bundle(tiny_run, device="cpu")
    assert isinstance(bundle.model, DiffusersUNet) and bundle.preset == "diffusers-tiny"


def _studio_samples(run: Path, n: int, seed: int) -> np.ndarray:
    """DDPM Studio's DDPM sampler (beta_t variance, x_0 clipped) on the run's EMA weights, in [0, 1]."""
    from ddpm_gui.core.diffusion import reverse_process
    from ddpm_gui.engine.sampler import load_bundle, make_denoiser

    b = load_bundle(run, device="cpu")
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((n, 3, b.image_size, b.image_size), generator=gen)
    with torch.inference_mode():
        chain = reverse_process(make_denoiser(b, n, None, 1.0), x, b.schedule.to("cpu"), sampler="ddpm",
                                variance="beta", prediction=b.prediction, clip_x0=True, generator=gen)  # fmt: skip
        last = list(chain)[-1].x
    return (last / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def test_export_samples_like_ddpm_studio(tiny_run, exported):
    pipe = diffusers.DDPMPipeline.from_pretrained(exported)
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe.unet).__module__.startswith("diffusers")  # no DDPM Studio code in the loaded pipeline
    gen = torch.Generator().manual_seed(5)
    theirs = pipe(batch_size=3, generator=gen, num_inference_steps=T, output_type="np").images
    ours = _studio_samples(tiny_run, 3, seed=5)
    assert theirs.shape == ours.shape == (3, 8, 8, 3)
    assert ours.std() > 0.05  # not a degenerate image, where anything would agree
    np.testing.assert_allclose(theirs, ours, atol=1e-4)


def test_export_writes_the_ema_weights_and_the_schedule(tiny_run, exported):
    from safetensors.torch import load_file

    _ckpt, tensors, _meta, _ = load_latest_checkpoint(tiny_run)
    ema = {k.removeprefix("unet."): v for k, v in unprefixed("ema", tensors).items()}
    written = load_file(str(exported / "unet" / "diffusion_pytorch_model.safetensors"))
    assert written.keys() == ema.keys() and all(torch.equal(written[k], ema[k]) for k in ema)
    assert any(not torch.equal(ema[k], unprefixed("model", tensors)[f"unet.{k}"]) for k in ema)
    sched = json.loads((exported / "scheduler" / "scheduler_config.json").read_text())
    assert sched["_class_name"] == "DDPMScheduler"
    assert (sched["num_train_timesteps"], sched["beta_start"], sched["beta_end"]) == (T, 1e-4, 0.2)
    assert (sched["beta_schedule"], sched["prediction_type"]) == ("linear", "epsilon")
    assert (sched["variance_type"], sched["clip_sample"]) == ("fixed_large", True)
    assert json.loads((exported / "unet" / "config.json").read_text())["sample_size"] == 8


def test_model_card(tiny_run, exported, tmp_path):
    card = (exported / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: diffusers\n")
    for text in ("`builtin:64`, 64 images", "| Steps | 3 of 3", "preset `diffusers-tiny`",
                 "EMA of the weights (decay 0.999)", "linear, T = 10, beta 0.0001 to 0.2",
                 f"num_inference_steps={T}", "No quality check"):  # fmt: skip
        assert text in card, text
    # a quality check saved in the run (as `ddpm-gui eval --json` writes it) appears in the card
    (tiny_run / "evals").mkdir(exist_ok=True)
    result = {"model_step": 3, "frechet_distance": 12.3456, "frechet_distance_real": 0.5, "n": 100,
              "sampler": "ddpm", "sampling_steps": T, "recognisable": 0.25}  # fmt: skip
    (tiny_run / "evals" / "step3.json").write_text(json.dumps(result))
    try:
        card = (export_diffusers(tiny_run, tmp_path / "again") / "README.md").read_text()
    finally:
        (tiny_run / "evals" / "step3.json").unlink()
    assert "| Fréchet distance | 12.346 (real vs real: 0.500) |" in card
    assert "| Recognisable samples | 25.0% |" in card


def test_every_schedule_maps_exactly():
    for sc in [
        *SCHEDULE_PRESETS.values(),
        ScheduleConfig(kind="quadratic", T=50),
        ScheduleConfig(kind="cosine", cosine_s=0.02),
    ]:
        for prediction in ("eps", "v"):
            cfg = scheduler_config(sc, prediction, "posterior")
            theirs = diffusers.DDPMScheduler(**cfg).alphas_cumprod.double()
            np.testing.assert_allclose(theirs, NoiseSchedule(sc).alpha_bars, atol=1e-6, err_msg=str(sc))
            assert cfg["variance_type"] == "fixed_small"
            assert cfg["prediction_type"] == {"eps": "epsilon", "v": "v_prediction"}[prediction]
    assert scheduler_config(SCHEDULE_PRESETS["cosine"])["beta_schedule"] == "squaredcos_cap_v2"
    assert scheduler_config(ScheduleConfig(kind="cosine", cosine_s=0.02))["trained_betas"] is not None


# ----------------------------------------------------------------------------- refusals


def _labml_checkpoint(path: Path) -> Path:
    meta = {"step": 1, "config": TrainConfig(image_size=16).to_dict(), "model_config": presets.get_preset("tiny").to_dict(),
            "num_classes": None}  # fmt: skip
    return save_checkpoint(path, prefixed("model", presets.build_model("tiny").state_dict()), meta)


def test_labml_models_are_refused_in_one_line(tmp_path, capsys):
    from ddpm_gui.cli import main

    ckpt = _labml_checkpoint(tmp_path / "tiny.safetensors")
    out = tmp_path / "out"
    with pytest.raises(
        ConfigError, match="preset 'tiny' is DDPM Studio's own UNet: train with --preset ddpm-cifar10"
    ):
        export_diffusers(ckpt, out)
    assert not out.exists()
    assert main(["export", "--checkpoint", str(ckpt), "--format", "diffusers", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Only models of the diffusers-architecture presets") and err.count("\n") == 1
    assert not out.exists()


def test_a_foreign_folder_is_never_written(tiny_run, exported, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    with pytest.raises(ConfigError, match="not empty and was not made by DDPM Studio"):
        export_diffusers(tiny_run, out)
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "my notes"
    # an earlier export is rewritten, but not once a person edited one of its files
    again = export_diffusers(tiny_run, tmp_path / "pipe")
    assert export_diffusers(tiny_run, again) == again
    (again / "README.md").write_text("my own card")
    with pytest.raises(ConfigError, match="README.md was changed"):
        export_diffusers(tiny_run, again)
    assert (again / "README.md").read_text() == "my own card"
    assert json.loads((again / EXPORT_MARKER).read_text())["format"] == "ddpm-studio-export"


# ----------------------------------------------------------------------------- starting from a model


def test_init_from_a_diffusers_folder_starts_with_its_weights(exported, data8, tmp_path):
    from safetensors.torch import load_file

    trainer = Trainer(tiny_config(init_from=str(exported), seed=7), tmp_path / "ft", data=data8)
    trainer.stop()  # stopped before the first step: its checkpoint holds the step-0 weights
    events = run_all(trainer)
    assert any(isinstance(e, ev.Notice) and "Starting from the weights of pipe" in e.message for e in events)
    _ckpt, tensors, meta, _ = load_latest_checkpoint(tmp_path / "ft")
    assert meta["step"] == 0
    source = load_file(str(exported / "unet" / "diffusion_pytorch_model.safetensors"))
    for part in ("model", "ema"):
        weights = unprefixed(part, tensors)
        assert all(torch.equal(weights[f"unet.{k}"], v) for k, v in source.items()), part


def _failure(trainer) -> str:
    events = run_all(trainer)
    assert isinstance(events[-1], ev.Failed), events[-1]
    return events[-1].message


def test_init_from_mismatches_say_what_differs(exported, data8, tmp_path, monkeypatch):
    wide = replace(presets.PRESETS["diffusers-tiny"], n_channels=64)
    monkeypatch.setitem(presets.PRESETS, "diffusers-wide", wide)
    msg = _failure(
        Trainer(tiny_config(preset="diffusers-wide", init_from=str(exported)), tmp_path / "a", data=data8)
    )
    assert "pipe does not fit the preset 'diffusers-wide'" in msg and "other shapes" in msg
    msg = _failure(
        Trainer(tiny_config(preset="tiny", image_size=8, init_from=str(exported)), tmp_path / "b", data=data8)
    )
    assert "choose a diffusers-architecture preset" in msg
    msg = _failure(Trainer(tiny_config(init_from=str(tmp_path / "nothing")), tmp_path / "c", data=data8))
    assert "Nothing to start from" in msg
    # same shapes, but a time embedding that computes something else
    other = tmp_path / "other"
    (other / "unet").mkdir(parents=True)
    (other / "scheduler").mkdir()
    for name in (
        "model_index.json",
        "unet/diffusion_pytorch_model.safetensors",
        "scheduler/scheduler_config.json",
    ):
        (other / name).write_bytes((exported / name).read_bytes())
    ucfg = json.loads((exported / "unet" / "config.json").read_text())
    (other / "unet" / "config.json").write_text(json.dumps({**ucfg, "freq_shift": 0}))
    msg = _failure(Trainer(tiny_config(init_from=str(other)), tmp_path / "d", data=data8))
    assert "freq_shift is 0 there but 1 here" in msg


def test_init_from_a_run_takes_its_ema_weights(tiny_run, data8, tmp_path):
    trainer = Trainer(tiny_config(init_from=str(tiny_run)), tmp_path / "ft", data=data8)
    trainer.stop()
    events = run_all(trainer)
    assert any(isinstance(e, ev.Notice) and "(step 3)" in e.message for e in events)
    _c, mine, _m, _ = load_latest_checkpoint(tmp_path / "ft")
    _c, theirs, _m, _ = load_latest_checkpoint(tiny_run)
    assert all(
        torch.equal(mine[k], theirs[k.replace("model.", "ema.", 1)]) for k in mine if k.startswith("model.")
    )
