"""Sample quality without a network: the Fréchet distance, the cached classifier, and the scores."""

import json

import numpy as np
import pytest
import torch

from ddpm_gui.data import load_data
from ddpm_gui.engine.evaluate import (
    ClassifierSpec,
    classifier_cache_path,
    evaluate_bundle,
    feature_stats,
    format_report,
    frechet_distance,
    get_classifier,
    score_images,
)
from ddpm_gui.errors import ConfigError, DataError

# 16x16 keeps the classifier's training to seconds; it reaches 100% held-out accuracy there (measured)
SPEC = ClassifierSpec(steps=150, batch_size=64)


# ----------------------------------------------------------------------------- Fréchet distance


def _random_cov(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_frechet_identical_is_zero():
    rng = np.random.default_rng(0)
    mu, s = rng.normal(size=8), _random_cov(rng, 8)
    assert frechet_distance(mu, s, mu, s) == pytest.approx(0.0, abs=1e-8)


def test_frechet_shifted_mean_is_squared_distance():
    rng = np.random.default_rng(1)
    mu, s, d = rng.normal(size=6), _random_cov(rng, 6), rng.normal(size=6)
    assert frechet_distance(mu, s, mu + d, s) == pytest.approx(float(d @ d), rel=1e-7, abs=1e-8)


def test_frechet_scaled_covariance():
    # sigma2 = c^2 sigma1: tr(s1) + c^2 tr(s1) - 2 c tr(s1) = (1 - c)^2 tr(s1)
    rng = np.random.default_rng(2)
    mu, s, c = rng.normal(size=5), _random_cov(rng, 5), 1.7
    assert frechet_distance(mu, s, mu, c**2 * s) == pytest.approx((1 - c) ** 2 * np.trace(s), rel=1e-7)


def test_frechet_commuting_diagonals_and_one_dimension():
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 4.0, 1.0])
    want = float(((np.sqrt(a) - np.sqrt(b)) ** 2).sum()) + 3.0  # plus |(1,1,1)|^2
    assert frechet_distance(np.zeros(3), np.diag(a), np.ones(3), np.diag(b)) == pytest.approx(want)
    # 1-D Gaussians: (m1 - m2)^2 + (s1 - s2)^2
    assert frechet_distance(0.0, 4.0, 3.0, 1.0) == pytest.approx(9.0 + 1.0)


def test_frechet_non_commuting_matches_explicit_square_root():
    """Against tr(sqrtm(s1 s2)) computed from the eigen-decomposition of the (diagonalisable) product."""
    rng = np.random.default_rng(3)
    s1, s2 = _random_cov(rng, 7), _random_cov(rng, 7)
    w, v = np.linalg.eig(s1 @ s2)
    covmean = (v * np.sqrt(w.astype(complex))) @ np.linalg.inv(v)
    want = np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real
    assert frechet_distance(np.zeros(7), s1, np.zeros(7), s2) == pytest.approx(want, rel=1e-6)


def test_frechet_singular_covariances_and_shape_errors():
    f = np.random.default_rng(4).normal(size=(5, 10))  # fewer samples than dimensions: singular
    mu, s = feature_stats(f)
    assert frechet_distance(mu, s, mu, s) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))


# ----------------------------------------------------------------------------- classifier and scores


@pytest.fixture(scope="module")
def data():
    return load_data("builtin:2000", image_size=16)


@pytest.fixture(scope="module")
def clf(data, tmp_path_factory):
    torch.set_num_threads(min(2, torch.get_num_threads()))
    return get_classifier(data, spec=SPEC, cache_dir=tmp_path_factory.mktemp("cache"))


def test_classifier_learns_the_builtin_shapes(clf, data):
    assert clf.accuracy > 0.9
    assert clf.real_recognisable > 0.8
    assert clf.num_classes == 10 and clf.class_names == data.class_names
    assert len(clf.heldout) == 200 and clf.ref_mu.shape == (128,)


def test_classifier_is_cached(clf, data):
    path = classifier_cache_path(data, SPEC, clf.path.parent)
    assert clf.path == path and path.is_file() and not clf.from_cache
    again = get_classifier(data, spec=SPEC, cache_dir=path.parent)
    assert again.from_cache and again.accuracy == clf.accuracy
    assert np.array_equal(again.heldout, clf.heldout)
    p1, f1 = clf.predict(data.images[:20])
    p2, f2 = again.predict(data.images[:20])
    np.testing.assert_allclose(p1, p2, atol=1e-5)
    np.testing.assert_allclose(f1, f2, atol=1e-4)
    # another dataset (here: other images) gets another file
    other = load_data("builtin:2000", image_size=16, split="test")
    assert classifier_cache_path(other, SPEC, path.parent) != path


def test_damaged_cache_is_rebuilt(data, tmp_path):
    spec = ClassifierSpec(steps=5, batch_size=16)
    path = classifier_cache_path(data, spec, tmp_path)
    path.write_bytes(b"not a safetensors file")
    clf = get_classifier(data, spec=spec, cache_dir=tmp_path)
    assert not clf.from_cache and get_classifier(data, spec=spec, cache_dir=tmp_path).from_cache


def test_real_images_score_high_and_noise_scores_low(clf, data):
    held = clf.heldout
    real = score_images(clf, data.images[held], requested=data.labels[held], data=data)
    assert real.accuracy > 0.9 and real.recognisable > 0.8
    assert real.classes_drawn == 10
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, size=(len(held), 16, 16, 3), dtype=np.uint8)
    bad = score_images(clf, noise, requested=data.labels[held], data=data)
    assert bad.accuracy < 0.3 and bad.recognisable < 0.2
    # the real-vs-real floor is the same set here, so it equals the distance of the real "samples"
    assert real.frechet_distance == pytest.approx(real.frechet_distance_real, rel=1e-6)
    assert bad.frechet_distance > 10 * real.frechet_distance + 1.0
    json.dumps(real.to_dict()), json.dumps(bad.to_dict())  # JSON-able


def test_blends_of_two_shapes_are_not_recognisable(clf, data):
    a, b = data.images[clf.heldout[:100]], data.images[clf.heldout[100:200]]
    blend = ((a.astype(np.uint16) + b) // 2).astype(np.uint8)
    assert score_images(clf, blend, data=data, floor=False).recognisable < 0.5


def test_unlabelled_data_is_a_clear_error(data):
    from ddpm_gui.data import ImageData

    unlabelled = ImageData(data.images[:100], None, None, "pictures", "folder", None)
    with pytest.raises(DataError, match="no class labels"):
        get_classifier(unlabelled)


# ----------------------------------------------------------------------------- a model's samples


def _bundle(num_classes=None):
    from ddpm_gui.core.schedule import NoiseSchedule, ScheduleConfig
    from ddpm_gui.engine.sampler import ModelBundle
    from ddpm_gui.models.presets import build_model

    torch.manual_seed(0)
    model = build_model("tiny", num_classes=num_classes).eval()
    return ModelBundle(
        model,
        NoiseSchedule(ScheduleConfig()),
        "eps",
        16,
        num_classes,
        None,
        0,
        "tiny",
        "untrained",
        torch.device("cpu"),
    )


def test_evaluate_bundle_of_an_untrained_model(clf, data):
    res = evaluate_bundle(_bundle(), data, n=12, sampler="ddim", steps=3, classifier=clf)
    assert res.n == 12 and not res.conditional and res.sampling_steps == 3
    assert res.sample_accuracy == res.recognisable < 0.5  # noise from an untrained model
    assert res.frechet_distance > res.frechet_distance_real
    assert res.samples is None
    assert "Frechet distance" in format_report(res)
    json.dumps(res.to_dict())


def test_evaluate_conditional_bundle_asks_for_every_class(clf, data):
    res = evaluate_bundle(_bundle(10), data, n=20, sampler="ddim", steps=2, classifier=clf, keep_samples=True)
    assert res.conditional and res.accuracy is not None and len(res.per_class_accuracy) == 10
    assert res.sample_accuracy == res.accuracy
    assert res.samples.shape == (20, 16, 16, 3)
    assert "samples" not in res.to_dict()
    assert "asked for" in format_report(res)


# the keys `ddpm-gui eval --json` has always written, in order; JSON consumers read them by name
SCORE_KEYS = ["n", "recognisable", "real_recognisable", "classifier_accuracy", "class_histogram",
              "classes_drawn", "frechet_distance"]  # fmt: skip
CONDITIONAL_KEYS = ["accuracy", "accuracy_confident", "per_class_accuracy"]
RUN_KEYS = ["frechet_distance_real", "n_real", "conditional", "sampler", "sampling_steps", "guidance",
            "sample_seconds", "model_step", "model_preset", "model_source", "dataset", "dataset_images",
            "classifier_heldout", "classifier_cache", "classifier_train_seconds", "classifier_from_cache",
            "confident_threshold", "sample_accuracy"]  # fmt: skip


def test_eval_result_json_keys_are_unchanged(clf, data):
    uncond = evaluate_bundle(_bundle(), data, n=4, sampler="ddim", steps=1, classifier=clf, keep_samples=True)
    assert list(uncond.to_dict()) == SCORE_KEYS + RUN_KEYS  # no "accuracy": null, no samples
    assert uncond.to_dict()["guidance"] is None  # present, as null, for an unconditional model
    cond = evaluate_bundle(_bundle(10), data, n=10, sampler="ddim", steps=1, classifier=clf)
    assert list(cond.to_dict()) == SCORE_KEYS + CONDITIONAL_KEYS + RUN_KEYS
    back = json.loads(json.dumps(cond.to_dict()))
    assert back["per_class_accuracy"] == cond.per_class_accuracy and back["n"] == 10
    assert back["frechet_distance"] == cond.frechet_distance


def test_evaluate_bundle_refuses_mismatches(clf, data):
    with pytest.raises(ConfigError, match="16x16"):
        evaluate_bundle(_bundle(), load_data("builtin:64", image_size=8), n=4, classifier=clf)
    with pytest.raises(ConfigError, match="classes"):
        evaluate_bundle(_bundle(3), data, n=4, classifier=clf)


def test_record_eval_keeps_results_in_a_run_folder_only(clf, data, tmp_path):
    from ddpm_gui.engine import runs
    from ddpm_gui.engine.evaluate import record_eval
    from ddpm_gui.engine.runfolder import RunFolder

    res = evaluate_bundle(_bundle(), data, n=4, sampler="ddim", steps=1, classifier=clf)
    run = RunFolder(tmp_path / "run")
    run.create()
    run.release()
    (run.path / "evals").mkdir()
    foreign = run.path / "evals" / "step_00000000.json"
    foreign.write_text("a file of someone else's")
    first = record_eval(run.path, res)
    second = record_eval(run.path, res)
    assert (first.name, second.name) == ("step_00000000-2.json", "step_00000000-3.json")
    assert foreign.read_text() == "a file of someone else's"  # never written over
    back = runs.quality_results(run.path)
    assert len(back) == 2 and all(r["frechet_distance"] == res.frechet_distance for r in back)
    assert {k: back[0][k] for k in res.to_dict()} == json.loads(json.dumps(res.to_dict()))
    assert back[0]["time"] <= back[1]["time"]
    assert runs.read_run(run.path).quality_last["time"] == back[1]["time"]
    plain = tmp_path / "plain"
    plain.mkdir()
    assert record_eval(plain, res) is None and record_eval(None, res) is None
    assert record_eval(tmp_path / "missing", res) is None
    assert list(plain.iterdir()) == [] and not (tmp_path / "missing").exists()


# ----------------------------------------------------------------------------- ddpm-gui eval


def test_cli_eval_of_a_tiny_run_writes_its_scores(tmp_path, monkeypatch, capsys):
    """`ddpm-gui eval --run RUN --n 4 --sampler ddim --steps 2 --json F` on a real (3-step) run."""
    import math
    from functools import partial

    from ddpm_gui import cli
    from ddpm_gui.engine import evaluate

    # eval has no option for the classifier's size: a short training keeps this test to seconds (the full
    # default spec, 300 steps of 128, adds about 5 s on a 2-core CPU)
    monkeypatch.setattr(
        evaluate, "get_classifier", partial(get_classifier, spec=ClassifierSpec(steps=20, batch_size=32))
    )
    monkeypatch.setenv("DDPM_GUI_CACHE", str(tmp_path / "cache"))  # the classifier's cache too
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run = tmp_path / "run"
    assert cli.main(["train", "--data", "builtin:64", "--preset", "tiny", "--steps", "3", "--batch-size", "8",
                     "--image-size", "16", "--warmup", "0", "--device", "cpu", "--out", str(run)]) == 0  # fmt: skip
    out = tmp_path / "eval.json"
    argv = ["eval", "--run", str(run), "--n", "4", "--sampler", "ddim", "--steps", "2", "--device", "cpu",
            "--json", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "Frechet distance" in printed and f"wrote {out}" in printed
    kept = run / "evals" / "step_00000003.json"
    assert f"kept in {kept}" in printed  # the results, kept in the run for the Runs tab
    res = json.loads(out.read_text())
    assert {k: v for k, v in json.loads(kept.read_text()).items() if k != "time"} == res
    assert list(res) == SCORE_KEYS + RUN_KEYS
    assert res["n"] == 4 and res["sampler"] == "ddim" and res["sampling_steps"] == 2
    assert res["model_step"] == 3 and res["model_preset"] == "tiny" and not res["conditional"]
    assert res["dataset_images"] == 64 and not res["classifier_from_cache"]
    for key in ("classifier_accuracy", "real_recognisable", "recognisable", "sample_accuracy"):
        assert 0.0 <= res[key] <= 1.0, (key, res[key])
    # unconditional: the headline figure is the recognisable share
    assert res["sample_accuracy"] == res["recognisable"]
    for key in ("frechet_distance", "frechet_distance_real"):
        assert math.isfinite(res[key]) and res[key] >= 0.0, (key, res[key])
    assert sum(res["class_histogram"].values()) == 4
    # a second eval reads the cached classifier; --no-record keeps nothing in the run
    assert cli.main([*argv, "--no-record"]) == 0
    assert json.loads(out.read_text())["classifier_from_cache"]
    assert [p.name for p in (run / "evals").iterdir()] == ["step_00000003.json"]
