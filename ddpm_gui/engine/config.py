"""The training configuration: one commented dataclass, validated before anything runs."""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, fields, replace

from ddpm_gui.core.spec import PREDICTIONS, ScheduleConfig
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


@dataclass(frozen=True)
class Setting:
    """How one TrainConfig field is offered to a person: its `ddpm-gui train` option, its Train-tab label,
    its help line (also the widget's tooltip), its range, and whether a resumed run may change it. The
    CLI's options, the Train tab's rows and the TOML files are all generated from these."""

    flag: str  # the `ddpm-gui train` option
    label: str  # the Train tab's label
    help: str
    lo: float | None = None  # smallest accepted value (numbers)
    hi: float | None = None  # largest accepted value (numbers)
    choices: tuple[str, ...] = ()
    negative: str | None = None  # true/false settings: the option that sets False
    # Safe to change when a run is resumed: it changes how the run goes on, not what the saved weights
    # and optimizer state mean (a new learning rate after a NaN, more steps, another device).
    resumable: bool = False


def setting(default, flag: str, label: str, help: str, **kw):
    """A dataclass field of TrainConfig with its Setting; `default` may be a zero-argument factory."""
    md = {"setting": Setting(flag, label, help, **kw)}
    if callable(default):
        return field(default_factory=default, metadata=md)
    return field(default=default, metadata=md)


LR_SCHEDULES = ("constant", "cosine")  # the learning rate after the warm-up
_MANY = 100_000_000  # the upper bound of step counts and intervals


@dataclass
class TrainConfig:
    # fmt: off
    # --- data
    data: str = setting("builtin", "--data", "Data",
                        "builtin, builtin:N, a folder of images, a .parquet/.arrow file or a Hub id")
    image_size: int = setting(32, "--image-size", "Image size", "train at NxN pixels (images are resized)",
                              lo=8, hi=256)
    data_limit: int | None = setting(None, "--limit", "Use only", "use only the first N images (empty: all)", lo=1)
    # --- model
    preset: str = setting("tiny", "--preset", "Model",
                          "model preset: tutorial (the article's 42M UNet), small, tiny; ddpm-cifar10 (the DDPM "
                          "paper's CIFAR-10 UNet) and diffusers-tiny build a diffusers UNet2DModel")
    # fine-tuning: a fresh run starts from these weights (a resumed run continues its own checkpoint)
    init_from: str = setting("", "--init-from", "Start from weights",
                             "start from a trained model's weights: a diffusers model folder, a run folder or "
                             "a checkpoint (empty: random weights)")
    conditional: bool = setting(False, "--conditional", "Class-conditional",
                                "class-conditional (needs labels), with classifier-free guidance",
                                negative="--unconditional")
    # fraction of training examples whose class is dropped: the "null" class that guidance needs
    cond_drop: float = setting(0.1, "--cond-drop", "Class dropout",
                               "fraction of examples trained without their class", lo=0.0, hi=0.99)
    # --- diffusion (the CLI's --schedule-kind, --T, --beta-start, --beta-end, --zero-snr edit the schedule)
    schedule: ScheduleConfig = setting(ScheduleConfig, "--schedule", "Noise schedule",
                                       "a schedule preset (tutorial, ddpm-paper, cosine, tutorial-zero-snr)")
    # v is needed where a zero-terminal-SNR schedule leaves no signal at t = T
    prediction: str = setting("eps", "--prediction", "Prediction",
                              "what the network predicts: the noise (eps, the tutorial) or v",
                              choices=PREDICTIONS)
    # --- optimisation (the tutorial: AdamW, lr 3e-4, batch 128)
    lr: float = setting(3e-4, "--lr", "Learning rate", "peak learning rate (AdamW)",
                        lo=1e-8, hi=1.0, resumable=True)
    batch_size: int = setting(128, "--batch-size", "Batch size", "images per training step",
                              lo=1, hi=65536, resumable=True)
    # a small GPU reaches the tutorial's batch: each step's batch (the same images, t and noise) is split
    # into K micro-batches whose gradients add up before the one optimizer step, so K changes memory, not
    # the result (up to float rounding), and a resumed run may change it
    accumulate: int = setting(1, "--accumulate", "Accumulate",
                              "split each step's batch into K micro-batches run one after another "
                              "(the same step in less GPU memory; the batch size must divide by K)",
                              lo=1, hi=65536, resumable=True)
    steps: int = setting(2000, "--steps", "Steps", "total training steps", lo=1, hi=_MANY, resumable=True)
    weight_decay: float = setting(0.01, "--weight-decay", "Weight decay", "AdamW weight decay",
                                  lo=0.0, hi=0.99, resumable=True)
    # a linear warm-up stabilises the first steps of a fresh model
    warmup_steps: int = setting(100, "--warmup", "Warm-up", "linear learning-rate warm-up steps",
                                lo=0, hi=_MANY, resumable=True)
    # a short run ends better with the learning rate brought down to zero than cut off at its peak: the last
    # steps then refine rather than jump about (the cosine decay of Loshchilov & Hutter 2017)
    lr_schedule: str = setting("constant", "--lr-schedule", "LR decay to zero",
                               "the learning rate after the warm-up: constant (the tutorial) or cosine "
                               "(falls to zero at the last step)", choices=LR_SCHEDULES, resumable=True)
    grad_clip: float = setting(1.0, "--grad-clip", "Clip gradients", "clip the gradient norm to this (0 = off)",
                               lo=0.0, hi=1e6, resumable=True)
    # Min-SNR-gamma loss weighting (Hang et al. 2023): the nearly clean timesteps, whose loss is small but
    # whose gradients pull against the noisy ones, count for less; training converges several times faster
    min_snr_gamma: float = setting(0.0, "--min-snr-gamma", "Min-SNR gamma",
                                   "weight each timestep's loss by min(SNR, gamma) (Min-SNR weighting; 5 is "
                                   "the paper's choice; 0 = off: every timestep alike, as the tutorial)",
                                   lo=0.0, hi=1e4, resumable=True)
    # the EMA of the weights is what samples use: most of the quality of published DDPM samples
    ema_decay: float = setting(0.999, "--ema", "EMA decay", "EMA decay of the weights used for samples (0 = off)",
                               lo=0.0, hi=0.99999, resumable=True)
    # chosen by the GPU (engine/device.py choose_precision): autocast on a CPU is far slower than fp32
    amp: bool = setting(True, "--amp", "Mixed precision",
                        "mixed precision on CUDA GPUs: bf16 from Ampere (sm 8.0) on, fp16 with loss scaling on "
                        "older ones (T4, V100, RTX 20xx); the CPU and MPS train in fp32",
                        negative="--no-amp", resumable=True)
    # a training step of a small UNet is about a thousand small kernels: on a GPU their launches, not the
    # arithmetic, set the pace, and torch.compile fuses them. Off by default: the first steps then take
    # minutes to compile, and on this project's 2-core CPU compiled training measured no faster.
    compile_model: bool = setting(False, "--compile", "Compile the model",
                                  "torch.compile the model for training (for GPUs; the first steps compile for a "
                                  "minute or more; falls back to the plain model if it cannot compile)",
                                  negative="--no-compile", resumable=True)
    device: str = setting("auto", "--device", "Device",
                          "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps", resumable=True)
    # torch's CPU kernels wait for their slowest thread: a core held by another program slows every step
    threads: int = setting(0, "--threads", "CPU threads",
                           "CPU threads for torch (0 = auto: the cores other programs leave free, "
                           "re-checked while training)", lo=0, hi=1024, resumable=True)
    seed: int = setting(0, "--seed", "Seed", "random seed (weights, batches, noise)", lo=0, hi=2**63 - 1)
    # --- what the run shows and keeps
    # each loss read syncs the device, so the loss is read every N steps, not every step
    log_every: int = setting(10, "--log-every", "Log every", "read the loss and log it every N steps",
                             lo=1, hi=_MANY, resumable=True)
    preview_every: int = setting(250, "--preview-every", "Preview every",
                                 "sample a preview grid every N steps (0 = off)", lo=0, hi=_MANY, resumable=True)
    preview_n: int = setting(16, "--preview-n", "Preview images", "images in a preview grid",
                             lo=1, hi=256, resumable=True)
    preview_steps: int = setting(20, "--preview-steps", "Preview steps",
                                 "DDIM steps of a preview (0 = the full DDPM chain)", lo=0, hi=_MANY, resumable=True)
    checkpoint_every: int = setting(500, "--checkpoint-every", "Checkpoint every",
                                    "save a checkpoint every N steps (0 = off)", lo=0, hi=_MANY, resumable=True)
    checkpoint_minutes: float = setting(5.0, "--checkpoint-minutes", "Checkpoint minutes",
                                        "also save one every M minutes (0 = off)", lo=0.0, hi=1e7, resumable=True)
    keep_checkpoints: int = setting(3, "--keep", "Keep checkpoints", "rolling number of checkpoints kept",
                                    lo=1, hi=1_000_000, resumable=True)
    # the loss on images the run never trains on (engine/validation.py). Whether images are held out is
    # fixed when a run starts (by val_every > 0 then): turning it on mid-run would score images already seen
    val_every: int = setting(0, "--val-every", "Validate every",
                             "validation loss on held-out images every N steps and at each checkpoint "
                             "(0 = off; the images are held out when the run starts)",
                             lo=0, hi=_MANY, resumable=True)
    val_size: int = setting(256, "--val-size", "Validation images",
                            "hold out at most N images (and at most 1 in 20 of the data) for validation",
                            lo=1, hi=1_000_000)
    tensorboard: bool = setting(False, "--tensorboard", "TensorBoard",
                                "also write a TensorBoard log to the run's tb/ folder (needs the "
                                "tensorboard package: pip install 'ddpm-gui[tensorboard]')",
                                negative="--no-tensorboard", resumable=True)
    # fmt: on
    version: int = CONFIG_VERSION

    def validate(self) -> TrainConfig:
        """Raise ConfigError with a message that says what to change (never another exception, whatever
        the field values: tests/test_properties.py feeds it arbitrary ones). Ranges come from SETTINGS."""

        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(msg)

        need(
            isinstance(self.data, str) and self.data.strip() != "",
            "Choose a dataset (for example 'builtin').",
        )
        for name, s in SETTINGS.items():
            _check_value(name, s, getattr(self, name))
        from ddpm_gui.models.presets import PRESETS, check_image_size, get_preset

        need(
            isinstance(self.preset, str) and self.preset in PRESETS,
            f"Unknown preset {self.preset!r}: choose one of {', '.join(PRESETS)}.",
        )
        check_image_size(get_preset(self.preset), self.image_size)
        if not isinstance(self.schedule, ScheduleConfig):
            raise ConfigError("schedule must be a ScheduleConfig.")
        self.schedule.validate()
        need(
            self.batch_size % self.accumulate == 0,
            f"Batch size {self.batch_size} does not divide into {self.accumulate} micro-batches (--accumulate): "
            f"choose a batch size that is a multiple of {self.accumulate} (each optimizer step sees the whole "
            "batch; a micro-batch is batch size / accumulate images).",
        )
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
        _check_version(d.get("version", 1), "This run")
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        if isinstance(kw.get("schedule"), dict):
            kw["schedule"] = ScheduleConfig.from_dict(kw["schedule"])
        kw["version"] = CONFIG_VERSION
        return cls(**kw)

    def replace(self, **changes) -> TrainConfig:
        return replace(self, **changes)


# name -> Setting, in the order of the dataclass: what the CLI, the Train tab and TOML files are made from
SETTINGS: dict[str, Setting] = {
    f.name: f.metadata["setting"] for f in fields(TrainConfig) if "setting" in f.metadata
}
# the Python type of each setting (int, float, str or bool; None-able ones by their non-None type)
SETTING_TYPES: dict[str, type] = {
    name: {"int": int, "float": float, "str": str, "bool": bool}.get(
        str(f.type).split(" |")[0], ScheduleConfig
    )
    for name, f in ((f.name, f) for f in fields(TrainConfig))
    if name in SETTINGS
}
RESUMABLE = frozenset(name for name, s in SETTINGS.items() if s.resumable)


def _check_version(version, source: str) -> None:
    """A config's version field: damaged, or written by a newer DDPM Studio, is a clear ConfigError."""
    if not is_int(version) or version < 1:
        raise ConfigError(f"{source} has a damaged config version field ({version!r}).")
    if version > CONFIG_VERSION:
        raise ConfigError(
            f"{source} was written by a newer DDPM Studio (config version {version}, this one reads up to "
            f"{CONFIG_VERSION}): update DDPM Studio to open it."
        )


def lr_at(cfg: TrainConfig, step: int) -> float:
    """The learning rate of step `step` (0-based): a linear warm-up to cfg.lr over cfg.warmup_steps, then
    cfg.lr_schedule: constant, or a cosine from cfg.lr down to zero at the last step (cfg.steps - 1)."""
    w = cfg.warmup_steps
    if w > 0 and step < w:
        return cfg.lr * ((step + 1) / w)
    if cfg.lr_schedule == "cosine":
        span = max(1, cfg.steps - 1 - w)
        frac = min(1.0, max(0.0, (step - w) / span))
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * frac))
    return cfg.lr


def _check_value(name: str, s: Setting, v) -> None:
    """One setting's type and range, as a ConfigError that names the option and the range."""
    kind = SETTING_TYPES[name]
    what = f"{s.label} ({s.flag})"
    if v is None and name == "data_limit":
        return
    if kind is bool:
        ok = isinstance(v, bool)
        expected = "true or false"
    elif kind is int:
        ok = is_int(v) and (s.lo is None or v >= s.lo) and (s.hi is None or v <= s.hi)
        expected = "a whole number" + _range_text(s)
    elif kind is float:
        ok = is_number(v) and (s.lo is None or v >= s.lo) and (s.hi is None or v <= s.hi)
        expected = "a number" + _range_text(s)
    elif kind is str:
        ok = isinstance(v, str) and (not s.choices or v in s.choices)
        expected = "one of " + ", ".join(s.choices) if s.choices else "text"
    else:
        return
    if not ok:
        raise ConfigError(f"{what} must be {expected}, got {v!r}.")


def _range_text(s: Setting) -> str:
    if s.lo is not None and s.hi is not None:
        return f" from {s.lo:g} to {s.hi:g}"
    if s.lo is not None:
        return f" of at least {s.lo:g}"
    return ""


# ----------------------------------------------------------------------------- TOML files
# A recipe file, the file given to `ddpm-gui train --config`, and the record of what a run used (its
# config.toml) are one format: TrainConfig fields by name, the schedule as a preset name or a [schedule] table.

RUN_CONFIG = "config.toml"
LEGACY_RUN_CONFIG = "config.json"  # run folders written before config.toml; still read


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)  # shortest round-trip form; TOML reads 1e-05 and 0.0003 alike
    if isinstance(v, str):
        # JSON's escapes are all valid in a TOML basic string; TOML also refuses a raw DEL (U+007F)
        return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")
    raise ConfigError(f"Cannot write {v!r} to a TOML file.")


def config_toml(values: TrainConfig | dict, comment: str = "") -> str:
    """TOML text of a whole config or of a partial (a dict of TrainConfig fields); tomllib reads it back
    with `read_config_toml`. Unset values (None) are left out: they mean the default."""
    d = values.to_dict() if isinstance(values, TrainConfig) else dict(values)
    version = d.pop("version", None)
    schedule = d.pop("schedule", None)
    lines = [f"# {line}" for line in comment.splitlines()]
    if version is not None:
        lines.append(f"version = {int(version)}")
    lines += [f"{k} = {_toml_value(v)}" for k, v in d.items() if v is not None and k in SETTINGS]
    if isinstance(schedule, str):
        lines.append(f"schedule = {_toml_value(schedule)}")
    elif schedule is not None:
        sd = schedule.to_dict() if isinstance(schedule, ScheduleConfig) else schedule
        lines += ["", "[schedule]"] + [f"{k} = {_toml_value(v)}" for k, v in sd.items()]
    return "\n".join(lines) + "\n"


def parse_config_toml(text: str, source: str = "the config file") -> dict:
    """The TrainConfig fields a TOML text sets (a partial, typed: the schedule a ScheduleConfig). An unknown
    name is refused (a misspelt setting must not be silently ignored); values are checked by validate()."""
    import tomllib

    try:
        d = tomllib.loads(text)
    except RecursionError:
        raise ConfigError(f"{source} is nested too deeply to be a settings file.") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"{source} is not valid TOML ({exc}): fix it, or save the settings again."
        ) from None
    _check_version(d.pop("version", CONFIG_VERSION), source)
    unknown = sorted(set(d) - set(SETTINGS))
    if unknown:
        raise ConfigError(
            f"{source}: unknown setting(s) {', '.join(unknown)}; known settings are {', '.join(SETTINGS)}."
        )
    out = dict(d)
    if "schedule" in out:
        from ddpm_gui.core.spec import SCHEDULE_PRESETS

        sch = out["schedule"]
        if isinstance(sch, str):
            if sch not in SCHEDULE_PRESETS:
                raise ConfigError(
                    f"{source}: unknown schedule {sch!r}: choose one of {', '.join(SCHEDULE_PRESETS)}."
                )
            out["schedule"] = SCHEDULE_PRESETS[sch]
        elif isinstance(sch, dict):
            wrong = sorted(set(sch) - set(ScheduleConfig.__dataclass_fields__))
            if wrong:
                raise ConfigError(
                    f"{source}: unknown [schedule] key(s) {', '.join(wrong)}; known keys are "
                    f"{', '.join(ScheduleConfig.__dataclass_fields__)}."
                )
            try:
                out["schedule"] = ScheduleConfig.from_dict(sch)
            except TypeError as exc:
                raise ConfigError(f"{source}: the [schedule] table is invalid ({exc}).") from None
        else:
            raise ConfigError(f"{source}: schedule must be a preset name or a [schedule] table.")
    return out


def read_config_toml(path) -> dict:
    """The TrainConfig partial in a TOML file, or a ConfigError that says what is wrong with it."""
    from pathlib import Path

    p = Path(path).expanduser()
    try:
        text = p.read_bytes().decode("utf-8")
    except IsADirectoryError:
        raise ConfigError(f"{p} is a folder, not a settings file: give a .toml file.") from None
    except FileNotFoundError:
        raise ConfigError(f"{p} does not exist: give a .toml settings file.") from None
    except OSError as exc:
        raise ConfigError(f"{p} cannot be read ({exc.strerror or exc}).") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p} is not a text (UTF-8) TOML file.") from None
    return parse_config_toml(text, str(p))


def load_run_config(run_dir) -> TrainConfig:
    """The validated TrainConfig of a run folder (its config.toml, or the config.json of an older run), or
    a DDPMError that says what is wrong: not a run folder, a damaged file, a newer version. An older config
    loads with defaults for the fields it lacks."""
    from pathlib import Path

    from ddpm_gui.errors import CheckpointError

    folder = Path(run_dir).expanduser()
    path = folder / RUN_CONFIG
    legacy = folder / LEGACY_RUN_CONFIG
    if not path.is_file() and not legacy.is_file():
        for p in (path, legacy):
            if p.exists() or p.is_symlink():
                raise CheckpointError(f"{p} is not a regular file: restore the run's settings file.")
        raise CheckpointError(
            f"{folder} is not a DDPM Studio run folder (no {RUN_CONFIG}): nothing to resume."
        )
    if path.is_file():
        try:
            return TrainConfig().replace(**read_config_toml(path)).validate()
        except ConfigError as exc:
            raise ConfigError(f"{exc} (in the run's {RUN_CONFIG})") from None
    try:
        d = json.loads(legacy.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise CheckpointError(f"{legacy} cannot be read ({exc.strerror or exc}).") from exc
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CheckpointError(
            f"{legacy} is damaged ({str(exc)[:120]}): restore it, or start a new run folder."
        ) from None
    try:
        return TrainConfig.from_dict(d).validate()
    except ConfigError as exc:
        raise ConfigError(f"{legacy}: {exc}") from None
    except (TypeError, ValueError) as exc:  # a field of an impossible type in a hand-edited file
        raise ConfigError(f"{legacy} holds an invalid setting ({exc}).") from None
