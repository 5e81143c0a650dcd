"""Starting a run from a trained model's weights (the `init_from` setting): fine-tuning.

A fresh run (step 0) takes the weights of a diffusers model folder (for example google/ddpm-cifar10-32
saved with `save_pretrained`, or a Hub id in the local Hugging Face cache), of a run folder (its newest
checkpoint) or of a checkpoint file: the EMA of the weights where the source kept one, since that is what
it samples with. The model and its EMA both start from them; the optimizer starts afresh. A resumed run
continues its own checkpoint instead.

The weights must be made for the run's preset: the same tensors with the same shapes (engine/sampler.py
check_fit names the first mismatch), and for a diffusers model also the same settings that change what the
weights compute without changing their shapes (the time embedding's frequencies, the normalisation's epsilon:
models/presets.py DDPM_UNET_FAMILY). A source trained with another noise schedule or prediction loads, with a
warning: its timesteps then mean other noise levels until fine-tuning has adapted it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from ddpm_gui.engine import events as ev
from ddpm_gui.engine.sampler import ModelBundle
from ddpm_gui.errors import CheckpointError, ConfigError


def _describe(cfg) -> str:
    from ddpm_gui.engine.export import _schedule_text

    return _schedule_text(cfg)


def _diffusers_source(path: str) -> tuple[nn.Module, ModelBundle]:
    """(model, bundle) of a diffusers model folder or cached Hub id."""
    from ddpm_gui.engine.diffusers_io import load_diffusers_bundle
    from ddpm_gui.models.diffusers_unet import DiffusersUNet

    bundle = load_diffusers_bundle(path, device="cpu")
    if not isinstance(bundle.model, DiffusersUNet):
        raise ConfigError(
            f"{Path(path).name} predicts the clean image directly (prediction_type 'sample'): DDPM Studio "
            "trains noise (eps) or v predictors, so it cannot start from it."
        )
    return bundle.model, bundle


# UNet2DModel settings that change neither the weights nor what they compute at inference
_FREE_KEYS = frozenset({"sample_size", "dropout", "num_train_timesteps"})


def _check_family(theirs: nn.Module, mine: nn.Module, name: str, preset: str) -> None:
    """Refuse a UNet2DModel whose config computes something else with weights of the same shapes (checked
    first): another time embedding, normalisation epsilon, block type, ..."""
    a: dict = dict(getattr(theirs, "unet").config)  # noqa: B009 - both are DiffusersUNets
    b: dict = dict(getattr(mine, "unet").config)  # noqa: B009
    diffs = []
    for k in sorted(set(a) | set(b)):
        if k.startswith("_") or k in _FREE_KEYS:
            continue
        x, y = a.get(k), b.get(k)
        x, y = (list(x), list(y)) if isinstance(x, list | tuple) and isinstance(y, list | tuple) else (x, y)
        if x != y:
            diffs.append(f"{k} is {x!r} there but {y!r} here")
    if diffs:
        raise ConfigError(
            f"{name} is not a model of the preset {preset!r}: {'; '.join(diffs[:3])}. Choose the preset of "
            "its architecture (ddpm-cifar10 for google/ddpm-cifar10-32)."
        )


def _own_source(path: Path, mine) -> tuple[nn.Module, ModelBundle]:
    """(model, bundle) of a run folder or a DDPM Studio checkpoint, refusing another architecture by name."""
    from ddpm_gui.engine.sampler import load_bundle
    from ddpm_gui.models.presets import ModelConfig

    bundle = load_bundle(path, device="cpu", use_ema=True)
    theirs = ModelConfig.from_dict(bundle.meta["model_config"]).to_dict()
    diffs = [f"{k} is {v!r} there but {mine.to_dict()[k]!r} here" for k, v in theirs.items()
             if mine.to_dict()[k] != v and k not in ("dropout", "image_channels")]  # fmt: skip
    if diffs:
        raise ConfigError(
            f"{path.name} holds a model of the preset {bundle.preset!r}, not of this run's: "
            f"{'; '.join(diffs[:3])}. Choose the preset {bundle.preset!r}, or another model to start from."
        )
    return bundle.model, bundle


def start_from(learner, path: str) -> list[ev.Notice]:
    """Load the weights at `path` into `learner`'s freshly built model and its EMA (Learner.setup() ran);
    returns what to tell the user. ConfigError/CheckpointError, naming the mismatch, when they do not fit."""
    from ddpm_gui.engine.diffusers_io import is_diffusers_model
    from ddpm_gui.engine.sampler import check_fit

    c = learner.config
    src = Path(str(path)).expanduser()
    name = src.name or str(path)
    mine = learner.model_config
    diffusers = is_diffusers_model(path)
    if diffusers:
        if mine.arch != "diffusers":
            raise ConfigError(
                f"{name} is a diffusers UNet2DModel; this run's preset {c.preset!r} is DDPM Studio's own UNet: "
                "choose a diffusers-architecture preset (ddpm-cifar10) to start from it."
            )
        model, bundle = _diffusers_source(path)
        step = None
    elif src.exists():
        model, bundle = _own_source(src, mine)
        step = bundle.step
    else:
        raise CheckpointError(
            f"Nothing to start from at {path}: give a diffusers model folder, a run folder or a checkpoint "
            "(or leave 'Start from' empty)."
        )
    weights = model.state_dict()
    check_fit(learner.model, weights, name, f"the preset {c.preset!r} of this run")
    if diffusers:
        _check_family(model, learner.model, name, c.preset)
    with torch.no_grad():
        learner.model.load_state_dict(weights)
        if learner.ema is not None:
            learner.ema.load_state_dict(weights)
    at = f" (step {step:,})" if step else ""
    notes = [ev.Notice(f"Starting from the weights of {name}{at}.")]
    theirs_sched, mine_sched = (
        replace(bundle.schedule.config, float32=False),
        replace(c.schedule, float32=False),
    )
    if theirs_sched != mine_sched:
        notes.append(ev.Notice(
            f"{name} was trained with the schedule {_describe(theirs_sched)}; this run uses "
            f"{_describe(mine_sched)}: its timesteps mean other noise levels here until training adapts it "
            "(choose its schedule to continue as it was trained).", "warning"))  # fmt: skip
    if bundle.prediction != c.prediction:
        notes.append(ev.Notice(
            f"{name} predicts {bundle.prediction}; this run trains it to predict {c.prediction}.", "warning"))  # fmt: skip
    if bundle.image_size != c.image_size:
        notes.append(ev.Notice(
            f"{name} was made for {bundle.image_size}x{bundle.image_size} images; this run trains at "
            f"{c.image_size}x{c.image_size}.", "warning"))  # fmt: skip
    return notes
