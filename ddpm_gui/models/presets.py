"""Model presets: from the tutorial's exact 42M-parameter UNet to small CPU-friendly ones, and the DDPM
paper's CIFAR-10 network as a diffusers UNet2DModel.

A preset is a `ModelConfig` (plain data, saved with every run as JSON); `build_model` turns it into a UNet:
labml's (models/unet.py) for `arch="labml"`, a diffusers `UNet2DModel` behind the same calling convention
(models/diffusers_unet.py) for `arch="diffusers"`, which `ddpm-gui export` writes as a diffusers pipeline.
Throughputs in PRESET_NOTES were measured on the project's 2-core CPU (torch 2.13, 2 threads): fwd + bwd +
AdamW step at batch 64 on 32x32 RGB images, median after warm-up (`presets.benchmark(name)`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from ddpm_gui.errors import ConfigError
from ddpm_gui.models.unet import N_GROUPS, UNet, level_channels

# labml: this app's UNet (models/unet.py); diffusers: a diffusers UNet2DModel (the optional extra)
ARCHS = ("labml", "diffusers")
# What every diffusers-architecture preset shares with google/ddpm-cifar10-32's config.json (the DDPM
# paper's network as diffusers converted it): these keys change what the weights compute, not their shapes.
DDPM_UNET_FAMILY: dict = {
    "act_fn": "silu",
    "attention_head_dim": None,
    "center_input_sample": False,
    "downsample_padding": 0,
    "flip_sin_to_cos": False,
    "freq_shift": 1,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-06,
    "norm_num_groups": 32,
    "time_embedding_type": "positional",
}


@dataclass(frozen=True)
class ModelConfig:
    """The UNet's architecture (labml's defaults, except n_channels=32 as in the tutorial)."""

    n_channels: int = 32  # width of the first feature map; the time embedding is 4x this
    ch_mults: tuple[int, ...] = (1, 2, 2, 4)  # one per resolution; each halves the image side after the first
    is_attn: tuple[bool, ...] = (
        False,
        False,
        True,
        True,
    )  # self-attention at each resolution (middle: always)
    n_blocks: int = 2  # residual blocks per resolution on the way down (one more on the way up)
    compound: bool = (
        True  # labml: widths compound (32, 64, 128, 512); False: n_channels * mult (32, 64, 64, 128)
    )
    dropout: float = 0.1  # inside every residual block (labml's fixed 0.1)
    image_channels: int = 3  # 3 for RGB, 1 for greyscale
    # which network: labml's UNet, or a diffusers UNet2DModel (block_out_channels = n_channels * ch_mults,
    # AttnDown/UpBlock2D where is_attn, layers_per_block = n_blocks, the rest DDPM_UNET_FAMILY)
    arch: str = "labml"

    def __post_init__(self) -> None:
        # JSON gives lists; tuples keep the config hashable (it keys the FLOP cache) and comparable.
        object.__setattr__(self, "ch_mults", tuple(int(m) for m in self.ch_mults))
        object.__setattr__(self, "is_attn", tuple(bool(a) for a in self.is_attn))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ch_mults"], d["is_attn"] = list(self.ch_mults), list(self.is_attn)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(
                f"Unknown model setting(s) {', '.join(unknown)}: expected some of {', '.join(sorted(known))}."
            )
        return cls(**d)

    def min_divisor(self) -> int:
        """The image side must be a multiple of this: the UNet halves it len(ch_mults) - 1 times."""
        return 2 ** (len(self.ch_mults) - 1)

    def level_channels(self) -> list[int]:
        """Feature-map width at each resolution, top to bottom."""
        return level_channels(self.n_channels, self.ch_mults, self.compound)

    def validate(self) -> ModelConfig:
        """Raise ConfigError with a message that says what to change; return self."""
        if len(self.ch_mults) == 0 or len(self.ch_mults) != len(self.is_attn):
            raise ConfigError(
                f"ch_mults and is_attn need one entry per resolution, got {len(self.ch_mults)} and {len(self.is_attn)}."
            )
        if self.n_channels < 1 or self.n_blocks < 1 or self.image_channels < 1 or min(self.ch_mults) < 1:
            raise ConfigError(
                "n_channels, n_blocks, image_channels and every channel multiplier must be at least 1."
            )
        widths = [self.n_channels, *self.level_channels()]
        if any(w % N_GROUPS for w in widths):
            raise ConfigError(
                f"Every feature-map width must be a multiple of {N_GROUPS} (GroupNorm groups), got {widths}."
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must lie in [0, 1), got {self.dropout}.")
        if self.arch not in ARCHS:
            raise ConfigError(f"Unknown model architecture {self.arch!r}: use one of {', '.join(ARCHS)}.")
        if self.arch == "diffusers" and self.compound:
            raise ConfigError("A diffusers UNet's widths do not compound: set compound to false.")
        return self


# what the small presets share: one block per resolution, widths that do not compound, no dropout
_LIGHT: dict = dict(n_channels=32, n_blocks=1, compound=False, dropout=0.0)

PRESETS: dict[str, ModelConfig] = {
    # The tutorial's UNet(n_channels=32) with labml's defaults: 42,253,539 parameters.
    "tutorial": ModelConfig(),
    # The tutorial's shape, but widths that do not compound and one block per resolution: ~4.0M parameters.
    "small": ModelConfig(**_LIGHT, ch_mults=(1, 2, 4, 4), is_attn=(False, False, False, True)),
    # Narrow everywhere, attention only in the middle (4x4): ~0.79M parameters.
    "tiny": ModelConfig(**_LIGHT, ch_mults=(1, 1, 1, 2), is_attn=(False, False, False, False)),
    # google/ddpm-cifar10-32 (Ho et al. 2020's CIFAR-10 network): block_out_channels (128, 256, 256, 256),
    # two blocks per resolution, attention at 16x16 and in the middle; 35.7M parameters. Dropout 0.1 as the
    # paper trained it (its config.json leaves dropout out: inference does not use it).
    "ddpm-cifar10": ModelConfig(
        n_channels=128,
        ch_mults=(1, 2, 2, 2),
        is_attn=(False, True, False, False),
        n_blocks=2,
        compound=False,
        dropout=0.1,
        arch="diffusers",
    ),
    # The same family at CPU size: two resolutions (attention at the lower one), one block each.
    "diffusers-tiny": ModelConfig(
        n_channels=32,
        ch_mults=(1, 2),
        is_attn=(False, True),
        n_blocks=1,
        compound=False,
        dropout=0.0,
        arch="diffusers",
    ),
}

PRESET_NOTES: dict[str, str] = {
    "tutorial": "The article's UNet exactly: 42.3M parameters, 6.0 GFLOP per 32x32 image per training step; "
    "about 30 img/s on a 2-core CPU, so use a GPU.",
    "small": "4.0M parameters, 1.5 GFLOP per 32x32 training image; about 120 img/s on a 2-core CPU.",
    "tiny": "0.79M parameters, 0.73 GFLOP per 32x32 training image; about 190 img/s on a 2-core CPU: "
    "simple shapes within minutes.",
    "ddpm-cifar10": "The DDPM paper's CIFAR-10 UNet as diffusers builds it (google/ddpm-cifar10-32): "
    "35.7M parameters; exports as a diffusers pipeline and starts from that model's weights. "
    "Needs the diffusers extra and a GPU.",
    "diffusers-tiny": "A tiny diffusers UNet2DModel of the same family (0.74M parameters): exports as a "
    "diffusers pipeline; for trying that out on a CPU. Needs the diffusers extra.",
}


def get_preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"Unknown preset {name!r}: choose one of {', '.join(PRESETS)}.") from None


def _as_config(cfg: ModelConfig | str) -> ModelConfig:
    if isinstance(cfg, str):
        return get_preset(cfg)
    if isinstance(cfg, ModelConfig):
        return cfg
    raise TypeError(f"Expected a ModelConfig or a preset name, got {type(cfg).__name__}.")


def diffusers_unet_config(
    cfg: ModelConfig | str, image_size: int = 32, num_classes: int | None = None
) -> dict:
    """The UNet2DModel keyword arguments (its config.json) of a diffusers-architecture config: the one
    description the model is built, exported and compared from. A class-conditional model gets
    num_classes + 1 embedding rows, the last one the null class (as in this app's own UNet)."""
    cfg = _as_config(cfg).validate()
    if cfg.arch != "diffusers":
        raise ConfigError(f"This model is DDPM Studio's own UNet ({cfg.arch}), not a diffusers UNet2DModel.")
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in cfg.is_attn)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.is_attn))
    return {
        **DDPM_UNET_FAMILY,
        "block_out_channels": tuple(cfg.level_channels()),
        "down_block_types": down,
        "up_block_types": up,
        "layers_per_block": cfg.n_blocks,
        "dropout": cfg.dropout,
        "in_channels": cfg.image_channels,
        "out_channels": cfg.image_channels,
        "sample_size": int(image_size),
        "num_class_embeds": None if num_classes is None else int(num_classes) + 1,
    }


def _diffusers_unet(cfg: ModelConfig, num_classes: int | None) -> nn.Module:
    from ddpm_gui.models.diffusers_unet import DiffusersUNet

    if num_classes is not None and num_classes < 1:
        raise ConfigError(f"num_classes must be at least 1 (or None), got {num_classes}.")
    unet_config = diffusers_unet_config(cfg, num_classes=num_classes)
    try:
        return DiffusersUNet.from_config(unet_config, null_class=num_classes)
    except ConfigError as exc:  # the extra is not installed: say which preset wanted it
        raise ConfigError(f"This preset builds a diffusers UNet2DModel. {exc}") from None


def build_model(cfg: ModelConfig | str, num_classes: int | None = None) -> nn.Module:
    """A freshly initialised UNet for a config or preset name (class-conditional when num_classes is set):
    this app's UNet, or for a diffusers-architecture preset a DiffusersUNet (same calling convention)."""
    cfg = _as_config(cfg).validate()
    if cfg.arch == "diffusers":
        return _diffusers_unet(cfg, num_classes)
    return UNet(
        image_channels=cfg.image_channels,
        n_channels=cfg.n_channels,
        ch_mults=cfg.ch_mults,
        is_attn=cfg.is_attn,
        n_blocks=cfg.n_blocks,
        num_classes=num_classes,
        compound=cfg.compound,
        dropout=cfg.dropout,
    )


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def check_image_size(cfg: ModelConfig | str, image_size: int) -> None:
    """Raise ConfigError if the UNet cannot halve `image_size` as often as its depth needs."""
    cfg = _as_config(cfg)
    div = cfg.min_divisor()
    if not isinstance(image_size, int) or image_size < div or image_size % div:
        lower = max(div, (image_size // div) * div) if isinstance(image_size, int) else div
        hint = f"{lower} or {lower + div}"
        raise ConfigError(
            f"Image size {image_size} does not fit this model: its {len(cfg.ch_mults)} resolutions halve the image "
            f"{len(cfg.ch_mults) - 1} times, so the size must be a multiple of {div} (for example {hint})."
        )


_FLOPS_CACHE: dict[tuple, dict[str, int]] = {}


def _model_config(model: nn.Module) -> ModelConfig:
    if not isinstance(model, UNet):
        raise TypeError(
            f"flops_per_image needs a ModelConfig, a preset name or this app's UNet, got {type(model).__name__}."
        )
    return ModelConfig(**model.hparams)


def flops_per_image(cfg_or_model: ModelConfig | str | UNet, image_size: int = 32) -> dict[str, int]:
    """FLOPs of one image (as torch's FlopCounterMode counts them: 2 per multiply-add) for a forward pass and
    for a training step (forward + backward). Counted on a batch of 2 on the meta device (shapes only, no
    arithmetic, no memory), divided by 2; cached per (config, size). A class embedding adds no FLOPs.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    cfg = cfg_or_model if isinstance(cfg_or_model, ModelConfig | str) else _model_config(cfg_or_model)
    cfg = _as_config(cfg)
    key = (cfg, int(image_size))
    if key not in _FLOPS_CACHE:
        check_image_size(cfg, image_size)
        with torch.device("meta"):
            model = build_model(cfg)
            x = torch.zeros(2, cfg.image_channels, image_size, image_size)
            t = torch.zeros(2, dtype=torch.long)
        # The math backend spells attention as matmuls the counter knows (it does not count the fused CPU kernel).
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            out = model(x, t)
            fwd = counter.get_total_flops()
            out.sum().backward()
            total = counter.get_total_flops()
        _FLOPS_CACHE[key] = {"forward": fwd // 2, "train": total // 2}
    return dict(_FLOPS_CACHE[key])


def benchmark(
    cfg: ModelConfig | str, batch_size: int = 64, image_size: int = 32, warmup: int = 3, iters: int = 8
) -> float:
    """Training throughput in images/s: fwd + bwd + AdamW step, median over `iters` after `warmup` steps."""
    import statistics
    import time

    import torch.nn.functional as F

    cfg = _as_config(cfg)
    torch.manual_seed(0)
    model = build_model(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    x0 = torch.rand(batch_size, cfg.image_channels, image_size, image_size) * 2 - 1
    times = []
    for _ in range(warmup + iters):
        start = time.perf_counter()
        t = torch.randint(0, 100, (batch_size,))
        noise = torch.randn_like(x0)
        loss = F.mse_loss(model(0.6 * x0 + 0.8 * noise, t), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
    return batch_size / statistics.median(times[warmup:])
