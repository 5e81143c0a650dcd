"""Whether a checkpoint fits the run that resumes it: the settings that may change mid-run, and a
one-line error naming any other difference."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from ddpm_gui.engine.config import RESUMABLE, TrainConfig
from ddpm_gui.errors import CheckpointError, ConfigError, DDPMError


def check_fits(
    config: TrainConfig, model_config, num_classes: int | None, ckpt: Path, meta: dict
) -> dict[str, tuple]:
    """The settings that differ from the checkpoint's and may (RESUMABLE): {name: (was, now)}. Any other
    difference is an error that names it: a setting (ConfigError), or the model or classes of a
    checkpoint copied from elsewhere (CheckpointError)."""
    from ddpm_gui.models.presets import ModelConfig

    try:
        theirs = TrainConfig.from_dict(meta["config"])
        their_model = ModelConfig.from_dict(meta["model_config"]).to_dict()
    except (DDPMError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{ckpt.name} has a damaged settings header ({exc}).") from None
    changed, fixed = {}, []
    for f in fields(TrainConfig):
        a, b = getattr(theirs, f.name), getattr(config, f.name)
        if f.name == "version" or a == b:
            continue
        if f.name in RESUMABLE:
            changed[f.name] = (a, b)
        else:
            a, b = (a.to_dict(), b.to_dict()) if f.name == "schedule" else (a, b)
            fixed.append(f"{f.name} is {a!r} in the checkpoint but {b!r} in this run")
    if fixed:  # the settings given: the user's input
        raise ConfigError(
            f"{ckpt.name} does not fit this run: {'; '.join(fixed[:3])}. Resume it with its own settings "
            "(only the ones that may change mid-run can differ), or start a new run folder."
        )
    mine = model_config.to_dict()
    diffs = [
        f"the model's {'channel count' if k == 'image_channels' else k} is {v!r} in the checkpoint but "
        f"{mine.get(k)!r} here"
        for k, v in their_model.items()
        if mine.get(k) != v
    ]
    if (meta.get("num_classes") or None) != (num_classes or None):
        diffs.append(f"it has {meta.get('num_classes')} classes, this run {num_classes}")
    if diffs:
        raise CheckpointError(
            f"{ckpt.name} does not fit this run: {'; '.join(diffs[:3])}. Resume it with its own "
            "settings, or start a new run folder."
        )
    return changed


def settings_changes(changed: dict[str, tuple], step: int) -> tuple[list[str], dict]:
    """What a resume changed: a line per setting for the user, and the metrics record that keeps them."""
    texts = [f"{k} {_show(a)} -> {_show(b)} from step {step + 1}" for k, (a, b) in changed.items()]
    return texts, {"step": step, "event": "settings", "changed": {k: list(v) for k, v in changed.items()}}


def _show(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)
