"""What describes a diffusion process, without torch: the noise schedule as a person edits it and the
prediction targets. Imported by the command line's parser and the training config, which must not pay for
importing torch (`ddpm-gui --help` and the window's first paint stay fast)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ddpm_gui.errors import ConfigError

# What the network predicts: the noise (the tutorial, DDPM) or v = sqrt(alpha_bar)*eps - sqrt(1-alpha_bar)*x0
# (Salimans & Ho 2022), which stays learnable where a zero-terminal-SNR schedule leaves no signal.
PREDICTIONS = ("eps", "v")


@dataclass(frozen=True)
class SamplerSpec:
    """A reverse-process sampler as the app offers it; its step function lives in core/diffusion.py."""

    name: str
    help: str
    strided: bool  # visits a chosen number of timesteps (`steps`), else every timestep of the chain
    takes_eta: bool = False  # uses StepOptions.eta (DDIM's noise scale)


# Adding a sampler: an entry here, its step function in diffusion.STEP_FUNCTIONS (or, when it keeps state from
# step to step, its solver class in solvers.MULTISTEP_SOLVERS), and its row in the Sample tab's form
# (qt/widgets.py); the CLI's --sampler choices and SampleConfig follow from this table.
SAMPLERS: dict[str, SamplerSpec] = {
    s.name: s
    for s in (
        SamplerSpec("ddpm", "ancestral: every timestep of the chain (the tutorial)", strided=False),
        SamplerSpec(
            "ddim",
            "DDIM: --steps evenly spaced timesteps; eta = 0 is deterministic",
            strided=True,
            takes_eta=True,
        ),
        SamplerSpec(
            "dpm++2m",
            "DPM-Solver++(2M): deterministic, second order, good images in 10-20 --steps",
            strided=True,
        ),
        SamplerSpec(
            "euler_a", "Euler ancestral (k-diffusion): --steps, fresh noise at every step", strided=True
        ),
    )
}

SCHEDULE_KINDS = ("linear", "cosine", "quadratic")
# diffusers' `beta_schedule` names -> the kind here with the same formula (squaredcos_cap_v2 is the cosine
# schedule with s = 0.008 and betas clipped at 0.999; scaled_linear is linear in sqrt(beta), our quadratic).
# A ScheduleConfig with float32=True then gives exactly the betas and alphas_cumprod of diffusers' scheduler.
DIFFUSERS_BETA_SCHEDULES = {"linear": "linear", "scaled_linear": "quadratic", "squaredcos_cap_v2": "cosine"}
DIFFUSERS_COSINE_S = 0.008  # the s of diffusers' squaredcos_cap_v2 (fixed there)
# The smallest beta accepted: below about 1e-16, 1 - beta rounds to 1 even in float64 and the posterior
# variance at t=0 becomes 0/0 = NaN (found by tests/test_properties.py); 1e-8 leaves a wide margin and is
# still 10,000x below the smallest beta in the DDPM paper.
BETA_MIN = 1e-8
# The largest: a beta of 1 leaves no signal after one step (alpha_bar = 0), and the quadratic schedule
# rounds betas just below 1 up to exactly 1 (sqrt, then square). 0.999 is the cosine schedule's own clip
# (Nichol & Dhariwal 2021).
BETA_MAX = 0.999


@dataclass(frozen=True)
class ScheduleConfig:
    """A noise schedule, as a person edits it."""

    kind: str = "linear"  # linear | cosine | quadratic
    T: int = 100  # number of diffusion steps; the tutorial uses 100, the DDPM paper 1000
    beta_start: float = 1e-4  # linear/quadratic only
    beta_end: float = 0.04  # linear/quadratic only (the DDPM paper: 0.02 at T=1000)
    cosine_s: float = 0.008  # cosine only: offset that keeps beta_1 from being too small
    rescale_zero_snr: bool = False  # rescale so alpha_bar_T = 0 exactly (Lin et al. 2023)
    # betas and alpha_bar computed in float32 with diffusers' own arithmetic (its schedulers do so), so that
    # a model trained with diffusers' DDPMScheduler is sampled with exactly the numbers it was trained on
    float32: bool = False

    def validate(self) -> ScheduleConfig:
        def real(
            v,
        ) -> bool:  # a finite number, not a bool (any other value is a ConfigError, never a TypeError)
            if isinstance(v, bool) or not isinstance(v, int | float):
                return False
            try:
                return math.isfinite(v)
            except OverflowError:  # an int too large for a float
                return False

        if not isinstance(self.kind, str) or self.kind not in SCHEDULE_KINDS:
            raise ConfigError(f"Unknown schedule {self.kind!r}: choose one of {', '.join(SCHEDULE_KINDS)}.")
        if not isinstance(self.T, int) or isinstance(self.T, bool) or self.T < 1 or self.T > 10000:
            raise ConfigError(f"T must be a whole number from 1 to 10000, got {self.T!r}.")
        if self.kind in ("linear", "quadratic"):
            for name in ("beta_start", "beta_end"):
                v = getattr(self, name)
                if not real(v) or not (0.0 < v < 1.0):
                    raise ConfigError(f"{name} must lie strictly between 0 and 1, got {v!r}.")
                if not BETA_MIN <= v <= BETA_MAX:
                    raise ConfigError(
                        f"{name} must lie in [{BETA_MIN:g}, {BETA_MAX:g}] (the tutorial uses 1e-4 to 0.04), got {v}."
                    )
            if self.beta_end < self.beta_start:
                raise ConfigError(
                    f"beta_end ({self.beta_end}) must not be smaller than beta_start ({self.beta_start})."
                )
        if self.kind == "cosine" and not (real(self.cosine_s) and 0.0 <= self.cosine_s < 1.0):
            raise ConfigError(f"cosine_s must lie in [0, 1), got {self.cosine_s!r}.")
        if not isinstance(self.rescale_zero_snr, bool):
            raise ConfigError(f"rescale_zero_snr must be true or false, got {self.rescale_zero_snr!r}.")
        if not isinstance(self.float32, bool):
            raise ConfigError(f"float32 must be true or false, got {self.float32!r}.")
        if self.rescale_zero_snr and self.T < 2:
            # the rescale maps alpha_bar_1 to itself and alpha_bar_T to 0: with one step that is 0/0
            raise ConfigError("A zero-terminal-SNR schedule needs T of at least 2.")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ScheduleConfig:
        if not isinstance(d, dict):
            raise ConfigError(f"A noise schedule must be a JSON object, got {type(d).__name__}.")
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known).validate()


# Named presets a person can pick.
SCHEDULE_PRESETS: dict[str, ScheduleConfig] = {
    "tutorial": ScheduleConfig(),  # the article: linear 1e-4..0.04, T=100
    "ddpm-paper": ScheduleConfig(kind="linear", T=1000, beta_start=1e-4, beta_end=0.02),
    "cosine": ScheduleConfig(kind="cosine", T=100),
    "tutorial-zero-snr": ScheduleConfig(rescale_zero_snr=True),
}
