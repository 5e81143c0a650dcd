"""A/B on the same noise: two sampling settings run from one x_T, frame by frame, side by side. No Qt.

    a = ABSide(bundle, SampleConfig(sampler="ddpm", seed=3))
    b = ABSide(other_bundle, SampleConfig(sampler="ddim", steps=20, seed=3), schedule=None)
    result = ABResult(a, b)
    for step in ab_frames(a, b, stop):     # in a worker: ABSteps of A and B, interleaved
        result.add(step)                   # in the GUI thread: the result holds every frame and its time
    result.count(); result.frames(i)       # lockstep positions: frame i of A beside B's at the same fraction
    result.difference(i, "xt")             # |A - B| per pixel, as a heat map and two numbers
    for side, scores in score_pair(a, b, data, n=64): ...   # the app's quality judge, on demand

Both chains start from the same x_T: sample_frames draws it from the seed with the side's model's generator,
so the same seed, number of images, image shape and device give the same tensor whatever the sampler, step
count, schedule or model (check_pair refuses a pair that cannot share it). Chains of different lengths are
compared by the fraction of their chain done (step 10 of 20 beside step 50 of 100), not by step number.
Identical settings give identical frames: both chains run with the same CPU thread count (fixed for the
comparison), which also keeps their times comparable.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ddpm_gui.core.schedule import NoiseSchedule, ScheduleConfig
from ddpm_gui.core.spec import SAMPLERS
from ddpm_gui.engine.sampler import ModelBundle, SampleConfig, SampleFrame, accelerated, sample_frames
from ddpm_gui.engine.threads import fixed_sampling_threads, sampling_threads
from ddpm_gui.errors import ConfigError

NAMES = ("A", "B")
MAX_GAIN = 32.0  # the difference image is amplified so its largest difference is white, at most this much
DEMO_SOURCE = "demo"  # load_model's name for the demo model that ships with the app


@dataclass
class ABSide:
    """One side of the comparison: a model and how to sample it."""

    bundle: ModelBundle
    cfg: SampleConfig
    schedule: ScheduleConfig | None = None  # None: the model's own; else the chain runs on this schedule

    def prepared(self) -> ModelBundle:
        """The bundle the chain samples: the model with this side's schedule."""
        if self.schedule is None:
            return self.bundle
        return replace(self.bundle, schedule=NoiseSchedule(self.schedule.validate()))

    def chain_length(self) -> int:
        """Reverse steps from pure noise to x_0 with this side's sampler and schedule."""
        T = self.schedule.T if self.schedule is not None else self.bundle.schedule.T
        if SAMPLERS[self.cfg.sampler].strided:
            from ddpm_gui.core.diffusion import ddim_timesteps

            return len(ddim_timesteps(T, self.cfg.steps))
        return T

    def describe(self) -> str:
        """The settings in one line: "ddim · 20 steps · eta 0 · class 3, w = 3"."""
        c = self.cfg
        parts = [
            c.sampler if c.sampler != "ddpm" else f"ddpm ({c.variance or self.bundle.variance} variance)"
        ]
        parts.append(f"{self.chain_length()} steps")
        if SAMPLERS[c.sampler].takes_eta:
            parts.append(f"eta {c.eta:g}")
        if c.class_label is not None:
            parts.append(f"class {c.class_label}, w = {c.guidance:g}")
        if self.schedule is not None:
            parts.append(f"{self.schedule.kind} schedule, T = {self.schedule.T}")
        return " · ".join(parts)


def check_pair(a: ABSide, b: ABSide) -> tuple[ABSide, ABSide]:
    """Both sides checked (their configs with the models' defaults filled in); a ConfigError says why two
    chains cannot start from the same noise."""
    sides = tuple(replace(s, cfg=s.cfg.validate(s.bundle)) for s in (a, b))
    for s in sides:
        if s.schedule is not None:
            s.schedule.validate()
    a, b = sides
    if a.cfg.seed != b.cfg.seed or a.cfg.n != b.cfg.n:
        raise ConfigError("A and B must use the same seed and number of images to start from the same noise.")
    shape = lambda s: (s.bundle.image_channels, s.bundle.image_size)  # noqa: E731
    if shape(a) != shape(b):
        (ca, sa), (cb, sb) = shape(a), shape(b)
        raise ConfigError(
            f"A makes {sa}x{sa} images with {ca} channels but B {sb}x{sb} with {cb}: they cannot start from "
            "the same noise. Pick a model B of A's image size."
        )
    if a.bundle.device != b.bundle.device:
        raise ConfigError(
            f"A runs on {a.bundle.device} but B on {b.bundle.device}: the same seed gives other noise there. "
            "Load B on A's device."
        )
    return a, b


@dataclass
class ABStep:
    """A frame of one side's chain, as the worker hands it over."""

    side: int  # 0: A, 1: B
    frame: SampleFrame
    seconds: float  # the time this side's chain took since its previous frame


def ab_frames(
    a: ABSide, b: ABSide, stop: threading.Event | None = None, accel: str = "auto"
) -> Iterator[ABStep]:
    """Run both chains from the same x_T, always advancing the side that is behind (by the fraction of its
    chain done), so both arrive in lockstep; each frame carries the time its side spent computing it."""
    a, b = check_pair(a, b)
    # Each chain holds its own inference-mode and thread-count blocks open between its frames, and A's may
    # end before B's: entered here first, the same states are what either restores, and this block, left
    # last, gives the caller's back. The thread count is the one chosen now, for both chains: the same
    # arithmetic on both sides, and times that compare.
    with torch.inference_mode(), sampling_threads(a.bundle.device):
        with fixed_sampling_threads(torch.get_num_threads()):
            chains = [sample_frames(accelerated(s.prepared(), accel), s.cfg, stop) for s in (a, b)]
            try:
                yield from _interleave(chains, stop)
            finally:
                for chain in reversed(chains):
                    if isinstance(chain, Generator):
                        chain.close()


def _interleave(chains: list[Iterator[SampleFrame]], stop: threading.Event | None) -> Iterator[ABStep]:
    done = [0.0, 0.0]  # the fraction of each chain done
    live = [True, True]
    while any(live):
        k = 0 if live[0] and (not live[1] or done[0] <= done[1]) else 1
        t0 = time.perf_counter()
        frame = next(chains[k], None)  # the frame's arrays are on the host: its steps have finished
        seconds = time.perf_counter() - t0
        if frame is None:
            live[k] = False
            continue
        done[k] = (frame.index + 1) / frame.total
        yield ABStep(k, frame, seconds)
        if stop is not None and stop.is_set():
            return


# ----------------------------------------------------------------------------- the result


def progress(frame: SampleFrame) -> float:
    """The fraction of its chain a frame has done (1 for the final images)."""
    return (frame.index + 1) / max(frame.total, 1)


@dataclass
class SideRun:
    """The frames one side's chain kept and the time it had spent at each."""

    frames: list[SampleFrame] = field(default_factory=list)
    elapsed: list[float] = field(default_factory=list)  # seconds since the chain started, at each frame

    def seconds(self) -> float:
        return self.elapsed[-1] if self.elapsed else 0.0

    def steps(self) -> int:
        return self.frames[-1].index + 1 if self.frames else 0

    def finished(self) -> bool:
        return bool(self.frames) and self.frames[-1].final

    def nearest(self, fraction: float) -> int:
        """The kept frame whose chain fraction is nearest `fraction` (the earlier on a tie); -1: none."""
        if not self.frames:
            return -1
        gaps = [abs(progress(f) - fraction) for f in self.frames]
        return int(np.argmin(gaps))


@dataclass
class Difference:
    """|A - B| per pixel of two image batches."""

    images: np.ndarray  # (N, H, W, 3) uint8: the mean over channels as a heat map (black: equal)
    mean: float  # mean absolute difference over every pixel and channel, in 0..255 levels
    max: int  # the largest difference of one channel, in levels
    gain: float  # how much `images` is amplified

    def text(self) -> str:
        if self.max == 0:
            return "identical (no pixel differs)"
        return f"mean |A−B| {self.mean:.2f} levels · max {self.max} · shown ×{self.gain:.3g}"


def difference(a: np.ndarray, b: np.ndarray) -> Difference:
    """The per-pixel difference of two (N, H, W, 3) uint8 batches, as a black-red-yellow-white heat map
    amplified so that the largest difference is white (at most MAX_GAIN times)."""
    if a.shape != b.shape:
        raise ConfigError(f"The two grids differ in shape ({a.shape} and {b.shape}): nothing to compare.")
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    per_pixel = d.mean(-1)
    peak = float(per_pixel.max()) if d.size else 0.0
    gain = 1.0 if peak == 0 else min(MAX_GAIN, 255.0 / peak)
    v = np.clip(per_pixel * gain / 255.0, 0.0, 1.0)[..., None]
    heat = np.clip(3.0 * v - np.array([0.0, 1.0, 2.0]), 0.0, 1.0)
    return Difference(
        images=np.round(heat * 255).astype(np.uint8),
        mean=float(d.mean()) if d.size else 0.0,
        max=int(d.max()) if d.size else 0,
        gain=gain,
    )


class ABResult:
    """Everything a comparison produced: both sides' frames and times, and their quality scores once
    asked for. Lockstep position i shows the longer side's i-th kept frame beside the other side's frame at
    the nearest fraction of its chain."""

    def __init__(self, a: ABSide, b: ABSide):
        self.sides = (a, b)
        self.runs = (SideRun(), SideRun())
        self.quality: list = [None, None]  # engine.scores.SampleScores of each side, once scored

    def add(self, step: ABStep) -> None:
        run = self.runs[step.side]
        run.frames.append(step.frame)
        run.elapsed.append(run.seconds() + step.seconds)

    def count(self) -> int:
        return max(len(r.frames) for r in self.runs)

    def finished(self) -> bool:
        return all(r.finished() for r in self.runs)

    def _leader(self) -> int:
        a, b = self.runs
        return 0 if len(a.frames) >= len(b.frames) else 1

    def pair(self, i: int) -> tuple[int, int]:
        """The kept frame indices of A and B at lockstep position i (-1: that side has none yet)."""
        lead = self._leader()
        frames = self.runs[lead].frames
        if not frames:
            return -1, -1
        j = max(0, min(int(i), len(frames) - 1))
        other = self.runs[1 - lead].nearest(progress(frames[j]))
        return (j, other) if lead == 0 else (other, j)

    def frames(self, i: int) -> tuple[SampleFrame | None, SampleFrame | None]:
        ja, jb = self.pair(i)
        a, b = self.runs
        return (a.frames[ja] if ja >= 0 else None, b.frames[jb] if jb >= 0 else None)

    def elapsed(self, i: int) -> tuple[float | None, float | None]:
        """Seconds each side had spent at lockstep position i."""
        return tuple(  # type: ignore[return-value]
            run.elapsed[j] if j >= 0 else None for run, j in zip(self.runs, self.pair(i), strict=True)
        )

    def difference(self, i: int, what: str = "xt") -> Difference | None:
        """|A - B| of the x_t (what="xt") or the predicted x_0 ("x0") at lockstep position i."""
        fa, fb = self.frames(i)
        if fa is None or fb is None:
            return None
        return difference(getattr(fa, what), getattr(fb, what))

    def final_difference(self) -> Difference | None:
        """|A - B| of the two final grids; None until both chains finished."""
        if not self.finished():
            return None
        return difference(self.runs[0].frames[-1].xt, self.runs[1].frames[-1].xt)


@dataclass
class ABSession:
    """What an A/B view holds (its widgets hold nothing): model B when it is not A's model, and the last
    comparison."""

    model_b: ModelBundle | None = None  # None: B samples A's model
    model_b_source: str = ""  # what load_model was given for it
    result: ABResult | None = None


# ----------------------------------------------------------------------------- models and quality


def load_model(source: str, device: str = "auto") -> ModelBundle:
    """Model B: "demo" (the model that ships with the app), a checkpoint, a run folder (its newest
    checkpoint) or a diffusers model folder, with the app's own loaders."""
    if source == DEMO_SOURCE:
        from ddpm_gui.engine.demo import load_demo_bundle

        return load_demo_bundle(device)
    from ddpm_gui.engine.sampler import load_bundle

    return load_bundle(source, device=device)


def judge_data(bundle: ModelBundle, data=None):
    """The labelled dataset to score `bundle`'s samples against: `data` when it is at the model's size,
    else the one the checkpoint says it was trained on."""
    if data is not None and getattr(data, "size", None) == bundle.image_size and data.num_classes:
        return data
    spec = bundle.meta.get("config", {}).get("data")
    if not spec:
        raise ConfigError(
            "Load the dataset this model was trained on in the Data tab (at the model's image size) first."
        )
    from ddpm_gui.data import load_data

    return load_data(spec, image_size=bundle.image_size)


def score_side(side: ABSide, data, n: int, classifier=None, stop: threading.Event | None = None):
    """The app's quality judge (engine.evaluate) on n images drawn with this side's full settings from the
    comparison's seed: a SampleScores (accuracy on the class asked for, or the recognisable share)."""
    from ddpm_gui.engine.evaluate import EvalCancelled, get_classifier, score_images

    if not isinstance(n, int) or n < 2:
        raise ConfigError(f"The quality check needs at least 2 samples, got {n}.")
    clf = classifier or get_classifier(data, device=side.bundle.device, stop=stop)
    clf.to(side.bundle.device)
    cfg = replace(side.cfg, n=n, every=10**9)
    last = None
    for frame in sample_frames(accelerated(side.prepared()), cfg, stop):
        last = frame
    if last is None or not last.final:
        raise EvalCancelled("The quality check was stopped while sampling.")
    label = cfg.class_label
    requested = None if label is None else np.full(n, label)
    return score_images(clf, last.xt, requested, data)


def score_pair(
    a: ABSide,
    b: ABSide,
    data,
    n: int = 64,
    classifier=None,
    report: Callable[[str], None] | None = None,
    stop: threading.Event | None = None,
) -> Iterator[tuple[int, object]]:
    """Worker: (side, SampleScores) for A, then B; each side against its model's dataset (`data` when it
    fits). The classifier is trained once per dataset and cached (engine.evaluate.get_classifier)."""
    a, b = check_pair(a, b)
    for k, side in enumerate((a, b)):
        if report is not None:
            report(f"Scoring {NAMES[k]}: {n} samples…")
        yield k, score_side(side, judge_data(side.bundle, data), n, classifier, stop)


def headline(scores) -> str:
    """A SampleScores in one line: the share the judge accepts, and the Fréchet distance."""
    if scores.accuracy is not None:
        head = f"{100 * scores.accuracy:.0f}% the class asked for"
    else:
        head = f"{100 * scores.recognisable:.0f}% recognisable"
    return f"{head} · Fréchet distance {scores.frechet_distance:.2f} ({scores.n} samples)"
