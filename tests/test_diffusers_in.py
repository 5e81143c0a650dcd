"""diffusers UNet2DModel pipelines opened as ModelBundles: exact schedules, the same samples as diffusers' own
DDPMPipeline/DDPMScheduler from the same noise, class conditioning, the local Hugging Face cache, the
messages for what is not supported, and `ddpm-gui sample --model`. All offline, with tiny random UNets."""

from __future__ import annotations

import json
import sys
from collections import deque

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

from ddpm_gui import cli
from ddpm_gui.core.diffusion import reverse_process
from ddpm_gui.engine.diffusers_io import (
    is_diffusers_model,
    load_diffusers_bundle,
    schedule_settings,
)
from ddpm_gui.engine.sampler import SampleConfig, load_bundle, make_denoiser, sample_images
from ddpm_gui.errors import CheckpointError, ConfigError
from ddpm_gui.models.diffusers_unet import NULL_CLASS_KEY, DiffusersUNet

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 8
T_SHORT = 40  # the round trips visit every timestep: a short chain keeps them quick on a busy machine


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))


def tiny_unet(num_class_embeds: int | None = None, seed: int = 0, channels: int = 3) -> UNet2DModel:
    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=SIZE,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        num_class_embeds=num_class_embeds,
    ).eval()


def save_pipeline(folder, unet=None, **sched) -> tuple:
    """A DDPMPipeline folder as save_pretrained writes it: unet/ and scheduler/scheduler_config.json."""
    unet = unet if unet is not None else tiny_unet()
    pipe = DDPMPipeline(unet=unet, scheduler=DDPMScheduler(**sched))
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(folder)
    return folder, pipe


def our_chain(bundle, n: int, seed: int, class_label=None, guidance: float = 1.0) -> torch.Tensor:
    """DDPM Studio's ancestral sampler with the bundle's own defaults; float x_0 of the chain."""
    cfg = SampleConfig(n=n, seed=seed, class_label=class_label, guidance=guidance).validate(bundle)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((n, bundle.image_channels, SIZE, SIZE), generator=gen)
    chain = reverse_process(
        make_denoiser(bundle, n, class_label, guidance),
        x,
        bundle.schedule.to("cpu"),
        variance=cfg.variance,
        prediction=bundle.prediction,
        clip_x0=cfg.clip_x0,
        generator=gen,
        clip_range=bundle.clip_range,
    )
    with torch.inference_mode():
        return deque(chain, maxlen=1)[0].x


def diffusers_chain(unet, scheduler, n: int, seed: int, labels=None) -> torch.Tensor:
    """diffusers' own loop (as DDPMPipeline runs it), the same generator drawing the same noise."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((n, unet.config.in_channels, SIZE, SIZE), generator=gen)
    scheduler.set_timesteps(scheduler.config.num_train_timesteps)
    with torch.inference_mode():
        for t in scheduler.timesteps:
            out = unet(x, t, class_labels=labels).sample
            x = scheduler.step(out, t, x, generator=gen).prev_sample
    return x


# ----------------------------------------------------------------------------- schedules


@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
@pytest.mark.parametrize("zero_snr", [False, True])
def test_schedule_arrays_are_diffusers(beta_schedule, zero_snr):
    from ddpm_gui.core.schedule import NoiseSchedule

    kw = dict(num_train_timesteps=1000, beta_schedule=beta_schedule, rescale_betas_zero_snr=zero_snr)
    if beta_schedule == "scaled_linear":
        kw.update(beta_start=0.00085, beta_end=0.012)
    theirs = DDPMScheduler(**kw)
    sc, *_ = schedule_settings(dict(theirs.config), "test")
    ours = NoiseSchedule(sc)
    assert ours.T == 1000
    np.testing.assert_allclose(ours.betas.numpy(), theirs.betas.double().numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        ours.alpha_bars.numpy(), theirs.alphas_cumprod.double().numpy(), rtol=0, atol=1e-12
    )


def test_scheduler_config_maps_every_setting():
    cfg = dict(
        DDPMScheduler(
            variance_type="fixed_large",
            prediction_type="v_prediction",
            clip_sample=False,
            clip_sample_range=2.5,
        ).config
    )
    sc, prediction, variance, clip, clip_range, notes = schedule_settings(cfg, "x")
    assert (sc.kind, sc.T, sc.beta_start, sc.beta_end, sc.float32) == ("linear", 1000, 1e-4, 0.02, True)
    assert (prediction, variance, clip, clip_range, notes) == ("v", "beta", False, 2.5, [])
    cfg = dict(DDPMScheduler(variance_type="fixed_small", thresholding=True).config)
    _, prediction, variance, clip, _, notes = schedule_settings(cfg, "x")
    assert (prediction, variance, clip) == ("eps", "posterior", True) and "thresholding" in notes[0]


def test_the_reference_model_scheduler_config():
    """google/ddpm-cifar10-32's scheduler_config.json (written by diffusers 0.1.1: no prediction_type)."""
    cfg = {"_class_name": "DDPMScheduler", "_diffusers_version": "0.1.1", "beta_end": 0.02,
           "beta_schedule": "linear", "beta_start": 0.0001, "clip_sample": True, "num_train_timesteps": 1000,
           "trained_betas": None, "variance_type": "fixed_small"}  # fmt: skip
    sc, prediction, variance, clip, clip_range, notes = schedule_settings(cfg, "google/ddpm-cifar10-32")
    assert (sc.kind, sc.T, sc.beta_start, sc.beta_end) == ("linear", 1000, 1e-4, 0.02)
    assert (prediction, variance, clip, clip_range, notes) == ("eps", "posterior", True, 1.0, [])


# ----------------------------------------------------------------------------- the same samples


@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large"])
def test_ddpm_pipeline_and_ours_agree_from_the_same_noise(tmp_path, variance_type):
    folder, pipe = save_pipeline(tmp_path / "pipe", num_train_timesteps=T_SHORT, variance_type=variance_type)
    bundle = load_bundle(folder, device="cpu")
    assert bundle.preset == "diffusers UNet2DModel" and bundle.source == str(folder)
    assert bundle.variance == {"fixed_small": "posterior", "fixed_large": "beta"}[variance_type]
    theirs = pipe(
        batch_size=2,
        generator=torch.Generator().manual_seed(7),
        num_inference_steps=T_SHORT,
        output_type="np",
    ).images
    ours = our_chain(bundle, 2, seed=7)
    np.testing.assert_allclose((ours / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy(), theirs, atol=2e-4)
    # the engine's own entry point, with the model's default variance, gives the same uint8 images
    images = sample_images(bundle, SampleConfig(n=2, seed=7))
    assert np.abs(images.astype(int) - np.round(theirs * 255).astype(int)).max() <= 1
    # and the other variance gives other images: the default really is the model's
    other = "beta" if bundle.variance == "posterior" else "posterior"
    assert not np.array_equal(images, sample_images(bundle, SampleConfig(n=2, seed=7, variance=other)))


@pytest.mark.parametrize(
    "sched",
    [
        dict(prediction_type="v_prediction", variance_type="fixed_large", clip_sample_range=0.5),
        dict(prediction_type="epsilon", clip_sample=False, beta_schedule="squaredcos_cap_v2"),
        dict(prediction_type="sample", beta_schedule="scaled_linear", beta_start=1e-3, beta_end=0.05),
    ],
    ids=["v-clip-range", "eps-no-clip-cosine", "sample-scaled-linear"],
)
def test_class_conditional_chains_agree(tmp_path, sched):
    unet = tiny_unet(num_class_embeds=3, seed=1)
    folder, pipe = save_pipeline(tmp_path / "cond", unet, num_train_timesteps=T_SHORT, **sched)
    bundle = load_bundle(folder, device="cpu")
    assert bundle.num_classes == 3 and bundle.null_class is None
    assert any("guidance is off" in n for n in bundle.notes)
    theirs = diffusers_chain(pipe.unet, pipe.scheduler, 3, seed=4, labels=torch.tensor([2, 2, 2]))
    ours = our_chain(bundle, 3, seed=4, class_label=2, guidance=3.0)  # no null class: guidance is off
    # unclipped, a random network's chain grows large: float32 agreement is relative there
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), atol=5e-4, rtol=1e-5)
    # no class chosen: image i is drawn from class i mod K
    theirs = diffusers_chain(pipe.unet, pipe.scheduler, 3, seed=5, labels=torch.tensor([0, 1, 2]))
    np.testing.assert_allclose(our_chain(bundle, 3, seed=5).numpy(), theirs.numpy(), atol=5e-4, rtol=1e-5)


def test_a_null_class_row_gives_classifier_free_guidance(tmp_path):
    adapter = DiffusersUNet.from_config(dict(tiny_unet(num_class_embeds=4).config), null_class=3)
    folder, _ = save_pipeline(tmp_path / "cfg", adapter.unet, num_train_timesteps=T_SHORT)
    assert json.loads((folder / "unet" / "config.json").read_text())[NULL_CLASS_KEY] == 3
    bundle = load_bundle(folder, device="cpu")
    assert (bundle.num_classes, bundle.null_class) == (3, 3)
    assert not any("guidance" in n for n in bundle.notes)
    unet = bundle.model.unet
    x, t = torch.randn(2, 3, SIZE, SIZE), torch.tensor([5, 5])
    with torch.no_grad():
        cond = unet(x, t, class_labels=torch.tensor([1, 1])).sample
        uncond = unet(x, t, class_labels=torch.tensor([3, 3])).sample
        guided = make_denoiser(bundle, 2, 1, 2.5)(x, t)
        plain = make_denoiser(bundle, 2, None, 1.0)(x, t)
    torch.testing.assert_close(guided, uncond + 2.5 * (cond - uncond), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(plain, uncond)


def test_timesteps_are_passed_unchanged():
    unet = tiny_unet()
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        ours = DiffusersUNet(unet)(x, torch.tensor([0, 999]))
        theirs = unet(x, torch.tensor([0, 999])).sample
        shifted = unet(x, torch.tensor([1, 998])).sample
    assert torch.equal(ours, theirs) and not torch.allclose(ours, shifted)


# ----------------------------------------------------------------------------- where models come from


def test_bare_unet_folder_with_a_scheduler_beside_it(tmp_path):
    folder = tmp_path / "bare"
    tiny_unet().save_pretrained(folder)
    assert is_diffusers_model(folder)
    with pytest.raises(ConfigError, match="no scheduler config"):
        load_bundle(folder, device="cpu")
    DDPMScheduler(num_train_timesteps=T_SHORT, variance_type="fixed_large").save_pretrained(folder)
    bundle = load_diffusers_bundle(folder, device="cpu")
    assert bundle.schedule.T == T_SHORT and bundle.variance == "beta" and bundle.image_size == SIZE


def test_hub_id_from_the_local_cache(tmp_path, monkeypatch):
    import shutil

    cache = tmp_path / "hub"
    snap = cache / "models--org--tiny-ddpm" / "snapshots" / "0123abcd"
    save_pipeline(tmp_path / "src", num_train_timesteps=T_SHORT)
    shutil.copytree(tmp_path / "src", snap)
    (cache / "models--org--tiny-ddpm" / "refs").mkdir()
    (cache / "models--org--tiny-ddpm" / "refs" / "main").write_text("0123abcd")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)  # "org/tiny-ddpm" is no folder here
    assert is_diffusers_model("org/tiny-ddpm") and not is_diffusers_model("org/absent")
    bundle = load_bundle("org/tiny-ddpm", device="cpu")
    assert bundle.source == "org/tiny-ddpm" and bundle.schedule.T == T_SHORT
    assert any("Hugging Face cache" in n and "0123abcd" in n for n in bundle.notes)
    with pytest.raises(CheckpointError, match="local Hugging Face cache") as exc:
        load_bundle("org/absent", device="cpu")
    assert "\n" not in str(exc.value)


def write_json(path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


UNET = {"_class_name": "UNet2DModel", "_diffusers_version": "0.42.1", "sample_size": 8}
SCHED = {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000}


@pytest.mark.parametrize(
    "files,words",
    [
        ({"vae/config.json": {}, "unet/config.json": UNET}, "latent diffusion"),
        ({"vqvae/config.json": {}, "unet/config.json": UNET}, "latent diffusion"),
        ({"text_encoder/config.json": {}, "unet/config.json": UNET}, "text-conditioned"),
        ({"unet/config.json": {**UNET, "_class_name": "UNet2DConditionModel"}}, "text-conditioned"),
        ({"unet/config.json": {**UNET, "out_channels": 6}}, "learned variance"),
        ({"unet/config.json": {**UNET, "in_channels": 4, "out_channels": 4}}, "latent model"),
        ({"unet/config.json": {**UNET, "time_embedding_type": "fourier"}}, "score-SDE"),
        ({"unet/config.json": UNET, "scheduler/scheduler_config.json": {**SCHED, "variance_type": "learned_range"}},
         "learned variance"),
        ({"unet/config.json": UNET, "scheduler/scheduler_config.json": {**SCHED, "beta_schedule": "sigmoid"}},
         "beta_schedule 'sigmoid'"),
        ({"unet/config.json": UNET, "scheduler/scheduler_config.json": {**SCHED, "trained_betas": [0.1]}},
         "trained_betas"),
        ({"unet/config.json": UNET, "scheduler/scheduler_config.json": {"_class_name": "ScoreSdeVeScheduler"}},
         "ScoreSdeVeScheduler"),
        ({"unet/config.json": UNET}, "no scheduler config"),
    ],
    ids=["vae", "vqvae", "text-encoder", "unet2dcondition", "learned-out", "latent-channels", "fourier",
         "learned-range", "sigmoid", "trained-betas", "score-sde", "no-scheduler"],
)  # fmt: skip
def test_unsupported_models_get_one_line(tmp_path, files, words):
    folder = tmp_path / "model"
    files = {"model_index.json": {"_class_name": "SomePipeline"}, **files}
    for name, obj in files.items():
        write_json(folder / name, obj)
    with pytest.raises((ConfigError, CheckpointError)) as exc:
        load_bundle(folder, device="cpu")
    msg = str(exc.value)
    assert words in msg and "\n" not in msg, msg


def test_weights_that_do_not_fit_their_config(tmp_path):
    folder, _ = save_pipeline(tmp_path / "p", num_train_timesteps=T_SHORT)
    cfg_path = folder / "unet" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**cfg, "block_out_channels": [16, 32], "norm_num_groups": 8}))
    with pytest.raises(CheckpointError, match="weights do not fit its config.json") as exc:
        load_bundle(folder, device="cpu")
    assert "\n" not in str(exc.value)
    cfg_path.write_text(json.dumps({**cfg, "block_out_channels": [256, 512], "norm_num_groups": 8}))
    with pytest.raises(CheckpointError, match="does not belong to these weights"):
        load_bundle(folder, device="cpu")


def test_without_diffusers_the_message_says_how_to_install(tmp_path, monkeypatch):
    folder, _ = save_pipeline(tmp_path / "p", num_train_timesteps=T_SHORT)
    monkeypatch.setitem(sys.modules, "diffusers", None)  # `import diffusers` now raises ImportError
    assert is_diffusers_model(folder)  # recognising one needs no diffusers
    with pytest.raises(ConfigError, match=r"ddpm-gui\[diffusers\]"):
        load_bundle(folder, device="cpu")


# ----------------------------------------------------------------------------- the engine and the CLI


def test_denoise_on_a_diffusers_model(tmp_path):
    from ddpm_gui.engine.sampler import denoise_frames

    folder, _ = save_pipeline(tmp_path / "p", num_train_timesteps=1000)
    bundle = load_bundle(folder, device="cpu")
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    frames = list(denoise_frames(bundle, image, t=4, k=2))
    assert [f.index for f in frames] == [-1, 0, 1, 2, 3, 4] and frames[-1].final
    assert frames[-1].xt.shape == (2, SIZE, SIZE, 3)


def test_cli_sample_model_folder_writes_a_grid(tmp_path, capsys):
    from PIL import Image

    folder, pipe = save_pipeline(tmp_path / "p", num_train_timesteps=T_SHORT)
    out = tmp_path / "grid.png"
    code = cli.main(["sample", "--model", str(folder), "--n", "4", "--device", "cpu", "--scale", "1",
                     "--out", str(out)])  # fmt: skip
    assert code == 0 and f"{T_SHORT} steps" in capsys.readouterr().out
    grid = np.asarray(Image.open(out).convert("RGB"))
    assert grid.shape == (2 * (SIZE + 1) + 1, 2 * (SIZE + 1) + 1, 3)
    theirs = pipe(
        batch_size=4,
        generator=torch.Generator().manual_seed(0),
        num_inference_steps=T_SHORT,
        output_type="np",
    ).images
    first = grid[1 : 1 + SIZE, 1 : 1 + SIZE]  # the first tile: the first image, seed 0 as the CLI's default
    assert np.abs(first.astype(int) - np.round(theirs[0] * 255).astype(int)).max() <= 1


def test_cli_model_that_does_not_exist_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["sample", "--model", "org/not-here", "--device", "cpu", "--out", "x.png"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "Hugging Face cache" in err and "\n" not in err
