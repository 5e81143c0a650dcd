"""The training configuration: one commented dataclass, validated before anything runs."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace

from ddpm_gui.core.diffusion import PREDICTIONS
from ddpm_gui.core.schedule import ScheduleConfig
from ddpm_gui.errors import ConfigError

CONFIG_VERSION = 1  # bump when a field changes meaning; older run folders are migrated in from_dict


@dataclass
class TrainConfig:
    # --- data
    data: str = "builtin"  # builtin | builtin:N | a folder | a .parquet/.arrow file | a Hub id (cifar10)
    image_size: int = 32  # images are resized to image_size x image_size
    data_limit: int | None = None  # use only the first N images
    # --- model
    preset: str = "tiny"  # tutorial (the article's 42M UNet) | small | tiny
    conditional: bool = False  # class-conditional (needs labels), with classifier-free guidance
    cond_drop: float = 0.1  # fraction of training examples whose class is dropped (the "null" class)
    # --- diffusion
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)  # the tutorial's by default
    prediction: str = "eps"  # eps (the tutorial) | v (needed for a zero-terminal-SNR schedule)
    # --- optimisation (the tutorial: AdamW, lr 3e-4, batch 128)
    lr: float = 3e-4
    batch_size: int = 128
    steps: int = 2000
    weight_decay: float = 0.01  # AdamW's default
    warmup_steps: int = 100  # linear lr warm-up; stabilises the first steps of a fresh model
    grad_clip: float = 1.0  # max gradient norm; 0 disables
    ema_decay: float = 0.999  # EMA of the weights, used for samples; 0 disables
    amp: bool = True  # bf16 autocast on CUDA only (20x slower on this CPU, so never on CPU)
    device: str = "auto"  # auto (cuda, then mps, then cpu) | cpu | cuda | cuda:N | mps
    seed: int = 0
    # --- what the run shows and keeps
    log_every: int = 10  # read the loss every N steps (each read syncs the device)
    preview_every: int = 250  # sample a preview grid every N steps; 0 disables
    preview_n: int = 16
    preview_steps: int = 20  # DDIM steps for previews (0 = the full DDPM chain)
    checkpoint_every: int = 500  # steps; 0 disables step-based autosave
    checkpoint_minutes: float = 5.0  # also autosave every N minutes; 0 disables
    keep_checkpoints: int = 3  # rolling number of step checkpoints kept
    version: int = CONFIG_VERSION

    def validate(self) -> TrainConfig:
        """Raise ConfigError with a message that says what to change."""

        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(msg)

        def finite(name: str) -> float:
            v = getattr(self, name)
            need(isinstance(v, int | float) and math.isfinite(v), f"{name} must be a number, got {v!r}.")
            return float(v)

        need(isinstance(self.data, str) and self.data.strip() != "", "Choose a dataset (for example 'builtin').")
        need(
            isinstance(self.image_size, int) and 8 <= self.image_size <= 256,
            f"image_size must be a whole number from 8 to 256, got {self.image_size}.",
        )
        need(
            self.data_limit is None or (isinstance(self.data_limit, int) and self.data_limit >= 1),
            f"data_limit must be empty or at least 1, got {self.data_limit}.",
        )
        from ddpm_gui.models.presets import check_image_size, get_preset

        check_image_size(get_preset(self.preset), self.image_size)
        need(0.0 <= finite("cond_drop") < 1.0, f"cond_drop must lie in [0, 1), got {self.cond_drop}.")
        if not isinstance(self.schedule, ScheduleConfig):
            raise ConfigError("schedule must be a ScheduleConfig.")
        self.schedule.validate()
        need(self.prediction in PREDICTIONS, f"prediction must be one of {', '.join(PREDICTIONS)}, got {self.prediction!r}.")
        lr = finite("lr")
        need(0.0 < lr <= 1.0, f"The learning rate must be positive and at most 1 (the tutorial uses 3e-4), got {lr}.")
        need(
            isinstance(self.batch_size, int) and 1 <= self.batch_size <= 65536,
            f"The batch size must be a whole number of at least 1, got {self.batch_size}.",
        )
        need(
            isinstance(self.steps, int) and 1 <= self.steps <= 100_000_000,
            f"The number of training steps must be at least 1, got {self.steps}.",
        )
        need(0.0 <= finite("weight_decay") < 1.0, f"weight_decay must lie in [0, 1), got {self.weight_decay}.")
        need(isinstance(self.warmup_steps, int) and self.warmup_steps >= 0, "warmup_steps must be 0 or more.")
        need(finite("grad_clip") >= 0.0, f"grad_clip must be 0 (off) or positive, got {self.grad_clip}.")
        need(0.0 <= finite("ema_decay") < 1.0, f"ema_decay must lie in [0, 1) (0 turns EMA off), got {self.ema_decay}.")
        need(isinstance(self.seed, int) and self.seed >= 0, f"seed must be a whole number >= 0, got {self.seed}.")
        for name in ("log_every", "preview_every", "checkpoint_every", "preview_steps"):
            v = getattr(self, name)
            need(isinstance(v, int) and v >= 0, f"{name} must be a whole number >= 0, got {v!r}.")
        need(self.log_every >= 1, "log_every must be at least 1.")
        need(isinstance(self.preview_n, int) and 1 <= self.preview_n <= 256, "preview_n must be from 1 to 256.")
        need(finite("checkpoint_minutes") >= 0.0, "checkpoint_minutes must be 0 (off) or positive.")
        need(isinstance(self.keep_checkpoints, int) and self.keep_checkpoints >= 1, "keep_checkpoints must be at least 1.")
        dev = self.device
        need(
            isinstance(dev, str) and (dev in ("auto", "cpu", "cuda", "mps") or dev.startswith("cuda:")),
            f"device must be auto, cpu, cuda, cuda:N or mps, got {dev!r}.",
        )
        if self.schedule.rescale_zero_snr and self.prediction == "eps":
            raise ConfigError(
                "A zero-terminal-SNR schedule leaves no signal at the last step, where predicting the noise "
                "cannot recover the image: use prediction 'v' with it."
            )
        return self

    def to_dict(self) -> dict:
        d = asdict(self)
        d["schedule"] = self.schedule.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """Read a config written by this or an older version; refuse a newer one clearly."""
        version = int(d.get("version", 1))
        if version > CONFIG_VERSION:
            raise ConfigError(
                f"This run was written by a newer DDPM Studio (config version {version}, this one reads up to "
                f"{CONFIG_VERSION}): update DDPM Studio to open it."
            )
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        if isinstance(kw.get("schedule"), dict):
            kw["schedule"] = ScheduleConfig.from_dict(kw["schedule"])
        kw["version"] = CONFIG_VERSION
        return cls(**kw)

    def replace(self, **changes) -> TrainConfig:
        return replace(self, **changes)
