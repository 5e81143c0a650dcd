"""The validation loss: held-out images never trained on, fixed noise and timesteps (the same weights give the
same number), bands of t, the best checkpoint kept, exact resume with validation on."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_same_tensors, checkpoint_state, run_all, small_config

from ddpm_gui.data import load_data
from ddpm_gui.data.sources import ImageData
from ddpm_gui.engine import events as ev
from ddpm_gui.engine import learner as learner_mod
from ddpm_gui.engine.checkpoint import checkpoint_path, list_checkpoints, load_checkpoint
from ddpm_gui.engine.learner import Learner
from ddpm_gui.engine.runfolder import RunFolder
from ddpm_gui.engine.trainer import Trainer
from ddpm_gui.engine.validation import (
    BANDS,
    BEST_FILE,
    VAL_FRACTION,
    ValResult,
    band_ranges,
    holdout_count,
    split_indices,
)
from ddpm_gui.models import presets

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # the run view's test: before pytest-qt makes the app


def stamped(data: ImageData) -> ImageData:
    """The data with each image's index written into its first pixel: a batch tells which images it holds."""
    imgs = data.images.copy()
    idx = np.arange(len(imgs))
    imgs[:, 0, 0, 0], imgs[:, 0, 0, 1] = idx % 256, idx // 256
    return replace(data, images=imgs)


@pytest.fixture(scope="module")
def data():
    return stamped(load_data("builtin:256", image_size=16))


def val_records(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "val" in r]


def comparable(records: list[dict]) -> list[dict]:
    """Records without their wall-clock fields."""
    return [{k: v for k, v in r.items() if k not in ("time", "val_s", "img_per_s")} for r in records]


# ----------------------------------------------------------------------------- the split


def test_split_is_fixed_by_the_seed_disjoint_and_bounded():
    train, held = split_indices(1000, 256, seed=3)
    assert len(held) == holdout_count(1000, 256) == int(1000 * VAL_FRACTION) == 50
    assert not set(train) & set(held) and sorted([*train, *held]) == list(range(1000))
    again = split_indices(1000, 256, seed=3)
    assert np.array_equal(again[0], train) and np.array_equal(again[1], held)
    assert not np.array_equal(split_indices(1000, 256, seed=4)[1], held)  # another seed, another slice
    assert len(split_indices(100_000, 256, seed=0)[1]) == 256  # at most val_size
    assert holdout_count(19, 256) == 0  # too few images to spare any
    assert band_ranges(1000) == [(0, 333), (333, 667), (667, 1000)]


def test_held_out_images_are_never_in_a_training_batch(tmp_path, data, monkeypatch):
    """Every image a training step draws (seen where the learner decodes the batch) is one of the training
    images; the held-out ones never appear, and the training ones do."""
    seen: list[int] = []
    decode = learner_mod.from_uint8

    def spy(images):
        px = images[:, 0, 0].cpu().numpy().astype(np.int64)
        seen.extend((px[:, 0] + 256 * px[:, 1]).tolist())
        return decode(images)

    monkeypatch.setattr(learner_mod, "from_uint8", spy)
    c = small_config(steps=60, batch_size=16, val_every=20, seed=5)
    tr = Trainer(c, tmp_path / "run", data=data)
    events = run_all(tr)
    assert isinstance(events[-1], ev.Finished)
    train, held = split_indices(len(data), c.val_size, c.seed)
    assert len(held) == 12 and len(seen) == 60 * 16
    assert not set(seen) & set(held.tolist())
    assert len(set(seen)) > len(train) // 2  # the sampler does draw from the training images
    assert torch.equal(tr.validator.idx, torch.from_numpy(held))  # and validation scores exactly those


# ----------------------------------------------------------------------------- the number


def test_validation_is_deterministic_for_a_checkpoint_and_leaves_the_training_rng(tmp_path, data):
    """The logged validation loss of a checkpoint is what a fresh learner loading it computes, every time;
    computing it changes neither the weights nor the training's random streams."""
    run = tmp_path / "run"
    c = small_config(steps=12, val_every=6, checkpoint_every=6, keep_checkpoints=5)
    run_all(Trainer(c, run, data=data))
    logged = {r["step"]: r for r in val_records(run)}
    assert sorted(logged) == [6, 12]
    for step in (6, 12):
        lr = Learner(c, data=data)
        lr.setup()
        tensors, meta = load_checkpoint(checkpoint_path(run, step))
        lr.load_state_dict(tensors, meta)
        gen, rng = lr.gen.get_state(), torch.get_rng_state()
        weights = {k: v.clone() for k, v in lr.ema.state_dict().items()}
        first, second = lr.validate(), lr.validate()
        assert first.total == second.total == logged[step]["val"]
        assert first.bands == second.bands
        assert torch.equal(lr.gen.get_state(), gen) and torch.equal(torch.get_rng_state(), rng)
        assert all(torch.equal(v, lr.ema.state_dict()[k]) for k, v in weights.items())
        assert lr.model.training  # the raw model is left in training mode
    assert logged[6]["val"] != logged[12]["val"]  # other weights, another number


def test_records_have_the_bands_and_readers_skip_them(tmp_path, data):
    run = tmp_path / "run"
    events = run_all(Trainer(small_config(steps=8, val_every=4), run, data=data))
    recs = val_records(run)
    assert [r["step"] for r in recs] == [4, 8]
    for r in recs:
        bands = [r[f"val_{b}"] for b in BANDS]
        assert all(np.isfinite(bands)) and r["val"] == pytest.approx(np.mean(bands), rel=1e-9)
        assert len(set(bands)) == 3
    vals = [e for e in events if isinstance(e, ev.Validation)]
    assert [(e.step, e.loss, e.low, e.mid, e.high) for e in vals] == [
        (r["step"], r["val"], r["val_low"], r["val_mid"], r["val_high"]) for r in recs
    ]
    # the run folder's own readers count losses only, and cut the log back past the resumed step
    assert RunFolder(run).logged() == (8, 8)
    steps, losses = RunFolder(run).history(4)
    assert steps.tolist() == [1, 2, 3, 4] and [r["step"] for r in val_records(run)] == [4]


def test_too_few_images_turn_validation_off_with_a_notice(tmp_path, data):
    few = replace(data, images=data.images[:12], labels=None)
    events = run_all(Trainer(small_config(steps=4, val_every=2), tmp_path / "run", data=few))
    assert any(isinstance(e, ev.Notice) and "too few to hold any out" in e.message for e in events)
    assert isinstance(events[-1], ev.Finished) and not any(isinstance(e, ev.Validation) for e in events)


@pytest.mark.slow
def test_validation_loss_falls_on_a_short_run_that_learns(tmp_path, data):
    """The tiny model on the built-in shapes: the held-out loss at the end is well below the first one."""
    c = small_config(steps=100, batch_size=16, lr=2e-3, log_every=10, val_every=10)
    events = run_all(Trainer(c, tmp_path / "run", data=data))
    vals = [e for e in events if isinstance(e, ev.Validation)]
    assert [e.step for e in vals] == list(range(10, 101, 10))
    assert vals[-1].loss < 0.8 * vals[0].loss, [e.loss for e in vals]
    assert min(e.loss for e in vals[-3:]) < min(e.loss for e in vals[:3]), [e.loss for e in vals]


# ----------------------------------------------------------------------------- the best checkpoint


def test_best_checkpoint_is_recorded_and_kept_after_pruning(tmp_path, data, monkeypatch):
    """The validated checkpoint with the lowest loss is named in best.json and survives the rolling pruning
    of keep_checkpoints=1, also across a resume; the losses are set so that it is an early one."""
    scripted = {2: 3.0, 4: 1.0, 6: 2.0, 8: 4.0, 10: 5.0, 12: 0.5}
    real = Learner.validate

    def validate(self):
        v = real(self)
        return ValResult(v.step, scripted[v.step], v.bands, v.seconds, v.n_images)

    monkeypatch.setattr(Learner, "validate", validate)
    run = tmp_path / "run"
    c = small_config(steps=8, val_every=2, checkpoint_every=2, keep_checkpoints=1)
    events = run_all(Trainer(c, run, data=data))
    assert [e.step for e in events if isinstance(e, ev.CheckpointSaved) and e.best] == [2, 4]
    assert [s for s, _ in list_checkpoints(run)] == [4, 8]  # the best, and the newest
    assert json.loads((run / BEST_FILE).read_text()) == {
        "step": 4, "val": 1.0, "checkpoint": "checkpoints/step_00000004.safetensors"
    }  # fmt: skip
    events = run_all(Trainer(c.replace(steps=10), run, resume=True, data=data))
    replayed = [e for e in events if isinstance(e, ev.Validation) and e.replayed]
    assert [e.step for e in replayed] == [2, 4, 6, 8] and replayed[-1].best_step == 4
    assert not any(isinstance(e, ev.CheckpointSaved) and e.best for e in events)
    assert [s for s, _ in list_checkpoints(run)] == [4, 10]  # kept after a resume and more pruning...
    events = run_all(Trainer(c.replace(steps=12), run, resume=True, data=data))
    assert [e.step for e in events if isinstance(e, ev.CheckpointSaved) and e.best] == [12]
    assert [s for s, _ in list_checkpoints(run)] == [12]  # ...until a lower loss replaces it
    assert json.loads((run / BEST_FILE).read_text())["step"] == 12


# ----------------------------------------------------------------------------- exact resume


@pytest.fixture()
def dropout_preset(monkeypatch):
    """The tiny preset with dropout: validating in training mode would draw from torch's global RNG."""
    monkeypatch.setitem(presets.PRESETS, "tiny-dropout", replace(presets.PRESETS["tiny"], dropout=0.1))
    return "tiny-dropout"


def crash_at(step: int):
    def hook(s: int) -> None:
        if s == step:
            raise RuntimeError(f"simulated crash before step {step + 1}")

    return hook


def test_validation_does_not_change_training_and_resume_stays_exact(tmp_path, data, dropout_preset):
    """With the same held-out slice, validating every 2 steps or every 5 trains bitwise the same weights; a
    run that crashed and resumed ends bitwise equal to one that did not, with the same validation curve."""
    c = small_config(preset=dropout_preset, ema_decay=0.999, steps=10, val_every=2)
    run_all(Trainer(c, tmp_path / "a", data=data))
    run_all(Trainer(c.replace(val_every=5), tmp_path / "c", data=data))
    assert_same_tensors(
        checkpoint_state(checkpoint_path(tmp_path / "a", 10)),
        checkpoint_state(checkpoint_path(tmp_path / "c", 10)),
    )
    crashed = Trainer(c.replace(checkpoint_minutes=1e-5), tmp_path / "b", data=data)  # a save every step
    crashed.fault_hook = crash_at(7)
    assert isinstance(run_all(crashed)[-1], ev.Failed)
    with open(tmp_path / "b" / "metrics.jsonl", "a") as f:  # a killed process's stray record past the save
        f.write('{"step": 8, "val": 9.0, "val_low": 9.0, "val_mid": 9.0, "val_high": 9.0}\n')
    events = run_all(Trainer(c, tmp_path / "b", resume=True, data=data))
    assert isinstance(events[-1], ev.Finished) and events[-1].step == 10
    assert_same_tensors(
        checkpoint_state(checkpoint_path(tmp_path / "a", 10)),
        checkpoint_state(checkpoint_path(tmp_path / "b", 10)),
    )
    a, b = val_records(tmp_path / "a"), val_records(tmp_path / "b")
    # the crashed run also validated the checkpoints its minutes rule saved (steps 1..7)
    assert comparable([r for r in b if r["step"] % 2 == 0]) == comparable(a)


def test_a_run_started_without_validation_never_gets_a_held_out_slice(tmp_path, data):
    """Turning validation on when resuming would score images already trained on: it stays off, says so,
    and the run trains on exactly what it trained on before."""
    c = small_config(steps=8, checkpoint_every=4)
    run_all(Trainer(c, tmp_path / "a", data=data))
    run_all(Trainer(c.replace(steps=4), tmp_path / "b", data=data))
    events = run_all(Trainer(c.replace(val_every=2), tmp_path / "b", resume=True, data=data))
    assert any(isinstance(e, ev.Notice) and "started without validation" in e.message for e in events)
    assert not any(isinstance(e, ev.Validation) for e in events) and not val_records(tmp_path / "b")
    assert_same_tensors(
        checkpoint_state(checkpoint_path(tmp_path / "a", 8)),
        checkpoint_state(checkpoint_path(tmp_path / "b", 8)),
    )


# ----------------------------------------------------------------------------- the Train tab's plot


@pytest.mark.qt
def test_run_view_plots_the_validation_curve_its_bands_and_the_best_checkpoint(qtbot):
    from ddpm_gui.qt.train.run_view import RunView

    view = RunView()
    qtbot.addWidget(view)
    view.show_event(ev.Progress(10, 100, 0.5, 0.5, 1.0, 1.0, 1.0, 8, 1e-3, np.array([10]), np.array([0.5])))
    for step, total in ((10, 0.4), (20, 0.3), (30, 0.35)):
        view.show_event(ev.Validation(step, total, total + 0.2, total, total - 0.2, 0.1, None, None))
        view.show_event(ev.CheckpointSaved(step, f"ck{step}", best=total < 0.35))
    shown = view.loss_plot.validation()
    assert shown["step"].tolist() == [10, 20, 30] and shown["total"].tolist() == [0.4, 0.3, 0.35]
    assert shown["low"].tolist() == pytest.approx([0.6, 0.5, 0.55]) and shown["high"][0] == pytest.approx(0.2)
    assert view.loss_plot.best() == (20, 0.3)
    view.loss_plot.redraw()
    assert "validation 0.3500 (best 0.3000 at step 20)" in view.loss_plot.info.text()
    assert any(
        "kept as the best checkpoint" in view.log_list.item(i).text() for i in range(view.log_list.count())
    )
    # a resumed run's curve comes back replayed from the step it resumed at: no point twice
    view.show_event(ev.Validation(20, 0.3, 0.5, 0.3, 0.1, 0.0, 20, 0.3, replayed=True))
    assert view.loss_plot.validation()["step"].tolist() == [10, 20]
