"""Training recipes: named sets of TrainConfig fields that the Train tab and `ddpm-gui train --recipe` offer.

- `quick-cpu`: what a 2-core CPU can do in about ten minutes: the tiny UNet, class-conditional (with the
  "null" class, so classifier-free guidance works), batch 64, a higher learning rate (1e-3, the tiny model
  tolerates it), a short EMA (0.995: a 0.999 average still remembers the first noisy weights after 1,700
  steps), and the cosine schedule with v-prediction. The cosine schedule ends with no signal left in x_T,
  where sampling starts from pure noise; the tutorial's linear schedule ends at alpha_bar_T = 0.131, so x_T
  still holds 36% of the image there, and the model never learns to start from pure noise. Conditioning
  on the class is what lifts the tiny model's samples over the 80% mark of the quality check in that
  time (measured in docs/benchmarks.md: 83.6% of samples are the class asked for, against 66% of an
  unconditional run being recognisable at all). Data without class labels: uncheck class-conditional
  (CLI: --unconditional).
- `3min-cpu`: quick-cpu at 16x16 pixels with Min-SNR-gamma loss weighting (gamma 5), EMA 0.99, 1,400 steps: a
  quarter of the pixels, so a step costs about a third, and the loss weighted towards the noisy timesteps
  that decide an image's shape. Guided samples (guidance 3) are recognisably the class asked for in under
  three minutes; unguided ones need quick-cpu's longer run.
- `tutorial`: the article's own settings: its 42M-parameter UNet, batch 128, lr 3e-4, linear beta
  1e-4..0.04 over T=100, EMA 0.999. Hours on a CPU; minutes on a GPU.

Figures measured for these recipes are in docs/benchmarks.md (with the commands).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ddpm_gui.core.spec import SCHEDULE_PRESETS
from ddpm_gui.engine.config import TrainConfig
from ddpm_gui.errors import ConfigError


@dataclass(frozen=True)
class Recipe:
    """A named TrainConfig partial: the fields it sets, and one line for the recipe list."""

    name: str
    note: str
    changes: dict = field(default_factory=dict)  # TrainConfig field -> value (the schedule a ScheduleConfig)

    def apply(self, cfg: TrainConfig | None = None) -> TrainConfig:
        """`cfg` (default: the defaults) with this recipe's fields."""
        return (cfg or TrainConfig()).replace(**self.changes)


# what every recipe sets alike: the tutorial's image size, a short warm-up, a preview every 250 steps
_BOTH = dict(image_size=32, warmup_steps=100, preview_every=250)

_QUICK_CPU = Recipe(
    "quick-cpu",
    "tiny class-conditional UNet, batch 64, lr 1e-3, cosine schedule with v-prediction, 1,700 steps: "
    "recognisable built-in shapes in about 10 minutes on a 2-core CPU",
    dict(_BOTH, preset="tiny", batch_size=64, steps=1700, lr=1e-3, ema_decay=0.995, conditional=True,
         schedule=SCHEDULE_PRESETS["cosine"], prediction="v"),
)  # fmt: skip
# the article's own settings
_TUTORIAL = Recipe(
    "tutorial",
    "the article's settings: its 42M UNet, batch 128, lr 3e-4, linear beta over T=100 (hours on a CPU, "
    "minutes on a GPU)",
    dict(_BOTH, preset="tutorial", batch_size=128, steps=2000, lr=3e-4, ema_decay=0.999, conditional=False,
         schedule=SCHEDULE_PRESETS["tutorial"], prediction="eps"),
)  # fmt: skip
# quick-cpu at 16x16 with Min-SNR-gamma loss weighting: the same shapes in a quarter of the pixels, and a
# step costs about a third of a 32x32 one; Min-SNR lets the few steps that fit go to the noisy timesteps
# that decide the shape, and a shorter EMA (0.99) follows the weights of a short run more closely
_THREE_MINUTES = Recipe(
    "3min-cpu",
    "quick-cpu at 16x16 with Min-SNR-5 loss weighting, EMA 0.99, 1,400 steps: 90% of samples the class asked for "
    "(guidance 3, the Sample tab's default) in under 3 minutes on a 2-core CPU",
    dict(_QUICK_CPU.changes, image_size=16, min_snr_gamma=5.0, ema_decay=0.99, steps=1400),
)
RECIPES: dict[str, Recipe] = {r.name: r for r in (_QUICK_CPU, _THREE_MINUTES, _TUTORIAL)}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ConfigError(f"Unknown recipe {name!r}: choose one of {', '.join(RECIPES)}.")
    return RECIPES[name]


def matching_recipe(cfg: TrainConfig) -> str | None:
    """The name of the recipe whose every field `cfg` has, or None (the user's own settings)."""
    for name, r in RECIPES.items():
        if all(getattr(cfg, k) == v for k, v in r.changes.items()):
            return name
    return None
