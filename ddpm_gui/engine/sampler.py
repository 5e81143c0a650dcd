"""Sampling from a trained model: frames of the reverse process for a viewer, and the tutorial's
"noise an image halfway and denoise it K ways" experiment. No Qt."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ddpm_gui.core.diffusion import VARIANCES, from_uint8, noise_to, reverse_process, to_uint8
from ddpm_gui.core.schedule import NoiseSchedule, ScheduleConfig
from ddpm_gui.core.spec import SAMPLERS
from ddpm_gui.engine.checkpoint import (
    fallback_notes,
    is_ddpm_checkpoint,
    load_checkpoint,
    load_foreign_state_dict,
    load_latest_checkpoint,
    unprefixed,
)
from ddpm_gui.engine.device import pick_device
from ddpm_gui.engine.threads import sampling_threads
from ddpm_gui.errors import CheckpointError, ConfigError


@dataclass
class ModelBundle:
    """A model ready to sample from, with everything needed to interpret it."""

    model: nn.Module  # eval mode, on `device`; EMA weights when the checkpoint has them
    schedule: NoiseSchedule  # float64 master copy on the CPU
    prediction: str  # eps | v
    image_size: int
    num_classes: int | None  # None: unconditional
    class_names: list[str] | None
    step: int
    preset: str
    source: str  # the checkpoint path, or "training run <dir>"
    device: torch.device
    image_channels: int = 3
    # said to the user (CLI warning, GUI): e.g. which newer checkpoint of a run was damaged and skipped
    notes: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)  # the checkpoint's JSON header (config, step, classes)
    # how the model was made to be sampled: the defaults of SampleConfig's variance and clip_x0, and the
    # range x_0 is clipped to (a diffusers model's scheduler config says; DDPM Studio models: beta, clip, 1)
    variance: str = "beta"
    clip_x0: bool = True
    clip_range: float = 1.0
    # conditional models: whether the embedding has the extra "null" row (index num_classes) that makes
    # classifier-free guidance and unconditional samples possible. DDPM Studio's models always have it.
    has_null_class: bool = True

    @property
    def null_class(self) -> int | None:
        """The class index meaning "no class" (classifier-free guidance), or None where there is none."""
        return self.num_classes if self.has_null_class else None


@dataclass
class SampleConfig:
    n: int = 16  # number of images
    # a name of core.spec.SAMPLERS: ddpm (ancestral, the tutorial) | ddim | dpm++2m | euler_a
    sampler: str = "ddpm"
    steps: int = 50  # strided samplers (all but ddpm): number of steps
    eta: float = 0.0  # DDIM only: 0 deterministic, 1 ~ DDPM
    # DDPM only: beta (sigma^2 = beta_t, the tutorial) | posterior (beta~_t); None: the model's own
    # (ModelBundle.variance; beta without a model)
    variance: str | None = None
    seed: int = 0
    class_label: int | None = None  # conditional models: the class to draw (None: unconditional)
    guidance: float = 1.0  # classifier-free guidance scale w (1 = plain conditional, 0 = unconditional)
    clip_x0: bool | None = None  # clip the predicted x_0 at every step; None: the model's own (else True)
    every: int = 1  # yield a frame every `every` steps (the last step always)

    def validate(self, bundle: ModelBundle | None = None) -> SampleConfig:
        """This config checked, with the model's own defaults filled in (a copy when any was missing)."""
        if self.variance is None:
            return replace(self, variance=bundle.variance if bundle else "beta").validate(bundle)
        if self.clip_x0 is None:
            return replace(self, clip_x0=bundle.clip_x0 if bundle else True).validate(bundle)
        if not (isinstance(self.n, int) and 1 <= self.n <= 1024):
            raise ConfigError(f"The number of images must be from 1 to 1024, got {self.n}.")
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"Unknown sampler '{self.sampler}': use one of {', '.join(SAMPLERS)}.")
        if SAMPLERS[self.sampler].strided and not (isinstance(self.steps, int) and self.steps >= 1):
            raise ConfigError(f"{self.sampler.upper()} needs at least 1 step, got {self.steps}.")
        if self.variance not in VARIANCES:
            raise ConfigError(f"Unknown variance '{self.variance}': use 'beta' or 'posterior'.")
        if not (0.0 <= self.eta <= 1.0):
            raise ConfigError(f"eta must lie in [0, 1], got {self.eta}.")
        if not (isinstance(self.every, int) and self.every >= 1):
            raise ConfigError("every must be at least 1.")
        if not (0.0 <= self.guidance <= 50.0):
            raise ConfigError(f"The guidance scale must lie in [0, 50], got {self.guidance}.")
        if bundle is not None and self.class_label is not None:
            if bundle.num_classes is None:
                raise ConfigError("This model is not class-conditional: leave the class empty.")
            if not 0 <= self.class_label < bundle.num_classes:
                raise ConfigError(
                    f"The class must lie in 0..{bundle.num_classes - 1}, got {self.class_label}."
                )
        return self


@dataclass
class SampleFrame:
    index: int  # step number in the chain (-1: the starting images)
    total: int  # number of steps in the chain
    t: int  # the timestep this frame was computed at
    xt: np.ndarray  # (N, H, W, 3) uint8: the current x_t
    x0: np.ndarray  # (N, H, W, 3) uint8: the model's prediction of x_0 at this step
    final: bool = False


def make_denoiser(bundle: ModelBundle, n: int, class_label: int | None, guidance: float):
    """(x, t) -> model output, with classifier-free guidance for conditional models:
    out = out_uncond + w (out_cond - out_uncond)   (Ho & Salimans 2022)."""
    model = bundle.model
    dev = bundle.device
    if bundle.num_classes is None:
        return lambda x, t: model(x, t)
    if bundle.null_class is None:
        # no unconditional mode: "no class" draws every class in turn, and guidance (which needs the
        # unconditional output) is off
        if class_label is None:
            y = torch.arange(n, device=dev) % bundle.num_classes
        else:
            y = torch.full((n,), int(class_label), device=dev, dtype=torch.long)
        return lambda x, t: model(x, t, y)
    null = torch.full((n,), bundle.num_classes, device=dev, dtype=torch.long)
    if class_label is None:
        return lambda x, t: model(x, t, null)
    y = torch.full((n,), int(class_label), device=dev, dtype=torch.long)
    if guidance == 1.0:
        return lambda x, t: model(x, t, y)

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]))
        cond, uncond = out.chunk(2)
        return uncond + guidance * (cond - uncond)

    return guided


def _frames(
    bundle: ModelBundle,
    cfg: SampleConfig,
    x_start: torch.Tensor,
    t_start: int | None,
    gen: torch.Generator,
    stop: threading.Event | None,
) -> Iterator[SampleFrame]:
    sched = bundle.schedule.to(bundle.device)
    denoiser = make_denoiser(bundle, x_start.shape[0], cfg.class_label, cfg.guidance)
    with torch.inference_mode(), sampling_threads(bundle.device) as recheck_threads:
        chain = reverse_process(
            denoiser,
            x_start,
            sched,
            sampler=cfg.sampler,
            t_start=t_start,
            steps=cfg.steps if SAMPLERS[cfg.sampler].strided else None,
            eta=cfg.eta,
            variance=cfg.variance or bundle.variance,  # validate() filled in both; this keeps the types exact
            prediction=bundle.prediction,
            clip_x0=bundle.clip_x0 if cfg.clip_x0 is None else cfg.clip_x0,
            generator=gen,
            clip_range=bundle.clip_range,
        )
        for st in chain:
            last = st.index == st.total - 1
            if last or st.index % cfg.every == 0:
                # the only host syncs: the frames the viewer asked for
                yield SampleFrame(
                    st.index, st.total, st.t, to_uint8(st.x).numpy(), to_uint8(st.x0).numpy(), last
                )
            if stop is not None and stop.is_set():
                return
            recheck_threads()


def _generator(bundle: ModelBundle, seed: int) -> torch.Generator:
    gen = torch.Generator(device=bundle.device)
    gen.manual_seed(int(seed))
    return gen


def sample_frames(
    bundle: ModelBundle, cfg: SampleConfig | None = None, stop: threading.Event | None = None
) -> Iterator[SampleFrame]:
    """Draw cfg.n images from pure noise, yielding frames of the reverse process."""
    cfg = (cfg or SampleConfig()).validate(bundle)
    gen = _generator(bundle, cfg.seed)
    s = bundle.image_size
    x = torch.randn((cfg.n, bundle.image_channels, s, s), generator=gen, device=bundle.device)
    yield from _frames(bundle, cfg, x, None, gen, stop)


def accelerated(bundle: ModelBundle, mode: str = "auto") -> ModelBundle:
    """The bundle with its model wrapped for faster inference (engine/accel.py: CUDA graphs on CUDA, eager
    elsewhere, falling back to eager on any capture error). Call it in the thread that samples: a CUDA graph
    is captured on the first call of each batch shape."""
    from ddpm_gui.engine.accel import accelerate

    return replace(bundle, model=accelerate(bundle.model, mode))


def sample_images(bundle: ModelBundle, cfg: SampleConfig | None = None) -> np.ndarray:
    """The final images only: (N, H, W, 3) uint8."""
    last = None
    for frame in sample_frames(bundle, cfg):
        last = frame
    assert last is not None
    return last.xt


def denoise_frames(
    bundle: ModelBundle,
    image: np.ndarray,
    t: int = 50,
    k: int = 10,
    seed: int = 0,
    cfg: SampleConfig | None = None,
    stop: threading.Event | None = None,
) -> Iterator[SampleFrame]:
    """The tutorial's experiment: noise `image` (H, W, 3 uint8, at the model's size) to timestep t with
    q(x_t | x_0), k independent ways, then run the reverse chain from t. The first frame (index -1)
    holds the k noised starts."""
    cfg = cfg or SampleConfig()
    cfg = SampleConfig(**{**cfg.__dict__, "n": k, "seed": seed}).validate(bundle)
    T = bundle.schedule.T
    if not 0 <= t < T:
        raise ConfigError(f"t must lie in 0..{T - 1} for this model's schedule, got {t}.")
    img = np.asarray(image)
    s = bundle.image_size
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ConfigError("The image must be an H x W x 3 uint8 array.")
    if img.shape[:2] != (s, s):
        from ddpm_gui.data.imageio import fit_square

        img = fit_square(img, s)
    gen = _generator(bundle, seed)
    x0 = from_uint8(torch.from_numpy(np.ascontiguousarray(img))[None].to(bundle.device))
    sched = bundle.schedule.to(bundle.device)
    xs = noise_to(x0, t, k, sched, generator=gen)
    start = to_uint8(xs).numpy()
    yield SampleFrame(-1, 0, t, start, np.repeat(img[None], k, 0), False)
    yield from _frames(bundle, cfg, xs, t, gen, stop)


# ----------------------------------------------------------------------------- loading


def bundle_from_state(
    tensors: dict[str, torch.Tensor],
    meta: dict,
    source: str,
    device: torch.device,
    use_ema: bool = True,
    target: str = "the model it describes",
) -> ModelBundle:
    """Build the model a checkpoint describes and load its (EMA) weights."""
    from ddpm_gui.models.presets import ModelConfig, build_model, check_image_size

    try:  # a damaged or hand-made header is a CheckpointError naming the file, never a traceback
        cfg = meta.get("config", {})
        mcfg = ModelConfig.from_dict(meta["model_config"]).validate()
        num_classes = meta.get("num_classes")
        schedule = NoiseSchedule(ScheduleConfig.from_dict(cfg.get("schedule", {})))
        prediction = cfg.get("prediction", "eps")
        if prediction not in ("eps", "v"):
            raise ValueError(f"prediction {prediction!r}")
        image_size = int(cfg.get("image_size", 32))
        check_image_size(mcfg, image_size)  # a size the UNet cannot halve would fail only when sampling
        weights = unprefixed("ema", tensors) if use_ema else {}
        if not weights:
            weights = unprefixed("model", tensors)
        # shapes first, on the meta device: a file that describes a huge model is refused before any memory
        # is spent on it (a file must not be able to take the machine over)
        with torch.device("meta"):
            probe = build_model(mcfg, num_classes=num_classes)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(
            f"{Path(source).name} describes a model this version cannot build ({exc})."
        ) from None
    check_fit(probe, weights, source, target)
    model = build_model(mcfg, num_classes=num_classes)
    model.load_state_dict(weights)
    model.to(device).eval()
    return ModelBundle(
        model=model,
        schedule=schedule,
        prediction=prediction,
        image_size=image_size,
        num_classes=num_classes,
        class_names=meta.get("class_names"),
        step=int(meta.get("step", 0)),
        preset=str(cfg.get("preset", "?")),
        source=source,
        device=device,
        image_channels=mcfg.image_channels,
        meta=meta,
    )


def check_fit(
    model: nn.Module, weights: dict[str, torch.Tensor], source: str, target: str = "the model it describes"
) -> None:
    """A message naming the mismatch when weights were made for another architecture."""
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    wrong = [
        (k, tuple(weights[k].shape), tuple(v.shape))
        for k, v in own.items()
        if k in weights and weights[k].shape != v.shape
    ]
    if missing or unexpected or wrong:
        parts = []
        shapes = {k: (got, want) for k, got, want in wrong}
        if (
            "image_proj.weight" in shapes
            and shapes["image_proj.weight"][0][1:2] != shapes["image_proj.weight"][1][1:2]
        ):
            got, want = shapes["image_proj.weight"]
            parts.append(f"its model takes {got[1]}-channel images, this one {want[1]}-channel images")
        if "class_emb.weight" in shapes:
            got, want = shapes["class_emb.weight"]
            parts.append(f"it has {got[0] - 1} classes, this model {want[0] - 1}")
        if wrong:
            k, got, want = wrong[0]
            parts.append(f"{len(wrong)} tensors have other shapes (e.g. {k}: file {got}, model {want})")
        if missing:
            parts.append(f"{len(missing)} weights are missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} weights are unknown to this model (e.g. {unexpected[0]})")
        raise CheckpointError(
            f"{Path(source).name} does not fit {target}: {'; '.join(parts)}. "
            "It was made for another architecture, channel count or class count."
        )


def load_bundle(
    path: str | Path,
    device: str = "auto",
    use_ema: bool = True,
    preset: str | None = None,
    image_size: int = 32,
) -> ModelBundle:
    """A run folder (its newest readable checkpoint; the bundle's `notes` say which newer ones were skipped
    and why), a DDPM Studio .safetensors checkpoint, or (with `preset`) a foreign .pt/.pth/.safetensors state
    dict of our UNet; or a diffusers model: its folder or a Hub id in the local cache (engine/diffusers_io)."""
    from ddpm_gui.engine import diffusers_io

    if diffusers_io.is_diffusers_model(path) or (
        not Path(path).expanduser().exists() and diffusers_io.is_hub_id(str(path))
    ):
        return diffusers_io.load_diffusers_bundle(path, device=device)
    path = Path(path).expanduser()
    dev = pick_device(device)
    if path.is_dir():  # the newest checkpoint that fully loads (every byte checked against its digest)
        try:
            ckpt, tensors, meta, skipped = load_latest_checkpoint(path)
        except CheckpointError as exc:
            raise CheckpointError(f"{exc} Train first, or pick a .safetensors file.") from None
        bundle = bundle_from_state(tensors, meta, str(ckpt), dev, use_ema=use_ema)
        bundle.notes = fallback_notes(ckpt, skipped)
        return bundle
    if not path.exists():
        raise CheckpointError(f"No such file: {path}.")
    if preset is not None and path.suffix == ".safetensors" and is_ddpm_checkpoint(path):
        preset = None  # a DDPM Studio checkpoint describes its own model: that description wins
    if path.suffix in (".pt", ".pth", ".bin", ".ckpt") or preset is not None:
        if preset is None:
            raise CheckpointError(
                f"{path.name} is a plain PyTorch file with no description of its model: say which preset it "
                "was trained with (ddpm-gui sample --checkpoint FILE --preset NAME)."
            )
        from ddpm_gui.models.presets import check_image_size, get_preset

        mcfg = get_preset(preset)  # ConfigError naming the presets for an unknown one
        check_image_size(mcfg, image_size)
        if path.suffix == ".safetensors":
            from safetensors import SafetensorError
            from safetensors.torch import load_file

            try:
                sd = load_file(str(path))
            except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
                raise CheckpointError(
                    f"{path.name} is not a readable safetensors file (it may be truncated or corrupt): {str(exc)[:200]}."
                ) from None
        else:
            sd = load_foreign_state_dict(path)
        # a class-conditional UNet: its number of classes (+ the null row) from the file
        emb = sd.get("class_emb.weight")
        conditional = emb is not None and emb.ndim == 2 and emb.shape[0] > 1
        num_classes = int(emb.shape[0]) - 1 if emb is not None and conditional else None
        meta = {
            "config": {"preset": preset, "image_size": image_size},
            "model_config": mcfg.to_dict(),
            "num_classes": num_classes,
        }
        return bundle_from_state(
            prefixed_model(sd),
            meta,
            str(path),
            dev,
            use_ema=False,
            target=f"the preset {preset!r} (try the preset it was trained with)",
        )
    tensors, meta = load_checkpoint(path)
    return bundle_from_state(tensors, meta, str(path), dev, use_ema=use_ema)


def prefixed_model(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"model.{k}": v for k, v in sd.items()}
