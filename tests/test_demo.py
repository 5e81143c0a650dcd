"""The demo model that ships with the app: a valid, small checkpoint; its manifest describes this very file;
it loads as a class-conditional model that draws the class asked for."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from ddpm_gui.data.builtin import BUILTIN_CLASSES
from ddpm_gui.engine import demo
from ddpm_gui.engine.checkpoint import is_ddpm_checkpoint, load_checkpoint
from ddpm_gui.engine.sampler import SampleConfig, sample_images
from ddpm_gui.errors import CheckpointError

pytestmark = pytest.mark.usefixtures("one_thread")

MAX_BYTES = 5 * 1024 * 1024  # "a few MB": the tiny UNet's EMA weights are about 3 MB


@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads(demo.manifest_path().read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def bundle():
    return demo.load_demo_bundle(device="cpu")


def test_the_demo_file_is_a_small_valid_checkpoint_inside_the_package():
    path = demo.demo_path()
    assert path.is_file() and path.parent.name == "demo" and path.parent.parent.name == "ddpm_gui"
    assert (path.parent / "__init__.py").is_file()  # a package, so its data files are installed with it
    assert is_ddpm_checkpoint(path) and 0 < path.stat().st_size <= MAX_BYTES
    tensors, meta = load_checkpoint(path)  # every byte checked against the digest written with it
    # the EMA weights and the header only: nothing a training run needs to resume
    assert tensors and all(k.startswith("ema.") for k in tensors)
    assert "optim_groups" not in meta and meta["num_classes"] == len(BUILTIN_CLASSES)


def test_the_manifest_describes_this_file(manifest):
    path = demo.demo_path()
    assert manifest["file"] == path.name
    assert manifest["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert manifest["bytes"] == path.stat().st_size
    _tensors, meta = load_checkpoint(path)
    assert manifest["steps"] == meta["step"] > 0
    assert manifest["settings"] == meta["config"] and manifest["seed"] == meta["config"]["seed"]
    assert manifest["train_commands"] and all(
        c.startswith("ddpm-gui train ") for c in manifest["train_commands"]
    )
    assert manifest["train_seconds"] > 0 and manifest["machine"]["torch"]
    ev = manifest["eval"]
    assert ev["command"].startswith("ddpm-gui eval ") and ev["model_step"] == meta["step"]
    assert ev["guidance"] > 1 and ev["n"] >= 100 and 0.0 <= ev["sample_accuracy"] <= 1.0


def test_the_demo_bundle_is_class_conditional_and_says_it_is_the_demo(bundle):
    assert demo.DEMO_NOTE in bundle.notes
    assert bundle.num_classes == len(BUILTIN_CLASSES) and bundle.class_names == BUILTIN_CLASSES
    assert bundle.source == str(demo.demo_path()) and bundle.preset == "tiny"
    assert not bundle.model.training


@pytest.mark.slow
def test_the_demo_draws_the_class_asked_for(bundle):
    """Samples of each class look like that class: a classifier trained on the real shapes (seconds at the
    demo's size) puts most of a small guided batch per class in the class that was asked for."""
    from ddpm_gui.data import load_data
    from ddpm_gui.engine.evaluate import ClassifierSpec, evaluate_bundle, train_classifier

    data = load_data("builtin:2000", image_size=bundle.image_size)
    clf = train_classifier(data, ClassifierSpec(steps=150, batch_size=64))
    assert clf.accuracy > 0.95  # the judge itself tells the real shapes apart
    res = evaluate_bundle(bundle, data, n=40, sampler="ddim", steps=20, guidance=3.0, classifier=clf)
    # 40 samples (4 per class) judged on a 20-step DDIM chain (500 of them measured 94.6%; a model that
    # ignores the class scores about 10%): the full figure is a benchmark (its manifest, docs/benchmarks.md)
    assert res.accuracy is not None and res.accuracy >= 0.8, res.per_class_accuracy


def test_demo_samples_are_images(bundle):
    cfg = SampleConfig(n=3, sampler="ddim", steps=5, seed=1, class_label=0, guidance=3.0)
    x = sample_images(bundle, cfg.validate(bundle))
    assert x.dtype == np.uint8 and x.shape == (3, bundle.image_size, bundle.image_size, 3)
    assert all(int(im.max()) > int(im.min()) for im in x)


def test_a_missing_demo_file_is_a_message_that_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setattr(demo, "demo_path", lambda: tmp_path / demo.DEMO_FILE)
    with pytest.raises(CheckpointError, match="demo model is missing.*reinstall"):
        demo.load_demo_bundle(device="cpu")


def test_the_cli_samples_from_the_demo_model(tmp_path, capsys):
    from PIL import Image

    from ddpm_gui.cli import main

    out = tmp_path / "demo.png"
    args = ["sample", "--model", demo.DEMO_NAME, "--n", "4", "--sampler", "ddim", "--steps", "5"]
    rc = main([*args, "--class", "triangle", "--guidance", "3", "--device", "cpu", "--out", str(out)])
    assert rc == 0, capsys.readouterr()
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width > 16 and im.height > 16
