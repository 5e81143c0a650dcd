"""Validation loss: the training objective on images the run never trains on, with fixed noise and fixed
timesteps, so that its curve is an honest measure of how the model generalises and two evaluations of one
set of weights give the same number.

    train_idx, val_idx = split_indices(len(data), val_size, seed)   # fixed by the seed
    v = Validator(images, labels, val_idx, schedule, prediction, seed, device)
    result = v.evaluate(model, step)                                # ValResult: total and per band of t

The held-out slice is at most VAL_FRACTION of the data and at most `val_size` images, chosen by the seed
once when a run starts; the training sampler draws only from the rest (Learner.train_index). Every held-out
image is noised once in each third of the timesteps (low, middle and high noise), at a timestep drawn once
from its own generator; the noise comes from a generator seeded afresh at each evaluation. Nothing here
touches the training's random streams (the Learner's generator, torch's global RNG), so an exact resume
stays exact with validation on.

The reported numbers are means of the per-image MSE (the training loss's own reduction): one per band, and
the total over all (image, band) pairs, which is the mean of the three bands when T divides by 3.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ddpm_gui.core.diffusion import from_uint8, q_sample, training_target
from ddpm_gui.core.schedule import NoiseSchedule

VAL_FRACTION = 0.05  # the most of a dataset held out: the rest is what the model learns from
VAL_BATCH = 64  # (image, timestep) pairs per forward pass; fixed, so the noise stream never depends on it
BANDS = ("low", "mid", "high")  # thirds of the timesteps: little noise, some, mostly noise
_SPLIT_SALT = 0x7A1D  # the hold-out's stream, apart from every other use of the seed
_T_SALT = 0x7A1E  # the fixed timesteps'
_NOISE_SALT = 0x7A1F  # the noise's


def holdout_count(n_images: int, val_size: int) -> int:
    """How many of `n_images` are held out: at most `val_size` and at most VAL_FRACTION of them (0 for a
    dataset under 1 / VAL_FRACTION images, which then has none to spare)."""
    return max(0, min(int(val_size), int(n_images * VAL_FRACTION)))


def split_indices(n_images: int, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training indices, held-out indices), both sorted, disjoint and covering range(n_images); the same
    for the same seed, image count and val_size."""
    k = holdout_count(n_images, val_size)
    perm = np.random.default_rng([int(seed), _SPLIT_SALT]).permutation(n_images)
    return np.sort(perm[k:]).astype(np.int64), np.sort(perm[:k]).astype(np.int64)


def band_ranges(T: int) -> list[tuple[int, int]]:
    """[lo, hi) of the three bands of timesteps 0..T-1 (an empty band when T < 3)."""
    edges = [round(i * T / 3) for i in range(4)]
    return [(edges[i], edges[i + 1]) for i in range(3)]


def _mix(seed: int, salt: int) -> int:
    return (int(seed) * 1_000_003 + salt) % 2**63


@dataclass
class ValResult:
    step: int
    total: float
    bands: dict[str, float | None]  # BANDS -> mean loss (None: an empty band, T < 3)
    seconds: float  # what the evaluation took (wall clock)
    n_images: int

    def record(self) -> dict:
        """The metrics.jsonl record: {"step", "val", "val_low", "val_mid", "val_high", "val_s", "time"}."""
        rec: dict = {"step": self.step, "val": self.total}
        rec.update({f"val_{b}": v for b, v in self.bands.items()})
        rec.update({"val_s": round(self.seconds, 4), "time": time.time()})
        return rec


def is_val_record(rec: object) -> bool:
    """A metrics.jsonl record of a validation (as `ValResult.record` writes it)."""
    return (
        isinstance(rec, dict)
        and type(rec.get("step")) is int
        and isinstance(rec.get("val"), int | float)
        and not isinstance(rec.get("val"), bool)
        and "event" not in rec
    )


def result_from_record(rec: dict) -> ValResult:
    """A ValResult from a metrics.jsonl record (`is_val_record`); missing bands are None."""

    def num(v) -> float | None:
        return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None

    bands = {b: num(rec.get(f"val_{b}")) for b in BANDS}
    return ValResult(int(rec["step"]), float(rec["val"]), bands, float(num(rec.get("val_s")) or 0.0), 0)


class Validator:
    """The held-out images of a run and their fixed timesteps; `evaluate(model)` scores a set of weights."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor | None,
        val_idx: np.ndarray,
        schedule: NoiseSchedule,
        prediction: str,
        seed: int,
        device: torch.device,
        amp: bool = False,
    ):
        """`images`: the whole dataset (uint8, NHWC, on the device or the host), `labels` its classes (None:
        unconditional), `val_idx` the held-out indices; `schedule` on `device`."""
        self.images, self.labels = images, labels
        self.idx = torch.from_numpy(np.asarray(val_idx, np.int64))
        self.n_images = len(val_idx)
        self.schedule, self.prediction, self.seed = schedule, prediction, int(seed)
        self.device, self.amp = device, amp and device.type == "cuda"
        g = torch.Generator().manual_seed(_mix(seed, _T_SALT))
        u = torch.rand((self.n_images, 3), generator=g, dtype=torch.float64)
        bands = [(b, lo, hi) for b, (lo, hi) in enumerate(band_ranges(schedule.T)) if hi > lo]
        t = torch.stack(
            [(lo + (u[:, b] * (hi - lo)).floor().long()).clamp(lo, hi - 1) for b, lo, hi in bands], 1
        )
        # the (image, band, t) pairs, image-major so that a chunk gathers neighbouring images
        self.pair_img = torch.arange(self.n_images).repeat_interleave(len(bands))
        self.pair_band = torch.tensor([b for b, _lo, _hi in bands]).repeat(self.n_images)
        self.pair_t = t.reshape(-1)

    @property
    def n_pairs(self) -> int:
        return int(self.pair_t.numel())

    def evaluate(self, model: torch.nn.Module, step: int = 0) -> ValResult:
        """The validation loss of `model` (put in eval mode for the call, then back): the same weights give
        the same number on the same device, whatever ran before."""
        t0 = time.perf_counter()
        gen = torch.Generator(device=self.device)
        gen.manual_seed(_mix(self.seed, _NOISE_SALT))
        per = torch.empty(self.n_pairs, dtype=torch.float32, device=self.device)
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                for s in range(0, self.n_pairs, VAL_BATCH):
                    per[s : s + VAL_BATCH] = self._chunk(model, s, gen)
        finally:
            model.train(was_training)
        losses = per.cpu().numpy().astype(np.float64)  # the one read of the evaluation
        band = self.pair_band.numpy()
        bands: dict[str, float | None] = {}
        for b, name in enumerate(BANDS):
            sel = losses[band == b]
            bands[name] = float(sel.mean()) if sel.size else None
        total = float(losses.mean()) if losses.size else math.nan
        return ValResult(int(step), total, bands, time.perf_counter() - t0, self.n_images)

    def _chunk(self, model: torch.nn.Module, s: int, gen: torch.Generator) -> torch.Tensor:
        dev = self.device
        rows = self.idx[self.pair_img[s : s + VAL_BATCH]]
        x0 = from_uint8(self.images[rows.to(self.images.device)].to(dev))
        t = self.pair_t[s : s + VAL_BATCH].to(dev)
        noise = torch.randn(x0.shape, generator=gen, device=dev)
        xt, eps = q_sample(x0, t, self.schedule, noise=noise)
        target = training_target(x0, eps, t, self.schedule, self.prediction)
        y = self.labels[rows.to(self.labels.device)].to(dev) if self.labels is not None else None
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=self.amp):
            out = model(xt, t, y) if y is not None else model(xt, t)
        return F.mse_loss(out.float(), target, reduction="none").mean(dim=(1, 2, 3))


def new_best(v: ValResult | None, step: int, best: dict | None) -> dict | None:
    """The run's new best {"step", "val"} when `v` validated `step` with a lower loss than `best`, else
    None (a NaN never wins)."""
    if v is None or v.step != step or not math.isfinite(v.total):
        return None
    return {"step": step, "val": v.total} if best is None or v.total < best["val"] else None


def validation_event(v: ValResult, best: dict | None, replayed: bool = False):
    """The engine event of a validation; `best` the run's {"step", "val"} of its best checkpoint so far."""
    from ddpm_gui.engine.events import Validation

    return Validation(
        v.step, v.total, v.bands["low"], v.bands["mid"], v.bands["high"], 0.0 if replayed else v.seconds,
        best["step"] if best else None, best["val"] if best else None, replayed,
    )  # fmt: skip


def cost_note(val_seconds: float, step_seconds: float, val_every: int) -> str:
    """What validation costs, in words: its time and its share of the training time at this interval."""
    share = val_seconds / max(val_seconds + step_seconds * val_every, 1e-9)
    text = (
        f"Validation takes {val_seconds:.2g} s every {val_every:,} steps: about {100 * share:.1f}% of the "
        "training time."
    )
    if share > 0.05 and step_seconds > 0:
        every = math.ceil(val_seconds * 19 / step_seconds)  # share = 5% at this interval
        text += f" To keep it under 5%, validate every {every:,} steps or fewer images (val_size)."
    return text


def val_history(metrics_path) -> list[ValResult]:
    """The validations logged in a metrics.jsonl (records of other kinds, and damaged lines, skipped)."""
    import json
    from pathlib import Path

    try:
        text = Path(metrics_path).read_bytes().decode("utf-8", errors="replace")
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if is_val_record(rec):
            out.append(result_from_record(rec))
    return out


BEST_FILE = "best.json"  # in the run folder: the checkpoint with the lowest validation loss


def write_best(run_dir, best: dict | None, checkpoint) -> None:
    """Record the run's best checkpoint in RUN/best.json ({"step", "val", "checkpoint"}, the checkpoint's
    path relative to the run folder), or remove the record when there is none (a resume went back before
    it). Rewritten only when it changes."""
    import json
    from pathlib import Path

    from ddpm_gui.engine.fileio import write_if_changed

    path = Path(run_dir) / BEST_FILE
    if best is None:
        try:  # only a record this module wrote: a file of that name and form in a run folder
            ours = set(json.loads(path.read_bytes())) == {"step", "val", "checkpoint"}
        except (OSError, ValueError, TypeError, RecursionError):
            ours = False
        if ours:
            path.unlink(missing_ok=True)
        return
    rel = Path(checkpoint).relative_to(Path(run_dir)).as_posix()
    text = (
        json.dumps({"step": best["step"], "val": best["val"], "checkpoint": rel}, indent=2) + "\n"
    ).encode()
    write_if_changed(path, text)
