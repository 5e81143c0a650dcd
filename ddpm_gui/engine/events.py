"""Events the Trainer yields while it runs. Plain dataclasses of numbers and numpy arrays (never
tensors), so a GUI thread, a CLI progress bar or a test can consume them without torch."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# the decay of Progress.loss_smooth, an exponential moving average of the loss from its first value: the
# one smoothing the CLI, the stats line and the plot show
LOSS_SMOOTHING = 0.98


@dataclass
class Started:
    step: int  # first step to run (> 0 when resumed)
    total_steps: int
    device: str  # e.g. "cpu", "cuda:0 (NVIDIA H100)"
    n_params: int
    flops_per_image: float | None  # forward + backward, for the training step
    dataset: str
    n_images: int
    run_dir: str
    resumed: bool
    batch_size: int
    estimate_note: str = ""  # plain words about how long this will take (CPU)
    threads: int = 0  # CPU threads torch uses for this run (0: not a CPU run)
    threads_auto: bool = False  # chosen from what other programs leave free (the threads setting is 0)


@dataclass
class Progress:
    step: int  # steps completed so far
    total_steps: int
    loss: float  # the last loss read
    loss_smooth: float  # exponential moving average of the loss
    img_per_s: float
    eta_s: float
    elapsed_s: float
    batch_size: int
    lr: float
    # every loss read since the previous Progress event, with its step number (for the live curve)
    steps: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    losses: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))


@dataclass
class TimestepLoss:
    step: int
    loss_by_t: np.ndarray  # (T,) float32: running mean of the loss per timestep, nan where unseen


@dataclass
class Preview:
    step: int
    images: np.ndarray  # (N, H, W, 3) uint8, sampled from the same fixed noise every time


@dataclass
class Validation:
    """The validation loss (engine/validation.py) of the weights samples use, at `step`."""

    step: int
    loss: float  # over all held-out (image, timestep) pairs
    low: float | None  # by band of t: the least-noise third of the timesteps
    mid: float | None
    high: float | None  # the most-noise third
    seconds: float  # what the evaluation took (0 for one replayed from the log)
    best_step: int | None = None  # the validated checkpoint with the lowest loss so far (None: none yet)
    best_loss: float | None = None
    replayed: bool = False  # read back from the log of a resumed run, not measured now


@dataclass
class CheckpointSaved:
    step: int
    path: str
    best: bool = False  # the validated checkpoint with the lowest validation loss so far (kept from pruning)


@dataclass
class Paused:
    step: int


@dataclass
class Resumed:
    step: int


@dataclass
class StepInspected:
    """One training step made while paused (Trainer.request_step), with what it worked on as the step drew
    and computed it. Images are (N, H, W, C) float32, channels last, the batch's first N (at most
    control.INSPECT_IMAGES); t and the losses cover the whole batch."""

    step: int  # the run's step count after it
    t: np.ndarray  # (B,) int64: each image's timestep, an index 0..T-1 as the model is given it
    loss_per_image: np.ndarray  # (B,) float32: the plain MSE of each image
    loss: float  # their mean
    x0: np.ndarray  # the batch, in [-1, 1]
    noise: np.ndarray  # the noise drawn for it
    xt: np.ndarray  # the noisy input x_t the model was given
    prediction: np.ndarray  # the model's output
    target: np.ndarray  # what it was trained to output: the noise (eps) or v
    prediction_kind: str  # "eps" | "v"
    grad_norms: dict[str, float]  # each parameter's gradient norm before clipping, by name
    grad_norm: float  # the whole gradient's norm before clipping
    grad_clip: float  # the clipping threshold (0: off)
    lr: float  # the learning rate the step used


@dataclass
class SettingsChanged:
    """Settings a paused run changed in place (Trainer.change_settings), from the step after `step`."""

    step: int
    changed: dict[str, list]  # name -> [was, now]
    texts: list[str]  # a line per setting for the user


@dataclass
class Notice:
    message: str
    level: str = "info"  # info | warning


@dataclass
class Finished:
    step: int
    run_dir: str
    reason: str  # completed | stopped
    checkpoint: str | None


@dataclass
class Failed:
    message: str  # one or two sentences for the user, saying what to change
    step: int
    checkpoint: str | None  # the last good checkpoint, if any
    # the cause was the user's input (settings, data, device, run folder: a DDPMError before training
    # started), not something that failed while running; the CLI exits 2 for it, 1 otherwise
    bad_input: bool = False


Event = (
    Started
    | Progress
    | TimestepLoss
    | Validation
    | Preview
    | CheckpointSaved
    | Paused
    | Resumed
    | StepInspected
    | SettingsChanged
    | Notice
    | Finished
    | Failed
)


def coalesce_progress(a: Event, b: Event) -> Progress | None:
    """Two consecutive Progress events as one (their loss points concatenated, b's figures), for a consumer
    that shows fewer events than a fast run yields; None for any other pair (those pass through in order)."""
    if isinstance(a, Progress) and isinstance(b, Progress):
        from dataclasses import replace

        return replace(
            b,
            steps=np.concatenate([np.asarray(a.steps), np.asarray(b.steps)]),
            losses=np.concatenate([np.asarray(a.losses), np.asarray(b.losses)]),
        )
    return None
