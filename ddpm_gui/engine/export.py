"""A trained model out to diffusers: a folder that `diffusers.DDPMPipeline.from_pretrained(folder)` loads and
samples with, without DDPM Studio.

    folder/
        model_index.json                        the pipeline: DDPMPipeline = UNet2DModel + DDPMScheduler
        unet/config.json                        the UNet2DModel's config (sample_size = the run's image size)
        unet/diffusion_pytorch_model.safetensors   its weights (the EMA of the weights by default)
        scheduler/scheduler_config.json         the DDPMScheduler that is this run's schedule and sampler
        README.md                               a model card: data, steps, model, schedule, quality figures
        .ddpm-studio-export                     what DDPM Studio wrote here, with digests (see below)

Only models of the diffusers-architecture presets (models/presets.py, `arch="diffusers"`) are exported: they
are UNet2DModels already, so their weights are written unchanged. DDPM Studio's own UNet (labml's) has no
UNet2DModel counterpart (its time embedding, attention and up path differ), so it is refused.

The scheduler maps the run exactly: the schedule's kind to diffusers' beta_schedule (linear, scaled_linear =
our quadratic, squaredcos_cap_v2 = our cosine with s = 0.008), zero terminal SNR to rescale_betas_zero_snr,
checked number by number against our alpha_bar and written as `trained_betas` where the named schedule
would differ; eps/v to epsilon/v_prediction; the DDPM sampler's variance (beta_t or the posterior's) to
fixed_large/fixed_small; x_0 clipped to [-1, 1] as DDPM Studio's samplers clip it.

Folders: a new or empty folder is made the app's by writing the marker first. The marker lists every file
the app writes there with its SHA-256; exporting again into that folder rewrites only those files, and only
while they are unchanged. Any other non-empty folder is refused before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from ddpm_gui import __version__
from ddpm_gui.core.spec import DIFFUSERS_BETA_SCHEDULES, DIFFUSERS_COSINE_S, ScheduleConfig
from ddpm_gui.engine.fileio import atomic_write_bytes, check_output
from ddpm_gui.errors import CheckpointError, ConfigError

EXPORT_MARKER = ".ddpm-studio-export"
EXPORT_FORMAT = "ddpm-studio-export"
UNET_CONFIG = "unet/config.json"
UNET_WEIGHTS = "unet/diffusion_pytorch_model.safetensors"
SCHEDULER_CONFIG = "scheduler/scheduler_config.json"
MODEL_INDEX = "model_index.json"
MODEL_CARD = "README.md"
EXPORT_FILES = (MODEL_INDEX, UNET_CONFIG, UNET_WEIGHTS, SCHEDULER_CONFIG, MODEL_CARD)
# what a file manager leaves in any folder: a folder holding only these is still empty
_OS_FILES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})
# our kind -> diffusers' beta_schedule name (the inverse of core.spec's table)
_BETA_SCHEDULE = {ours: theirs for theirs, ours in DIFFUSERS_BETA_SCHEDULES.items()}
_VARIANCE_TYPES = {"beta": "fixed_large", "posterior": "fixed_small"}
_PREDICTION_TYPES = {"eps": "epsilon", "v": "v_prediction"}


def diffusers_presets() -> list[str]:
    from ddpm_gui.models.presets import PRESETS

    return [name for name, cfg in PRESETS.items() if cfg.arch == "diffusers"]


# ----------------------------------------------------------------------------- the scheduler


def scheduler_config(schedule: ScheduleConfig, prediction: str = "eps", variance: str = "beta") -> dict:
    """The DDPMScheduler keyword arguments that give exactly this schedule, prediction and DDPM variance
    (its alphas_cumprod agree with NoiseSchedule's alpha_bars to float32 precision: checked here)."""
    import numpy as np

    from ddpm_gui.core.schedule import NoiseSchedule
    from ddpm_gui.models.diffusers_unet import import_diffusers

    if prediction not in _PREDICTION_TYPES:
        raise ConfigError(f"Unknown prediction {prediction!r}: use one of {', '.join(_PREDICTION_TYPES)}.")
    if variance not in _VARIANCE_TYPES:
        raise ConfigError(f"Unknown variance {variance!r}: use one of {', '.join(_VARIANCE_TYPES)}.")
    s = schedule.validate()
    cfg = {
        "num_train_timesteps": s.T,
        "beta_start": s.beta_start,
        "beta_end": s.beta_end,
        "beta_schedule": _BETA_SCHEDULE[s.kind],
        "trained_betas": None,
        "rescale_betas_zero_snr": s.rescale_zero_snr,
        "prediction_type": _PREDICTION_TYPES[prediction],
        "variance_type": _VARIANCE_TYPES[variance],
        "clip_sample": True,
        "clip_sample_range": 1.0,
        "thresholding": False,
        "timestep_spacing": "leading",  # with num_inference_steps = T: every timestep, as our DDPM sampler
        "steps_offset": 0,
    }
    ours = NoiseSchedule(s)
    theirs = import_diffusers().DDPMScheduler(**cfg)
    exact = s.kind != "cosine" or s.cosine_s == DIFFUSERS_COSINE_S
    if exact:
        diff = (theirs.alphas_cumprod.double() - ours.alpha_bars).abs().max()
        exact = bool(diff <= 1e-6)
    if not exact:  # a cosine with another s, or numbers that drift: the betas themselves
        cfg.update(trained_betas=[float(b) for b in np.asarray(ours.betas)], rescale_betas_zero_snr=False)
    return cfg


# ----------------------------------------------------------------------------- the output folder


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _read_marker(folder: Path) -> dict | None:
    try:
        info = json.loads((folder / EXPORT_MARKER).read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    ok = (
        isinstance(info, dict) and info.get("format") == EXPORT_FORMAT and isinstance(info.get("files"), dict)
    )
    return info if ok else None


def check_export_dir(out_dir: str | Path) -> Path:
    """The folder to export into, or a ConfigError (nothing written): a new or empty folder, or one the app
    exported into before whose files are as the app wrote them. Any other folder is someone's."""
    if out_dir is None or not str(out_dir).strip():
        raise ConfigError("The export folder path is empty: choose a new or empty folder.")
    out = Path(out_dir).expanduser()
    check_output(out / MODEL_INDEX, "The export folder")  # writable, room on the disk
    if not out.exists():
        return out
    if not out.is_dir():
        raise ConfigError(f"{out} is a file: choose a new or empty folder to export into.")
    try:
        names = [e.name for e in os.scandir(out)]
    except OSError as exc:
        raise ConfigError(f"{out} cannot be read ({exc.strerror or exc}): choose another folder.") from None
    if all(n in _OS_FILES for n in names):
        return out
    marker = _read_marker(out)
    if marker is None:
        raise ConfigError(
            f"{out} is not empty and was not made by DDPM Studio's export: choose a new or empty folder "
            "(nothing in it was changed)."
        )
    for name in EXPORT_FILES:
        p = out / name
        if not (p.exists() or p.is_symlink()):
            continue
        known = marker["files"].get(name, "missing")
        if p.is_symlink() or not p.is_file() or (known is not None and known != _sha256(p)):
            raise ConfigError(
                f"{p} was changed or added since DDPM Studio exported into {out}: choose a new or empty "
                "folder (nothing in it was changed)."
            )
    return out


def _write_marker(out: Path, files: dict[str, str | None], source: str) -> None:
    info = {
        "format": EXPORT_FORMAT,
        "version": 1,
        "app_version": __version__,
        "source": source,
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "files": files,
    }
    atomic_write_bytes(out / EXPORT_MARKER, (json.dumps(info, indent=2) + "\n").encode())


def _write_files(out: Path, contents: dict[str, bytes], source: str) -> None:
    """The marker first, claiming every name (digest null: being written), then each file atomically, then
    the marker with the digests."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(
            f"Cannot create {out} ({exc.strerror or exc}): choose a writable folder."
        ) from None
    _write_marker(out, dict.fromkeys(contents), source)
    for name, data in contents.items():
        atomic_write_bytes(out / name, data)
    _write_marker(out, {n: hashlib.sha256(d).hexdigest() for n, d in contents.items()}, source)


# ----------------------------------------------------------------------------- the model


def _load(path: Path) -> tuple[Path, dict, dict, list[str]]:
    """(checkpoint, tensors, meta, notes) of a run folder (its newest checkpoint that loads) or a checkpoint."""
    from ddpm_gui.engine.checkpoint import fallback_notes, load_checkpoint, load_latest_checkpoint

    if path.is_dir():
        ckpt, tensors, meta, skipped = load_latest_checkpoint(path)
        return ckpt, tensors, meta, fallback_notes(ckpt, skipped)
    if not path.exists():
        raise CheckpointError(f"No such run folder or checkpoint: {path}.")
    tensors, meta = load_checkpoint(path)
    return path, tensors, meta, []


def _refuse_unsupported(meta: dict) -> None:
    from ddpm_gui.models.presets import ModelConfig

    try:
        arch = ModelConfig.from_dict(meta["model_config"]).arch
    except (KeyError, TypeError, ValueError, ConfigError):
        arch = "?"
    preset = str(meta.get("config", {}).get("preset", "?"))
    if arch != "diffusers":
        raise ConfigError(
            f"Only models of the diffusers-architecture presets ({', '.join(diffusers_presets())}) export to "
            f"diffusers; this run's preset {preset!r} is DDPM Studio's own UNet: train with --preset "
            "ddpm-cifar10 to export."
        )
    if meta.get("num_classes"):
        raise ConfigError(
            "Only unconditional models export to a diffusers DDPMPipeline (it has no class input): train "
            "this preset unconditionally to export."
        )


def _safetensors_bytes(state: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save({k: v.detach().contiguous().cpu() for k, v in state.items()}, metadata={"format": "pt"})


def export_diffusers(
    run_dir: str | Path, out_dir: str | Path, use_ema: bool = True, variance: str = "beta"
) -> Path:
    """Write the newest checkpoint of a run (or a checkpoint file) as a diffusers DDPMPipeline folder; returns
    the folder. `use_ema`: the EMA of the weights (what DDPM Studio samples with) when the run kept one.
    `variance`: the DDPM sampler's sigma^2 the scheduler uses, beta (beta_t) or posterior (beta~_t)."""
    from ddpm_gui.engine.sampler import bundle_from_state
    from ddpm_gui.models.diffusers_unet import import_diffusers

    src = Path(run_dir).expanduser()
    out = check_export_dir(out_dir)
    if variance not in _VARIANCE_TYPES:
        raise ConfigError(f"Unknown variance {variance!r}: use one of {', '.join(_VARIANCE_TYPES)}.")
    ckpt, tensors, meta, notes = _load(src)
    _refuse_unsupported(meta)
    import_diffusers()  # the install hint, before anything is built
    bundle = bundle_from_state(tensors, meta, str(ckpt), torch.device("cpu"), use_ema=use_ema)
    unet: Any = getattr(bundle.model, "unet", None)  # the DiffusersUNet's UNet2DModel
    if unet is None:
        raise ConfigError(f"{ckpt.name} does not hold a diffusers UNet2DModel.")
    unet.register_to_config(sample_size=bundle.image_size)
    ema = use_ema and any(k.startswith("ema.") for k in tensors)
    sched = scheduler_config(bundle.schedule.config, bundle.prediction, variance)
    diffusers = import_diffusers()
    scheduler = diffusers.DDPMScheduler(**sched)
    pipe_index = diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).to_json_string()
    card = model_card(src, ckpt, meta, unet, sched, ema=ema, variance=variance, notes=notes)
    contents = {
        MODEL_INDEX: pipe_index.encode(),
        UNET_CONFIG: unet.to_json_string().encode(),
        UNET_WEIGHTS: _safetensors_bytes(unet.state_dict()),
        SCHEDULER_CONFIG: scheduler.to_json_string().encode(),
        MODEL_CARD: card.encode(),
    }
    _write_files(out, contents, str(ckpt))
    return out


# ----------------------------------------------------------------------------- the model card


def _schedule_text(s: ScheduleConfig) -> str:
    text = f"{s.kind}, T = {s.T}"
    if s.kind != "cosine":
        text += f", beta {s.beta_start:g} to {s.beta_end:g}"
    else:
        text += f", s = {s.cosine_s:g}"
    return text + (", rescaled to zero terminal SNR" if s.rescale_zero_snr else "")


def _quality_lines(run: Path, step: int) -> list[str]:
    """The run's quality checks (engine/runs.py finds them): the one of this step, else the latest."""
    from ddpm_gui.engine.runs import quality_results

    results = quality_results(run) if run.is_dir() else []
    if not results:
        return ["No quality check (`ddpm-gui eval`) was saved in the run for this model."]
    same = [r for r in results if r.get("model_step") == step]
    r = same[-1] if same else results[-1]
    lines = [
        "DDPM Studio's quality check: samples scored by a small classifier trained on the training images "
        "(FID's formula on that classifier's features, not Inception FID; compare runs on the same data only).",
        "",
        "| | |",
        "|---|---|",
        f"| Model step scored | {int(r['model_step']):,}"
        + ("" if same else f" (this export is step {step:,})")
        + " |",
    ]
    if isinstance(r.get("n"), int):
        steps = r.get("sampling_steps", "?")
        lines.append(f"| Samples | {r['n']:,} ({r.get('sampler', '?')}, {steps} steps) |")
    floor = r.get("frechet_distance_real")
    fd = f"{r['frechet_distance']:.3f}" + (
        f" (real vs real: {floor:.3f})" if isinstance(floor, float) else ""
    )
    lines.append(f"| Fréchet distance | {fd} |")
    for key, label in (("recognisable", "Recognisable samples"), ("real_recognisable", "Recognisable real"),
                       ("classifier_accuracy", "Classifier accuracy (held-out real)")):  # fmt: skip
        if isinstance(r.get(key), int | float):
            lines.append(f"| {label} | {100 * r[key]:.1f}% |")
    return lines


def model_card(
    run: Path,
    ckpt: Path,
    meta: dict,
    unet,
    sched: dict,
    ema: bool,
    variance: str,
    notes: list[str] | None = None,
) -> str:
    """The README.md of an exported folder."""
    cfg = meta.get("config", {})
    schedule = ScheduleConfig.from_dict(cfg.get("schedule", {}))
    step = int(meta.get("step", 0))
    n_params = sum(p.numel() for p in unet.parameters())
    ucfg = unet.config
    size = int(cfg.get("image_size", ucfg.sample_size))
    count = (meta.get("data_fingerprint") or {}).get("count")
    data = f"`{cfg.get('data', '?')}`" + (f", {count:,} images" if isinstance(count, int) else "")
    decay = cfg.get("ema_decay")
    weights = f"EMA of the weights (decay {decay:g})" if ema else "the trained weights (no EMA)"
    name = run.name if run.is_dir() else ckpt.stem
    app = " ".join(["DDPM Studio", str(meta.get("app_version") or "")]).strip()
    T = schedule.T
    lines = [
        "---",
        "library_name: diffusers",
        "pipeline_tag: unconditional-image-generation",
        "tags:",
        *[
            f"- {t}"
            for t in ("pytorch", "diffusers", "unconditional-image-generation", "ddpm", "ddpm-studio")
        ],
        "---",
        "",
        f"# {name}",
        "",
        f"A denoising diffusion probabilistic model (Ho et al. 2020) trained with {app} and exported as a "
        f"diffusers `DDPMPipeline` (`UNet2DModel` + `DDPMScheduler`). It draws {size}x{size} images.",
        "",
        "## Use",
        "",
        "```python",
        "import torch",
        "from diffusers import DDPMPipeline",
        "",
        'pipe = DDPMPipeline.from_pretrained("path/to/this/folder")',
        f"images = pipe(batch_size=16, num_inference_steps={T}, generator=torch.manual_seed(0)).images",
        "```",
        "",
        f"`num_inference_steps` can be at most {T}, the schedule's length (the pipeline's default, 1000, "
        f"is more than that{' here' if T < 1000 else ''}); {T} visits every timestep, as DDPM Studio's "
        "DDPM sampler does.",
        "",
        "## Training",
        "",
        "| | |",
        "|---|---|",
        f"| Data | {data}, at {size}x{size} |",
        f"| Steps | {step:,} of {int(cfg.get('steps', step)):,} (checkpoint `{ckpt.name}`) |",
        f"| Batch size, learning rate | {cfg.get('batch_size', '?')}, {cfg.get('lr', '?')} (AdamW) |",
        f"| Model | preset `{cfg.get('preset', '?')}`: UNet2DModel, block_out_channels "
        f"{list(ucfg.block_out_channels)}, layers_per_block {ucfg.layers_per_block}, "
        f"{n_params / 1e6:.2f}M parameters |",
        f"| Weights | {weights} |",
        f"| Noise schedule | {_schedule_text(schedule)} (scheduler: "
        + ("trained_betas" if sched["trained_betas"] else f"beta_schedule `{sched['beta_schedule']}`")
        + ") |",
        f"| Prediction | {cfg.get('prediction', 'eps')} (prediction_type `{sched['prediction_type']}`) |",
        f"| Sampling | variance {'beta_t' if variance == 'beta' else 'of the posterior'} "
        f"(variance_type `{sched['variance_type']}`), predicted x_0 clipped to [-1, 1] (clip_sample) |",
        f"| Seed | {cfg.get('seed', '?')} |",
        "",
        "## Evaluation",
        "",
        *_quality_lines(run, step),
    ]
    if notes:
        lines += ["", "## Notes", "", *[f"- {n}" for n in notes]]
    return "\n".join(lines) + "\n"
