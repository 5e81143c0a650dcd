"""The training configuration: one commented dataclass, validated before anything runs."""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, fields, replace

from ddpm_gui.core.diffusion import PREDICTIONS
from ddpm_gui.core.schedule import ScheduleConfig
from ddpm_gui.errors import ConfigError

CONFIG_VERSION = 1  # bump when a field changes meaning; older run folders are migrated in from_dict


def is_int(v) -> bool:
    """A whole number (a bool is not one, though Python says it is an int)."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v) -> bool:
    """A finite real number (not a bool, not an int too large for a float)."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:
        return False


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
        """Raise ConfigError with a message that says what to change (never another exception, whatever
        the field values: tests/test_properties.py feeds it arbitrary ones)."""

        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(msg)

        def finite(name: str, label: str | None = None) -> float:
            v = getattr(self, name)
            need(is_number(v), f"{label or name} must be a (finite) number, got {v!r}.")
            return float(v)

        def whole(name: str, lo: int, hi: int | None = None, what: str | None = None) -> int:
            v = getattr(self, name)
            ok = is_int(v) and v >= lo and (hi is None or v <= hi)
            rng = f"from {lo} to {hi}" if hi is not None else f"of at least {lo}"
            need(ok, what or f"{name} must be a whole number {rng}, got {v!r}.")
            return v

        need(
            isinstance(self.data, str) and self.data.strip() != "",
            "Choose a dataset (for example 'builtin').",
        )
        whole(
            "image_size", 8, 256, f"image_size must be a whole number from 8 to 256, got {self.image_size!r}."
        )
        need(
            self.data_limit is None or (is_int(self.data_limit) and self.data_limit >= 1),
            f"data_limit must be empty or at least 1, got {self.data_limit!r}.",
        )
        from ddpm_gui.models.presets import PRESETS, check_image_size, get_preset

        need(
            isinstance(self.preset, str) and self.preset in PRESETS,
            f"Unknown preset {self.preset!r}: choose one of {', '.join(PRESETS)}.",
        )
        check_image_size(get_preset(self.preset), self.image_size)
        need(
            isinstance(self.conditional, bool),
            f"conditional must be true or false, got {self.conditional!r}.",
        )
        need(0.0 <= finite("cond_drop") < 1.0, f"cond_drop must lie in [0, 1), got {self.cond_drop}.")
        if not isinstance(self.schedule, ScheduleConfig):
            raise ConfigError("schedule must be a ScheduleConfig.")
        self.schedule.validate()
        need(
            isinstance(self.prediction, str) and self.prediction in PREDICTIONS,
            f"prediction must be one of {', '.join(PREDICTIONS)}, got {self.prediction!r}.",
        )
        lr = finite("lr", "The learning rate (lr)")
        need(
            0.0 < lr <= 1.0,
            f"The learning rate must be positive and at most 1 (the tutorial uses 3e-4), got {lr}.",
        )
        whole(
            "batch_size",
            1,
            65536,
            f"The batch size must be a whole number from 1 to 65536, got {self.batch_size!r}.",
        )
        whole(
            "steps",
            1,
            100_000_000,
            f"The number of training steps must be from 1 to 100,000,000, got {self.steps!r}.",
        )
        need(
            0.0 <= finite("weight_decay") < 1.0, f"weight_decay must lie in [0, 1), got {self.weight_decay}."
        )
        whole("warmup_steps", 0, 100_000_000)
        need(
            0.0 <= finite("grad_clip") <= 1e6, f"grad_clip must be 0 (off) or positive, got {self.grad_clip}."
        )
        need(
            0.0 <= finite("ema_decay") < 1.0,
            f"ema_decay must lie in [0, 1) (0 turns EMA off), got {self.ema_decay}.",
        )
        need(isinstance(self.amp, bool), f"amp must be true or false, got {self.amp!r}.")
        whole("seed", 0, 2**63 - 1, f"seed must be a whole number >= 0, got {self.seed!r}.")
        for name in ("log_every", "preview_every", "checkpoint_every", "preview_steps"):
            whole(name, 0, 100_000_000)
        need(self.log_every >= 1, "log_every must be at least 1.")
        whole("preview_n", 1, 256, "preview_n must be from 1 to 256.")
        need(0.0 <= finite("checkpoint_minutes") <= 1e7, "checkpoint_minutes must be 0 (off) or positive.")
        whole("keep_checkpoints", 1, 1_000_000, "keep_checkpoints must be at least 1.")
        dev = self.device
        need(
            isinstance(dev, str) and re.fullmatch(r"auto|cpu|cuda|mps|cuda:\d{1,3}", dev) is not None,
            f"device must be auto, cpu, cuda, cuda:N or mps, got {dev!r}.",
        )
        need(
            is_int(self.version) and 1 <= self.version <= CONFIG_VERSION,
            f"version must be a whole number from 1 to {CONFIG_VERSION}, got {self.version!r}.",
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
        """Read a config written by this or an older version (missing fields take their defaults, unknown
        ones are ignored); refuse a newer one clearly. Values are not checked here: call validate()."""
        if not isinstance(d, dict):
            raise ConfigError(f"A training config must be a JSON object, got {type(d).__name__}.")
        version = d.get("version", 1)
        if not is_int(version) or version < 1:
            raise ConfigError(f"The config has a damaged version field ({version!r}).")
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


def load_run_config(run_dir) -> TrainConfig:
    """The validated TrainConfig of a run folder (its config.json), or a DDPMError that says what is wrong:
    not a run folder, a damaged file, a newer version. An older config.json loads with defaults for the
    fields it lacks."""
    from pathlib import Path

    from ddpm_gui.errors import CheckpointError

    path = Path(run_dir).expanduser() / "config.json"
    if not path.is_file():
        raise CheckpointError(
            f"{path.parent} is not a DDPM Studio run folder (no config.json): nothing to resume."
        )
    try:
        d = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise CheckpointError(f"{path} cannot be read ({exc.strerror or exc}).") from exc
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CheckpointError(
            f"{path} is damaged ({str(exc)[:120]}): restore it, or start a new run folder."
        ) from None
    try:
        return TrainConfig.from_dict(d).validate()
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except (TypeError, ValueError) as exc:  # a field of an impossible type in a hand-edited file
        raise ConfigError(f"{path} holds an invalid setting ({exc}).") from None
