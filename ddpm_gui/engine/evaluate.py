"""Sample quality without a network: a small classifier trained by the app on the real images.

    clf = get_classifier(data)                   # trained once per dataset (~1 min on a 2-core CPU), cached
    res = evaluate_bundle(bundle, data, n=500)   # samples, then the numbers below: an EvalResult
    res.frechet_distance, res.to_dict()          # attributes; the JSON-able dict `ddpm-gui eval --json` writes
    record_eval(run_dir, res)                    # kept in the run: RUN/evals/step_XXXXXXXX.json

What the numbers mean
- `classifier_accuracy`: the classifier's accuracy on real images it never saw (a held-out tenth of the
  dataset). If this is not near 100%, the other numbers say little.
- unconditional models: `recognisable` is the share of samples the classifier puts in one class with
  probability >= 0.8 ("confidently one of the classes"); `real_recognisable` is the same share for held-out
  real images: the ceiling. `class_histogram` shows whether every class is drawn (mode collapse shows here).
- class-conditional models: `accuracy` is the share of samples classified as the class that was asked for.
- `frechet_distance`: the Fréchet distance between Gaussians fitted to the classifier's penultimate
  features of generated and of real images (FID's formula, with this classifier instead of Inception);
  `frechet_distance_real` is the same distance for held-out *real* images, the same number of them, against
  the same reference: the floor that finite sampling alone gives. Compare a model's distance to that floor,
  not to zero, and only between runs on the same dataset (the features are this dataset's classifier's).

The classifier has one extra output, "none of these", trained on images that belong to no class: noise,
50/50 blends of two images and heavily noised images. Without it a classifier sends pure noise to some class
with high confidence, and a half-formed blob would count as recognisable.

Standard Inception FID is not computed here: it needs weights from the network (torchvision is not a
dependency either). Where such weights are on disk, any FID tool can read the PNG grids `ddpm-gui sample`
writes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ddpm_gui.core.spec import SAMPLERS
from ddpm_gui.engine.fileio import atomic_write_bytes
from ddpm_gui.engine.runfolder import is_run_dir
from ddpm_gui.engine.runs import EVALS, free_path
from ddpm_gui.engine.scores import (  # noqa: F401 - format_report: re-exported with the result types
    EvalResult,
    SampleScores,
    feature_stats,
    format_report,
    frechet_distance,
)
from ddpm_gui.errors import ConfigError, DataError, DDPMError

EVAL_VERSION = 1  # bump when the classifier, its training or its data split change: old caches stop matching
CONFIDENT = 0.8  # a sample is "recognisable" when one class gets at least this probability
HELDOUT_FRACTION = 0.1
HELDOUT_MAX = 2000
REFERENCE_MAX = 5000  # real images whose features make the reference Gaussian
META_KEY = "ddpm_gui_classifier"

ProgressFn = Callable[[int, int, str], None]


class EvalCancelled(DDPMError):
    """The evaluation was stopped through its `stop` event."""


# ----------------------------------------------------------------------------- the classifier


class ShapeClassifier(nn.Module):
    """A small CNN: six 3x3 convolutions with BatchNorm (three with stride 2), global average pooling, a
    128-wide hidden layer (the features), and K + 1 outputs, the last meaning "none of these". Measured on
    builtin shapes at 16x16, 300 steps: 58% held-out accuracy without normalisation, 100% with BatchNorm,
    for 20% more time."""

    FEATURES = 128

    def __init__(self, num_classes: int, width: int = 32, image_channels: int = 3):
        super().__init__()
        w = width

        def conv(i: int, o: int, s: int) -> list[nn.Module]:
            return [nn.Conv2d(i, o, 3, s, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True)]

        self.num_classes = num_classes
        self.width = width
        self.body = nn.Sequential(
            *conv(image_channels, w // 2, 1),
            *conv(w // 2, w, 2),
            *conv(w, w, 1),
            *conv(w, 2 * w, 2),
            *conv(2 * w, 2 * w, 1),
            *conv(2 * w, 4 * w, 2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4 * w, self.FEATURES),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Linear(self.FEATURES, num_classes + 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (B, K+1), features (B, 128)) of images in [-1, 1]."""
        f = self.body(x)
        return self.head(f), f


@dataclass
class RealClassifier:
    """A trained ShapeClassifier with what is needed to read its outputs."""

    net: ShapeClassifier
    class_names: list[str]
    image_size: int
    accuracy: float  # on the held-out real images
    real_recognisable: float  # share of held-out real images with a class probability >= CONFIDENT
    heldout: np.ndarray  # indices into the dataset
    reference: np.ndarray  # indices (training part) of the real images behind ref_mu/ref_sigma
    ref_mu: np.ndarray
    ref_sigma: np.ndarray
    train_seconds: float
    path: Path | None = None
    from_cache: bool = False

    @property
    def num_classes(self) -> int:
        return self.net.num_classes

    @torch.inference_mode()
    def predict(self, images: np.ndarray | torch.Tensor, batch: int = 500) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities (N, K+1), features (N, 128)) of (N, H, W, 3) uint8 images."""
        from ddpm_gui.core.diffusion import from_uint8

        dev = next(self.net.parameters()).device
        self.net.eval()
        probs, feats = [], []
        for i in range(0, len(images), batch):
            chunk = images[i : i + batch]
            x = torch.as_tensor(np.ascontiguousarray(chunk)) if isinstance(chunk, np.ndarray) else chunk
            logits, f = self.net(from_uint8(x.to(dev)))
            probs.append(logits.float().softmax(-1).cpu().numpy())
            feats.append(f.float().cpu().numpy())
        if not probs:
            k = self.num_classes + 1
            return np.zeros((0, k), np.float32), np.zeros((0, ShapeClassifier.FEATURES), np.float32)
        return np.concatenate(probs), np.concatenate(feats)

    def to(self, device: torch.device | str) -> RealClassifier:
        self.net.to(device)
        return self


def split_indices(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(held-out, training) indices: a fixed random tenth (at most HELDOUT_MAX) is held out."""
    perm = np.random.default_rng(seed).permutation(n)
    n_held = max(1, min(HELDOUT_MAX, int(round(n * HELDOUT_FRACTION))))
    return np.sort(perm[:n_held]), np.sort(perm[n_held:])


def _fingerprint(data) -> str:
    """A cheap content hash: every label and a strided sample of the images."""
    h = hashlib.sha256()
    imgs = data.images
    h.update(str(imgs.shape).encode())
    h.update(np.ascontiguousarray(imgs[:: max(1, len(imgs) // 256)]).tobytes())
    h.update(np.ascontiguousarray(data.labels).tobytes())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class ClassifierSpec:
    """How the classifier is trained; part of the cache key."""

    steps: int = 300
    batch_size: int = 128
    lr: float = 3e-3
    width: int = 32
    seed: int = 0


def classifier_cache_path(
    data, spec: ClassifierSpec = ClassifierSpec(), cache_dir: str | Path | None = None
) -> Path:
    """The cache file for `data` (key: the source, image size, number of images, a content fingerprint,
    the classes, the training spec and EVAL_VERSION) in the data cache folder."""
    from ddpm_gui.data.cache import cache_path

    key = {
        "source": data.source,
        "size": data.size,
        "n": len(data),
        "classes": list(data.class_names or []),
        "num_classes": int(data.num_classes),
        "fingerprint": _fingerprint(data),
        "spec": dataclasses.asdict(spec),
        "version": EVAL_VERSION,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]
    p = cache_path(cache_dir, f"classifier-{data.source}-{data.size}", digest)
    return p.with_suffix(".safetensors")


def _check_data(data) -> None:
    if data.labels is None or not data.num_classes:
        raise DataError(
            f"{data.name} has no class labels: the quality check trains a classifier on labelled images. "
            "Evaluate with a labelled dataset (--data builtin, cifar10, or a folder with one sub-folder per class)."
        )
    if data.num_classes < 2:
        raise DataError(f"{data.name} has a single class: a classifier needs at least two.")
    if len(data) < 50:
        raise DataError(f"{data.name} has {len(data)} images: the quality check needs at least 50.")


def _junk(x: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """n images that belong to no class, made from a batch of real ones (B, C, H, W) in [-1, 1]:
    Gaussian noise of random strength, 50/50-ish blends of two images, heavily noised images."""
    dev = x.device
    shape = (n, *x.shape[1:])
    a = x[torch.randint(0, len(x), (n,), generator=gen, device=dev)]
    b = x[torch.randint(0, len(x), (n,), generator=gen, device=dev)]
    u = lambda: torch.rand((n, 1, 1, 1), generator=gen, device=dev)  # noqa: E731
    blend = (0.4 + 0.2 * u()) * a + (0.6 - 0.2 * u()) * b
    noise = (torch.randn(shape, generator=gen, device=dev) * (0.2 + u())).clamp(-1, 1)
    s = 0.02 + 0.3 * u()
    noised = (s.sqrt() * a + (1 - s).sqrt() * torch.randn(shape, generator=gen, device=dev)).clamp(-1, 1)
    kind = torch.randint(0, 3, (n, 1, 1, 1), generator=gen, device=dev)
    return torch.where(kind == 0, blend, torch.where(kind == 1, noise, noised))


def train_classifier(
    data,
    spec: ClassifierSpec = ClassifierSpec(),
    device: str | torch.device = "cpu",
    progress: ProgressFn | None = None,
    stop: threading.Event | None = None,
) -> RealClassifier:
    """Train on the training part of `data` (uint8 images on the device, one gather per batch, like the
    trainer); measure it on the held-out part; fit the reference feature Gaussian."""
    from ddpm_gui.core.diffusion import from_uint8
    from ddpm_gui.engine.device import pick_device

    _check_data(data)
    dev = pick_device(device) if isinstance(device, str) else device
    K = int(data.num_classes)
    held, train = split_indices(len(data), spec.seed)
    images = torch.from_numpy(data.images).to(dev)
    labels = torch.from_numpy(data.labels).to(dev)
    train_t = torch.from_numpy(train).to(dev)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        net = ShapeClassifier(K, spec.width, image_channels=3).to(dev)
    gen = torch.Generator(device=dev).manual_seed(spec.seed)
    opt = torch.optim.AdamW(net.parameters(), lr=spec.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, spec.lr, total_steps=spec.steps, pct_start=0.15)
    n_junk = max(1, spec.batch_size // (K + 1))
    n_real = max(1, spec.batch_size - n_junk)
    t0 = time.perf_counter()
    net.train()
    for step in range(spec.steps):
        if stop is not None and stop.is_set():
            raise EvalCancelled("The quality check was stopped while the classifier was training.")
        idx = train_t[torch.randint(0, len(train_t), (n_real,), generator=gen, device=dev)]
        x = from_uint8(images[idx])
        xb = torch.cat([x, _junk(x, n_junk, gen)])
        yb = torch.cat([labels[idx], torch.full((n_junk,), K, device=dev, dtype=torch.long)])
        loss = F.cross_entropy(net(xb)[0], yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if progress is not None and (step + 1) % 25 == 0:
            progress(step + 1, spec.steps, f"Training the quality classifier: step {step + 1}/{spec.steps}")
    secs = time.perf_counter() - t0
    net.eval()
    clf = RealClassifier(
        net,
        list(data.class_names or [str(i) for i in range(K)]),
        data.size,
        0.0,
        0.0,
        held,
        np.zeros(0, np.int64),
        np.zeros(0),
        np.zeros((0, 0)),
        secs,
    )
    probs, _ = clf.predict(images[torch.from_numpy(held).to(dev)])
    clf.accuracy = float((probs.argmax(1) == data.labels[held]).mean())
    clf.real_recognisable = float((probs[:, :K].max(1) >= CONFIDENT).mean())
    ref = train[np.random.default_rng(spec.seed + 1).permutation(len(train))[:REFERENCE_MAX]]
    clf.reference = np.sort(ref)
    _, feats = clf.predict(images[torch.from_numpy(clf.reference).to(dev)])
    clf.ref_mu, clf.ref_sigma = feature_stats(feats)
    return clf


def save_classifier(clf: RealClassifier, path: Path) -> None:
    from safetensors.torch import save

    tensors = {f"net.{k}": v.detach().cpu().contiguous() for k, v in clf.net.state_dict().items()}
    tensors.update(
        heldout=torch.from_numpy(clf.heldout.astype(np.int64)),
        reference=torch.from_numpy(clf.reference.astype(np.int64)),
        ref_mu=torch.from_numpy(clf.ref_mu),
        ref_sigma=torch.from_numpy(np.ascontiguousarray(clf.ref_sigma)),
    )
    meta = {
        "version": EVAL_VERSION,
        "num_classes": clf.num_classes,
        "width": clf.net.width,
        "class_names": clf.class_names,
        "image_size": clf.image_size,
        "accuracy": clf.accuracy,
        "real_recognisable": clf.real_recognisable,
        "train_seconds": clf.train_seconds,
    }
    atomic_write_bytes(path, save(tensors, metadata={META_KEY: json.dumps(meta)}))


def load_classifier(path: Path, device: str | torch.device = "cpu") -> RealClassifier:
    """Raises any error of a missing or damaged file: the caller retrains."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {})[META_KEY])
    if meta.get("version") != EVAL_VERSION:
        raise ValueError(f"classifier version {meta.get('version')}")
    t = load_file(str(path), device="cpu")
    net = ShapeClassifier(int(meta["num_classes"]), int(meta["width"]))
    net.load_state_dict({k[4:]: v for k, v in t.items() if k.startswith("net.")})
    net.to(device).eval()
    return RealClassifier(
        net,
        list(meta["class_names"]),
        int(meta["image_size"]),
        float(meta["accuracy"]),
        float(meta["real_recognisable"]),
        t["heldout"].numpy(),
        t["reference"].numpy(),
        t["ref_mu"].double().numpy(),
        t["ref_sigma"].double().numpy(),
        float(meta["train_seconds"]),
        path,
        True,
    )


def get_classifier(
    data,
    device: str | torch.device = "cpu",
    spec: ClassifierSpec = ClassifierSpec(),
    cache_dir: str | Path | None = None,
    retrain: bool = False,
    progress: ProgressFn | None = None,
    stop: threading.Event | None = None,
) -> RealClassifier:
    """The classifier for `data`: from the cache when there, else trained and cached. A cache file that
    cannot be read is replaced; a cache folder that cannot be written only costs a retraining next time."""
    _check_data(data)
    path = classifier_cache_path(data, spec, cache_dir)
    if not retrain and path.is_file():
        try:
            clf = load_classifier(path, device)
            if (
                clf.num_classes == data.num_classes
                and clf.image_size == data.size
                and clf.heldout.max() < len(data)
            ):
                return clf
        except Exception:  # any unreadable cache is rebuilt
            pass
    clf = train_classifier(data, spec, device, progress, stop)
    try:
        save_classifier(clf, path)
        clf.path = path
    except DDPMError:
        clf.path = None
    return clf


# ----------------------------------------------------------------------------- scoring


def score_images(
    clf: RealClassifier,
    images: np.ndarray,
    requested: np.ndarray | None = None,
    data=None,
    floor: bool = True,
) -> SampleScores:
    """Quality numbers for (N, H, W, 3) uint8 `images` (generated ones, or anything to compare):
    recognisable share, class histogram, accuracy on `requested` classes (conditional), Fréchet distance
    to the reference real features and, with `data` and `floor`, the real-vs-real floor for the same N."""
    K = clf.num_classes
    n = len(images)
    if n < 2:
        raise ConfigError("Scoring needs at least 2 images.")
    probs, feats = clf.predict(images)
    top = probs[:, :K].max(1)
    pred = probs.argmax(1)
    confident = top >= CONFIDENT
    names = clf.class_names + ["none of these"]
    hist = np.bincount(np.where(confident, pred, K), minlength=K + 1)
    mu, sigma = feature_stats(feats)
    res = SampleScores(
        n=int(n),
        recognisable=float(confident.mean()),
        real_recognisable=clf.real_recognisable,
        classifier_accuracy=clf.accuracy,
        class_histogram={names[i]: int(hist[i]) for i in range(K + 1)},
        classes_drawn=int((hist[:K] > 0).sum()),
        frechet_distance=frechet_distance(mu, sigma, clf.ref_mu, clf.ref_sigma),
    )
    if requested is not None:
        requested = np.asarray(requested)
        hit = pred == requested
        res.accuracy = float(hit.mean())
        res.accuracy_confident = float((hit & confident).mean())
        res.per_class_accuracy = {
            names[k]: float(hit[requested == k].mean()) for k in range(K) if (requested == k).any()
        }
    if data is not None and floor:
        m = min(n, len(clf.heldout))
        real = data.images[clf.heldout[np.random.default_rng(1).permutation(len(clf.heldout))[:m]]]
        _, rf = clf.predict(real)
        res.frechet_distance_real = frechet_distance(*feature_stats(rf), clf.ref_mu, clf.ref_sigma)
        res.n_real = int(m)
    return res


def generate(
    bundle,
    n: int,
    sampler: str = "ddpm",
    steps: int = 50,
    guidance: float = 1.0,
    seed: int = 0,
    chunk: int = 250,
    sample_mode: str = "auto",
    progress: ProgressFn | None = None,
    stop: threading.Event | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """n samples (N, H, W, 3) uint8; for a class-conditional model the classes in turn (0, 1, ..., K-1,
    0, ...), returned as the second value (None for an unconditional model)."""
    from ddpm_gui.engine.sampler import SampleConfig, accelerated, sample_frames

    b = accelerated(bundle, sample_mode)
    K = bundle.num_classes
    requested = None if K is None else np.arange(n) % K
    groups: list[tuple[int | None, np.ndarray]] = (
        [(None, np.arange(n))]
        if requested is None
        else [(k, np.flatnonzero(requested == k)) for k in range(K)]
    )
    out = np.zeros((n, bundle.image_size, bundle.image_size, 3), np.uint8)
    done = 0
    for label, idx in groups:
        for i in range(0, len(idx), chunk):
            part = idx[i : i + chunk]
            cfg = SampleConfig(
                n=len(part),
                sampler=sampler,
                steps=steps,
                seed=seed * 100_003 + done,
                class_label=label,
                guidance=guidance,
                every=10**9,
            )
            last = None
            for frame in sample_frames(b, cfg, stop=stop):
                last = frame
            if stop is not None and stop.is_set():
                raise EvalCancelled("The quality check was stopped while sampling.")
            assert last is not None
            out[part] = last.xt
            done += len(part)
            if progress is not None:
                progress(done, n, f"Sampling: {done}/{n} images")
    return out, requested


def evaluate_bundle(
    bundle,
    data,
    n: int = 500,
    sampler: str = "ddpm",
    steps: int = 50,
    guidance: float = 1.0,
    seed: int = 0,
    classifier: RealClassifier | None = None,
    sample_mode: str = "auto",
    progress: ProgressFn | None = None,
    stop: threading.Event | None = None,
    keep_samples: bool = False,
) -> EvalResult:
    """Sample `n` images from `bundle` and score them against `data` (labelled, at the model's size).
    With keep_samples, the result's `samples` holds the (N, H, W, 3) uint8 images (else None).
    For a GUI at checkpoints: a small n (100) and DDIM with 20 steps take seconds with the tiny preset."""
    _check_data(data)
    if data.size != bundle.image_size:
        raise ConfigError(
            f"The data is {data.size}x{data.size} but the model makes {bundle.image_size}x{bundle.image_size} "
            "images: load the data at the model's size."
        )
    if bundle.num_classes is not None and bundle.num_classes != data.num_classes:
        raise ConfigError(
            f"The model draws {bundle.num_classes} classes but {data.name} has {data.num_classes}: evaluate it "
            "with the dataset it was trained on."
        )
    if not isinstance(n, int) or n < 2:
        raise ConfigError(f"The quality check needs at least 2 samples, got {n}.")
    clf = classifier or get_classifier(data, device=bundle.device, progress=progress, stop=stop)
    clf.to(bundle.device)
    t0 = time.perf_counter()
    images, requested = generate(
        bundle, n, sampler, steps, guidance, seed, sample_mode=sample_mode, progress=progress, stop=stop
    )
    sample_secs = time.perf_counter() - t0
    scores = score_images(clf, images, requested, data)
    return EvalResult(
        **{f.name: getattr(scores, f.name) for f in dataclasses.fields(scores)},
        conditional=bundle.num_classes is not None,
        sampler=sampler,
        sampling_steps=steps if SAMPLERS[sampler].strided else bundle.schedule.T,
        guidance=guidance if bundle.num_classes is not None else None,
        sample_seconds=sample_secs,
        model_step=int(bundle.step),
        model_preset=bundle.preset,
        model_source=str(bundle.source),
        dataset=data.name,
        dataset_images=len(data),
        classifier_heldout=int(len(clf.heldout)),
        classifier_cache=str(clf.path) if clf.path else None,
        classifier_train_seconds=clf.train_seconds,
        classifier_from_cache=clf.from_cache,
        confident_threshold=CONFIDENT,
        # the headline figure: accuracy on the asked-for class (conditional) or the recognisable share
        sample_accuracy=scores.accuracy if scores.accuracy is not None else scores.recognisable,
        samples=images if keep_samples else None,
    )


def record_eval(run_dir: str | Path | None, result: EvalResult) -> Path | None:
    """Keep a quality result in the run it scored (the Runs tab reads it back): RUN/evals/step_XXXXXXXX.json,
    to_dict() and the time, atomically; only in a run folder (else None), never over a file (a second result
    of one step: step_XXXXXXXX-2.json). A failed write raises CheckpointError."""
    if run_dir is None or not str(run_dir).strip() or not is_run_dir(run_dir):
        return None
    path = free_path(Path(run_dir).expanduser() / EVALS, f"step_{int(result.model_step):08d}", ".json")
    text = json.dumps({**result.to_dict(), "time": time.time()}, indent=2) + "\n"
    atomic_write_bytes(path, text.encode())
    return path


def evaluate_run(
    path: str | Path,
    data: str | None = None,
    n: int = 500,
    sampler: str = "ddpm",
    steps: int = 50,
    guidance: float = 1.0,
    seed: int = 0,
    device: str = "auto",
    use_ema: bool = True,
    sample_mode: str = "auto",
    retrain: bool = False,
    grid: str | None = None,
    progress: ProgressFn | None = None,
) -> EvalResult:
    """`ddpm-gui eval`: a run folder or checkpoint, scored against the dataset it was trained on (or `data`)."""
    from ddpm_gui.data import load_data
    from ddpm_gui.engine.sampler import load_bundle

    bundle = load_bundle(path, device=device, use_ema=use_ema)
    # the header read with the weights: a training run may prune that file right after it was loaded
    cfg = bundle.meta.get("config", {})
    spec = data or cfg.get("data")
    if not spec:
        raise ConfigError("This checkpoint does not say which dataset it was trained on: pass --data.")
    ds = load_data(spec, image_size=bundle.image_size, limit=None if data else cfg.get("data_limit"))
    _check_data(ds)
    clf = get_classifier(ds, device=bundle.device, retrain=retrain, progress=progress)
    res = evaluate_bundle(
        bundle, ds, n, sampler, steps, guidance, seed, clf, sample_mode, progress, keep_samples=bool(grid)
    )
    if grid and res.samples is not None:
        from ddpm_gui.engine.images import make_grid, save_png

        save_png(grid, make_grid(res.samples[:64], scale=2))
        res.samples = None  # the grid holds what was asked for; the result stays small
    res.notes = list(bundle.notes)
    return res
