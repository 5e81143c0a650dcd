"""The quality check's numbers: the Fréchet distance, the typed results and the report `ddpm-gui eval` prints.

`ddpm_gui.engine.evaluate` computes them (it re-exports everything here); this module holds no torch code so
that the result types can be read wherever a result travels (the Train tab, the CLI, JSON files).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# ----------------------------------------------------------------------------- Fréchet distance


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (float64) of (N, D) features."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"need (N >= 2, D) features, got {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """d^2 between N(mu1, sigma1) and N(mu2, sigma2) (Dowson & Landau 1982; the formula of FID):

        |mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2))

    sigma1 sigma2 is not symmetric, but it is similar to S sigma2 S with S = sigma1^(1/2), which is symmetric
    positive semi-definite: both have the same eigenvalues, so tr((sigma1 sigma2)^(1/2)) is the sum of the
    square roots of the eigenvalues of S sigma2 S. Two symmetric eigen-decompositions, no scipy.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (len(mu1), len(mu1)):
        raise ValueError(f"shapes do not match: {mu1.shape}, {s1.shape}, {mu2.shape}, {s2.shape}")
    root = _sqrt_psd(s1)
    m = root @ s2 @ root
    ev = np.linalg.eigvalsh((m + m.T) / 2)
    tr_covmean = float(np.sqrt(np.clip(ev, 0, None)).sum())
    diff = mu1 - mu2
    d = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)
    return max(d, 0.0)


# ----------------------------------------------------------------------------- results

# A field with this metadata is left out of `to_dict()` while it is None: the JSON of an unconditional
# model has no "accuracy" key at all (rather than "accuracy": null), as consumers of the JSON expect.
_OMIT_IF_NONE = {"omit_if_none": True}
# Fields that are never written to JSON (arrays).
_NOT_JSON = {"json": False}


@dataclass(kw_only=True)
class SampleScores:
    """What `score_images` measures on a set of images (generated ones, or anything to compare).

    Shares are in [0, 1]; `class_histogram` maps each class name, and "none of these", to a count.
    """

    n: int  # images scored
    recognisable: float  # share whose most likely class has probability >= the confident threshold
    real_recognisable: float  # the same share for the classifier's held-out real images: the ceiling
    classifier_accuracy: float  # the classifier's accuracy on held-out real images
    class_histogram: dict[str, int]  # confident images per class; the rest under "none of these"
    classes_drawn: int  # classes with at least one confident image (mode collapse shows here)
    frechet_distance: float  # to the reference Gaussian of real-image features (FID's formula)
    # class-conditional only (None otherwise): the classes asked for were known
    accuracy: float | None = field(default=None, metadata=_OMIT_IF_NONE)  # classified as asked
    accuracy_confident: float | None = field(default=None, metadata=_OMIT_IF_NONE)  # ... and confidently
    per_class_accuracy: dict[str, float] | None = field(default=None, metadata=_OMIT_IF_NONE)
    # with the dataset (None otherwise): the same distance for as many held-out real images, the floor
    # that finite sampling alone gives
    frechet_distance_real: float | None = field(default=None, metadata=_OMIT_IF_NONE)
    n_real: int | None = field(default=None, metadata=_OMIT_IF_NONE)  # real images behind that floor

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict, one key per field, in field order (the keys `ddpm-gui eval --json` writes)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not f.metadata.get("json", True) or (value is None and f.metadata.get("omit_if_none")):
                continue
            out[f.name] = value
        return out


@dataclass(kw_only=True)
class EvalResult(SampleScores):
    """The quality check of one model: `evaluate_bundle` / `evaluate_run`. The scores of its samples plus
    how they were drawn, from which model, against which data, and with which classifier."""

    conditional: bool  # a class-conditional model (the classes were asked for in turn)
    sampler: str  # "ddpm" or "ddim"
    sampling_steps: int  # denoising steps per sample (T for DDPM)
    guidance: float | None  # classifier-free guidance scale; None for an unconditional model
    sample_seconds: float  # time spent sampling
    model_step: int  # training step of the weights scored
    model_preset: str
    model_source: str  # the checkpoint (or what the model came from)
    dataset: str  # the dataset's name
    dataset_images: int
    classifier_heldout: int  # held-out real images the classifier was measured on
    classifier_cache: str | None  # the classifier's cache file; None when it could not be written
    classifier_train_seconds: float
    classifier_from_cache: bool
    confident_threshold: float  # the probability that makes an image "recognisable"
    # the headline figure: `accuracy` for a conditional model, else `recognisable`
    sample_accuracy: float
    # the (N, H, W, 3) uint8 samples, only when asked for (keep_samples); never in to_dict()
    samples: np.ndarray | None = field(default=None, repr=False, metadata=_NOT_JSON)
    # what the model loader had to say: a newer checkpoint skipped as damaged, and which one was used
    notes: list[str] = field(default_factory=list, metadata=_NOT_JSON)


def format_report(res: EvalResult) -> str:
    """The lines `ddpm-gui eval` prints."""
    pct = lambda v: f"{100 * v:.1f}%"  # noqa: E731
    lines = [
        f"model:       {res.model_source} (step {res.model_step:,}, preset {res.model_preset}, "
        f"{'class-conditional' if res.conditional else 'unconditional'})",
        f"data:        {res.dataset}, {res.dataset_images:,} images",
        f"classifier:  {pct(res.classifier_accuracy)} accuracy on {res.classifier_heldout:,} held-out real "
        f"images; {pct(res.real_recognisable)} of them recognisable (class probability >= "
        f"{res.confident_threshold})"
        + ("" if res.classifier_from_cache else f"; trained in {res.classifier_train_seconds:.0f} s"),
        f"samples:     {res.n} drawn with {res.sampler} ({res.sampling_steps} steps"
        + (f", guidance {res.guidance}" if res.conditional else "")
        + f") in {res.sample_seconds:.1f} s",
    ]
    if res.conditional and res.accuracy is not None and res.accuracy_confident is not None:
        lines.append(
            f"accuracy:    {pct(res.accuracy)} of samples classified as the class asked for "
            f"({pct(res.accuracy_confident)} with probability >= {res.confident_threshold})"
        )
    lines.append(
        f"recognisable: {pct(res.recognisable)} of samples are confidently one class "
        f"(real images: {pct(res.real_recognisable)})"
    )
    lines.append("classes:     " + ", ".join(f"{k} {v}" for k, v in res.class_histogram.items()))
    floor = res.frechet_distance_real
    lines.append(
        f"Frechet distance (classifier features): {res.frechet_distance:.3f} generated vs real"
        + (f"; {floor:.3f} real vs real (the floor, n={res.n_real})" if floor is not None else "")
    )
    return "\n".join(lines)
