"""Opening diffusers DDPM/DDIM models as ModelBundles: a folder written by `save_pretrained` (a pipeline with
`unet/` and `scheduler/`, or a bare UNet2DModel folder with a scheduler config beside it) or a Hub id already
in the local Hugging Face cache. Never a network call. No Qt; diffusers is imported only to load weights.

The scheduler config maps exactly: `beta_schedule` to a ScheduleConfig kind (core/spec.py
DIFFUSERS_BETA_SCHEDULES, computed in float32 as diffusers does), `prediction_type` to eps/v (`sample`, an
x_0 predictor, is shown to the sampler as v), `variance_type` to the bundle's default variance (fixed_small:
the posterior's beta~_t, fixed_large: beta_t), `clip_sample`/`clip_sample_range` to its clipping defaults.
Timesteps need no mapping (models/diffusers_unet.py).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from torch import nn

from ddpm_gui.core.schedule import NoiseSchedule, ScheduleConfig, gather
from ddpm_gui.core.spec import DIFFUSERS_BETA_SCHEDULES, DIFFUSERS_COSINE_S
from ddpm_gui.engine.device import pick_device
from ddpm_gui.engine.sampler import ModelBundle
from ddpm_gui.errors import CheckpointError, ConfigError
from ddpm_gui.models.diffusers_unet import DiffusersUNet, import_diffusers

SUPPORTED = (
    "DDPM Studio opens pixel-space UNet2DModel pipelines (unconditional or class-conditional, with a DDPM or "
    "DDIM scheduler, fixed variance)"
)
PRESET = "diffusers UNet2DModel"
SCHEDULERS = ("DDPMScheduler", "DDIMScheduler", "DDPMParallelScheduler", "DDIMParallelScheduler")
VARIANCE_TYPES = {"fixed_small": "posterior", "fixed_small_log": "posterior", "fixed_large": "beta"}
VARIANCE_TYPES["fixed_large_log"] = "beta"
PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "v"}  # sample: through _SampleAsV
# pipeline parts that make a model something other than a pixel-space UNet2DModel, and what that is
FOREIGN_PARTS = {
    "vae": "a latent diffusion pipeline (it has a VAE)",
    "vqvae": "a latent diffusion pipeline (it has a VQ-VAE)",
    "text_encoder": "a text-conditioned pipeline (it has a text encoder)",
    "transformer": "a transformer-based pipeline",
}
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")  # a path, never a Hub id
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hub_id(text: str) -> bool:
    """Whether `text` has the form of a Hugging Face model id, "org/name" (not a checkpoint file's name)."""
    text = str(text)
    return bool(_HUB_ID.match(text)) and ".." not in text and Path(text).suffix not in CHECKPOINT_SUFFIXES


def _hub_cache() -> str | None:
    """The Hugging Face cache folder the environment names (None: huggingface_hub's default). Read at every
    call: huggingface_hub reads HF_HUB_CACHE and HF_HOME once, when it is imported."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    return os.path.join(os.environ["HF_HOME"], "hub") if os.environ.get("HF_HOME") else None


def _default_hub_cache() -> str:
    try:
        from huggingface_hub import constants
    except ImportError:
        return "HF_HUB_CACHE"
    return str(constants.HF_HUB_CACHE)


def cached_snapshot(repo_id: str) -> Path | None:
    """The folder of `repo_id`'s snapshot in the local Hugging Face cache (its refs/main), or None."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        return None
    try:
        return Path(snapshot_download(repo_id, local_files_only=True, cache_dir=_hub_cache()))
    except Exception:  # LocalEntryNotFoundError, a malformed id or cache: "not in the cache" to the caller
        return None


def cached_model_ids() -> list[str]:
    """The ids of the diffusers models in the local Hugging Face cache (for a picker); [] without a cache."""
    try:
        from huggingface_hub import scan_cache_dir
    except ImportError:
        return []
    try:
        repos = scan_cache_dir(_hub_cache()).repos
    except Exception:  # no cache folder yet, or one huggingface_hub cannot read: nothing to offer
        return []
    return sorted(r.repo_id for r in repos if r.repo_type == "model" and is_diffusers_model(r.repo_id))


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable JSON file ({str(exc)[:120]}).") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object.")
    return data


def _looks_diffusers(folder: Path) -> bool:
    if (folder / "model_index.json").is_file() or (folder / "unet" / "config.json").is_file():
        return True
    cfg = folder / "config.json"
    if not cfg.is_file() or cfg.stat().st_size > 1_000_000:
        return False
    try:
        return "_diffusers_version" in json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, TypeError):
        return False


def is_diffusers_model(path: str | Path) -> bool:
    """Whether `path` is a diffusers model folder (supported or not: loading says why not), or a Hub id
    found in the local Hugging Face cache. Reads a few small files; never imports diffusers."""
    try:
        p = Path(path).expanduser()
        if p.is_dir():
            return _looks_diffusers(p)
        if not p.exists() and is_hub_id(str(path)):
            snap = cached_snapshot(str(path))
            return snap is not None and _looks_diffusers(snap)
    except OSError:
        return False
    return False


def _layout(folder: Path) -> tuple[Path, Path | None]:
    """(the UNet's folder, its scheduler config or None) of a pipeline or bare-UNet folder; a message for a
    pipeline that holds other parts."""
    index = (folder / "model_index.json").is_file()
    if index or (folder / "unet").is_dir():
        parts = _read_json(folder / "model_index.json") if index else {}
        for name, what in FOREIGN_PARTS.items():
            if (folder / name).exists() or parts.get(name):
                raise ConfigError(f"{folder.name} is {what}: {SUPPORTED}.")
        if not (folder / "unet" / "config.json").is_file():
            raise ConfigError(f"{folder.name} has no unet/config.json: {SUPPORTED}.")
        sched = folder / "scheduler" / "scheduler_config.json"
        return folder / "unet", sched if sched.is_file() else None
    for sched in (folder / "scheduler_config.json", folder.parent / "scheduler" / "scheduler_config.json"):
        if sched.is_file():
            return folder, sched
    return folder, None


def _check_unet_config(cfg: dict, where: str) -> int:
    """The image size of a supported UNet2DModel config; a one-line message for anything else."""
    cls = cfg.get("_class_name")
    if cls == "UNet2DConditionModel":
        raise ConfigError(f"{where} is a text-conditioned UNet2DConditionModel: {SUPPORTED}.")
    if cls != "UNet2DModel":
        raise ConfigError(
            f"{where} holds a {cls or 'model of unknown class'}, not a UNet2DModel: {SUPPORTED}."
        )
    cin, cout = cfg.get("in_channels", 3), cfg.get("out_channels", 3)
    if cout == 2 * cin:
        raise ConfigError(
            f"{where} predicts a learned variance (out_channels = 2 x in_channels): {SUPPORTED}."
        )
    if cin not in (1, 3) or cout != cin:
        raise ConfigError(
            f"{where} works on {cin}-channel inputs with {cout} outputs (a latent model?): DDPM Studio needs "
            "1- or 3-channel images in and out."
        )
    if cfg.get("time_embedding_type", "positional") == "fourier":
        raise ConfigError(f"{where} is a score-SDE model (Fourier time embedding), not a DDPM: {SUPPORTED}.")
    if cfg.get("class_embed_type") is not None:
        raise ConfigError(
            f"{where} conditions through class_embed_type={cfg['class_embed_type']!r}: {SUPPORTED}."
        )
    size = cfg.get("sample_size")
    if isinstance(size, list | tuple) and len(size) == 2 and size[0] == size[1]:
        size = size[0]
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ConfigError(
            f"{where} has sample_size {size!r}: DDPM Studio needs square images of a known size."
        )
    return size


def schedule_settings(cfg: dict, where: str) -> tuple[ScheduleConfig, str, str, bool, float, list[str]]:
    """(schedule, prediction, default variance, clip_x0, clip_range, notes) of a scheduler config, exactly."""
    cls = cfg.get("_class_name", "DDPMScheduler")
    if cls not in SCHEDULERS:
        raise ConfigError(f"{where} configures a {cls}: {SUPPORTED}.")
    if cfg.get("trained_betas") is not None:
        raise ConfigError(
            f"{where} lists its own betas (trained_betas): DDPM Studio needs a named beta_schedule."
        )
    beta_schedule = cfg.get("beta_schedule", "linear")
    if beta_schedule not in DIFFUSERS_BETA_SCHEDULES:
        raise ConfigError(
            f"{where} uses beta_schedule {beta_schedule!r}: supported are {', '.join(DIFFUSERS_BETA_SCHEDULES)}."
        )
    variance_type = cfg.get("variance_type") or "fixed_small"  # DDIM's eta = 1 is the posterior variance
    if variance_type not in VARIANCE_TYPES:
        raise ConfigError(
            f"{where} uses variance_type {variance_type!r} (a learned variance): supported are fixed_small "
            "and fixed_large."
        )
    prediction_type = cfg.get("prediction_type", "epsilon")
    if prediction_type not in PREDICTION_TYPES:
        raise ConfigError(
            f"{where} uses prediction_type {prediction_type!r}: supported are {', '.join(PREDICTION_TYPES)}."
        )
    try:
        sc = ScheduleConfig(
            kind=DIFFUSERS_BETA_SCHEDULES[beta_schedule],
            T=cfg.get("num_train_timesteps", 1000),
            beta_start=cfg.get("beta_start", 1e-4),
            beta_end=cfg.get("beta_end", 0.02),
            cosine_s=DIFFUSERS_COSINE_S,
            rescale_zero_snr=bool(cfg.get("rescale_betas_zero_snr", False)),
            float32=True,
        ).validate()
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    clip_range = cfg.get("clip_sample_range", 1.0)
    if isinstance(clip_range, bool) or not isinstance(clip_range, int | float) or not clip_range > 0:
        raise ConfigError(f"{where} has clip_sample_range {clip_range!r}: it must be a positive number.")
    clip = bool(cfg.get("clip_sample", True))
    notes = []
    if cfg.get("thresholding"):
        clip = True
        notes.append(
            "Its scheduler uses dynamic thresholding, which DDPM Studio does not offer: the predicted x₀ "
            f"is clipped to ±{clip_range:g} instead."
        )
    if prediction_type == "sample":
        notes.append(
            "It predicts x₀ directly (prediction_type 'sample'): the sampler sees it as v-prediction."
        )
    return (
        sc,
        PREDICTION_TYPES[prediction_type],
        VARIANCE_TYPES[variance_type],
        clip,
        float(clip_range),
        notes,
    )


class _SampleAsV(nn.Module):
    """An x_0 predictor seen as a v predictor: v = (sqrt(ab_t) x_t - x_0) / sqrt(1 - ab_t), which the
    sampler turns back into x_0 = sqrt(ab_t) x_t - sqrt(1 - ab_t) v."""

    alpha_bars: torch.Tensor

    def __init__(self, inner: nn.Module, alpha_bars: torch.Tensor):
        super().__init__()
        self.inner = inner
        self.register_buffer("alpha_bars", alpha_bars.float(), persistent=False)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        x0 = self.inner(x, t, y)
        tt = torch.as_tensor(t, device=x.device).long().reshape(-1).expand(x.shape[0])
        ab = gather(self.alpha_bars, tt).to(x.dtype)
        return (ab.sqrt() * x - x0) / (1 - ab).sqrt()


def _resolve(path_or_id: str | Path) -> tuple[Path, str, str, list[str]]:
    """(the model's folder, its source, its short name for messages, notes) of a folder or a cached Hub id."""
    p = Path(path_or_id).expanduser()
    if p.is_dir():
        return p, str(p), p.name, []
    if p.exists():
        raise ConfigError(f"{p.name} is a file: a diffusers model is a folder (written by save_pretrained).")
    text = str(path_or_id)
    if not is_hub_id(text):
        raise CheckpointError(f"No such folder: {p}.")
    snap = cached_snapshot(text)
    if snap is None:
        raise CheckpointError(
            f"No folder {text} here, and no model {text} in the local Hugging Face cache "
            f"({_hub_cache() or _default_hub_cache()}): download it first (huggingface-cli download {text}) "
            "or open its folder. DDPM Studio never downloads models itself."
        )
    return snap, text, text, [f"Opened {text} from the local Hugging Face cache ({snap})."]


def _check_weights_fit(unet_dir: Path, ucfg: dict, where: str) -> None:
    """Refuse a config that describes a model far bigger than its weight files before any memory is spent
    on it (a file must not be able to take the machine over)."""
    files = [unet_dir / f for f in WEIGHT_FILES if (unet_dir / f).is_file()]
    if not files:
        raise CheckpointError(f"{where} has no weights ({' or '.join(WEIGHT_FILES)}).")
    diffusers = import_diffusers()
    try:
        with torch.device("meta"):
            probe = diffusers.UNet2DModel.from_config(ucfg)
    except (TypeError, ValueError, KeyError, AttributeError, RuntimeError) as exc:
        raise CheckpointError(
            f"{where} describes a UNet2DModel that cannot be built ({str(exc)[:160]})."
        ) from None
    need = sum(p.numel() for p in probe.parameters()) * 2  # at least half precision
    have = max(f.stat().st_size for f in files)
    if need > 1.1 * have + 2**20:
        raise CheckpointError(
            f"{where} describes a model of {need / 2**20:.0f} MiB or more, but its weights hold "
            f"{have / 2**20:.0f} MiB: the config does not belong to these weights."
        )


def _load_unet(unet_dir: Path, ucfg: dict, where: str) -> nn.Module:
    diffusers = import_diffusers()
    _check_weights_fit(unet_dir, ucfg, where)
    try:
        unet, info = diffusers.UNet2DModel.from_pretrained(
            str(unet_dir), low_cpu_mem_usage=False, output_loading_info=True
        )
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = next(
            (ln for ln in lines if "size mismatch" in ln), lines[0] if lines else type(exc).__name__
        )
        what = (
            "its weights do not fit its config.json"
            if "size mismatch" in detail
            else "it could not be loaded"
        )
        raise CheckpointError(f"{where}: {what} ({detail[:200]}).") from None
    missing = info.get("missing_keys") or []
    wrong = info.get("mismatched_keys") or []
    if missing or wrong:
        bad = (missing or [k[0] if isinstance(k, tuple) else k for k in wrong])[0]
        raise CheckpointError(
            f"{where}: {len(missing)} weights are missing and {len(wrong)} have other shapes (e.g. {bad}): "
            "the weights do not fit its config.json."
        )
    return unet.float()


def load_diffusers_bundle(path_or_id: str | Path, device: str = "auto") -> ModelBundle:
    """A diffusers UNet2DModel folder (or a pipeline folder, or a Hub id in the local cache), ready to sample
    from. `notes` say what the user should know: where a Hub id was found, guidance without a null class,
    schedule features DDPM Studio does not offer."""
    folder, source, where, notes = _resolve(path_or_id)
    unet_dir, sched_path = _layout(folder)
    ucfg = _read_json(unet_dir / "config.json")
    size = _check_unet_config(ucfg, where)
    if sched_path is None:
        raise ConfigError(
            f"{where} has no scheduler config (scheduler/scheduler_config.json in a pipeline, "
            "scheduler_config.json beside a bare UNet's config.json), so its noise schedule is unknown: add the "
            "one it was trained with (DDPMScheduler().save_pretrained(folder) writes the DDPM paper's)."
        )
    scfg = _read_json(sched_path)
    sc, prediction, variance, clip, clip_range, more = schedule_settings(scfg, f"{where}'s scheduler config")
    notes += more
    dev = pick_device(device)
    unet = _load_unet(unet_dir, ucfg, where)
    adapter = DiffusersUNet(unet)
    schedule = NoiseSchedule(sc)
    model: nn.Module = adapter
    if scfg.get("prediction_type") == "sample":
        model = _SampleAsV(adapter, schedule.alpha_bars)
    if adapter.num_classes is not None and adapter.null_class is None:
        notes.append(
            f"This class-conditional model has no null class, so classifier-free guidance is off; with no "
            f"class chosen, image i is drawn from class i mod {adapter.num_classes}."
        )
    model.to(dev).eval()
    meta = {
        "config": {"preset": PRESET, "image_size": size, "schedule": sc.to_dict(), "prediction": prediction},
        "num_classes": adapter.num_classes,
        "diffusers": {"unet": ucfg, "scheduler": scfg, "folder": str(folder)},
    }
    return ModelBundle(
        model=model,
        schedule=schedule,
        prediction=prediction,
        image_size=size,
        num_classes=adapter.num_classes,
        class_names=None,
        step=0,
        preset=PRESET,
        source=source,
        device=dev,
        image_channels=adapter.image_channels,
        notes=notes,
        meta=meta,
        variance=variance,
        clip_x0=clip,
        clip_range=clip_range,
        has_null_class=adapter.null_class is not None,
    )
