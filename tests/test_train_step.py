"""One training step at a time, and settings changed in a paused run (engine/control.py), on small real
runs: a Step is the trainer's own step, and a change is recorded so that resuming stays exact."""

import json
import shutil

import numpy as np
import pytest
import torch

from ddpm_gui.engine import events as ev
from ddpm_gui.engine.checkpoint import list_checkpoints, load_checkpoint
from ddpm_gui.engine.config import load_run_config
from ddpm_gui.engine.control import LIVE_SETTINGS, live_changes
from ddpm_gui.engine.trainer import Trainer
from ddpm_gui.errors import ConfigError
from tests.conftest import small_config


@pytest.fixture(scope="module")
def small_data(data):
    return data


pytestmark = pytest.mark.usefixtures("one_thread")


def cfg(**kw):
    """small_config, logging every other step."""
    return small_config(**{"log_every": 2, **kw})


def drive(trainer, pause_at: int, on_paused, until=None) -> list:
    """Run `trainer`, pausing once it has logged step `pause_at`; `on_paused(trainer)` is called at the
    Paused event and `until(event)` decides at each later event whether to resume (None: it never does)."""
    events = []
    for e in trainer.run():
        events.append(e)
        if isinstance(e, ev.Progress) and e.step == pause_at and not trainer.paused:
            trainer.pause()
        elif isinstance(e, ev.Paused):
            on_paused(trainer)
        if trainer.paused and until is not None and until(e):
            trainer.resume()
    assert not any(isinstance(e, ev.Failed) for e in events), [e for e in events if isinstance(e, ev.Failed)]
    return events


def tensors_at(run, step):
    return load_checkpoint(run / "checkpoints" / f"step_{step:08d}.safetensors")[0]


def assert_same_state(a: dict, b: dict) -> None:
    keys = [k for k in a if k.startswith(("model.", "ema.", "optim.", "rng."))]
    assert keys and set(keys) <= set(b)
    for k in keys:
        assert torch.equal(a[k], b[k]), k


def test_a_step_while_paused_is_the_trainers_own_step(tmp_path, small_data):
    """Pause at step 4, Step once, stop: the weights, EMA, optimizer and RNG equal a run of 5 steps."""
    before = {}
    trainer = Trainer(cfg(steps=100), tmp_path / "a", data=small_data)
    events = []
    for e in trainer.run():
        events.append(e)
        if isinstance(e, ev.Progress) and e.step == 4 and not trainer.paused:
            trainer.pause()
        elif isinstance(e, ev.Paused):
            before.update({k: v.clone() for k, v in trainer.model.state_dict().items()})
            trainer.request_step()
        elif isinstance(e, ev.StepInspected):
            trainer.stop()
    inspected = [e for e in events if isinstance(e, ev.StepInspected)]
    assert [e.step for e in inspected] == [5] and events[-1].step == 5
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())  # it trained
    for _ in Trainer(cfg(steps=5), tmp_path / "b", data=small_data).run():
        pass
    assert_same_state(tensors_at(tmp_path / "a", 5), tensors_at(tmp_path / "b", 5))

    # what the event shows is what the step computed
    e = inspected[0]
    B = 8
    assert e.t.shape == (B,) and e.t.dtype == np.int64 and e.loss_per_image.shape == (B,)
    assert ((0 <= e.t) & (e.t < trainer.schedule.T)).all()
    assert e.x0.shape == e.noise.shape == e.xt.shape == e.prediction.shape == (B, 16, 16, 3)
    ab = trainer.schedule.alpha_bars.double().numpy()[e.t][:, None, None, None]
    np.testing.assert_allclose(e.xt, np.sqrt(ab) * e.x0 + np.sqrt(1 - ab) * e.noise, atol=1e-5)
    np.testing.assert_array_equal(e.target, e.noise)  # eps-prediction: the target is the noise drawn
    mse = ((e.prediction - e.target) ** 2).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(e.loss_per_image, mse, rtol=1e-5)
    assert e.loss == pytest.approx(float(e.loss_per_image.mean()), rel=1e-6)
    names = {n for n, p in trainer.model.named_parameters() if p.grad is not None}  # each that has one
    assert set(e.grad_norms) == names and all(v >= 0 for v in e.grad_norms.values())
    assert e.grad_norm == pytest.approx(np.sqrt(sum(v * v for v in e.grad_norms.values())), rel=1e-5)
    assert e.lr == 1e-3 and e.prediction_kind == "eps" and e.grad_clip == 1.0
    assert trainer.inspect is None  # only the inspected step keeps its intermediates


def test_resume_after_steps_continues_exactly(tmp_path, small_data):
    """Pause at 4, Step twice, resume to 10 == 10 steps in one go (and the curve has every step once)."""
    events = drive(
        Trainer(cfg(), tmp_path / "a", data=small_data),
        4,
        lambda t: (t.request_step(), t.request_step()),
        until=lambda e: isinstance(e, ev.StepInspected) and e.step == 6,
    )
    assert [e.step for e in events if isinstance(e, ev.StepInspected)] == [5, 6]
    assert (
        sum(isinstance(e, ev.Paused) for e in events) == sum(isinstance(e, ev.Resumed) for e in events) == 1
    )
    steps = np.concatenate([p.steps for p in events if isinstance(p, ev.Progress)])
    assert steps.tolist() == list(range(1, 11))  # the stepped ones too, each once
    assert events[-1].step == 10
    for _ in Trainer(cfg(), tmp_path / "b", data=small_data).run():
        pass
    assert_same_state(tensors_at(tmp_path / "a", 10), tensors_at(tmp_path / "b", 10))


def test_an_lr_edit_while_paused_takes_effect_is_recorded_and_resumes_exactly(tmp_path, small_data):
    run = tmp_path / "a"
    trainer = Trainer(cfg(), run, data=small_data)
    seen = {}

    def edit(t):
        t.change_settings(lr=5e-4)
        t.request_step()

    def after(e):
        if isinstance(e, ev.StepInspected):
            seen["lr"] = e.lr
            seen["optim"] = trainer.optim.param_groups[0]["lr"]
            return True
        return False

    events = drive(trainer, 4, edit, until=after)
    changed = [e for e in events if isinstance(e, ev.SettingsChanged)]
    assert len(changed) == 1 and changed[0].step == 4 and changed[0].changed == {"lr": [1e-3, 5e-4]}
    assert seen == {"lr": 5e-4, "optim": 5e-4}  # the optimizer's lr, from the very next step
    assert trainer.config.lr == 5e-4 and load_run_config(run).lr == 5e-4  # the run's config.toml
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"step": 4, "event": "settings", "changed": {"lr": [1e-3, 5e-4]}} in recs
    assert [r["lr"] for r in recs if "loss" in r and r["step"] > 4] and all(
        r["lr"] == 5e-4 for r in recs if "loss" in r and r["step"] > 4
    )
    assert [s for s, _ in list_checkpoints(run)] == [4, 10]  # the step the change was made at is kept

    # the same run in two parts: 4 steps at 1e-3, then resumed with lr 5e-4 to 10 -- the same weights
    for _ in Trainer(cfg(steps=4), tmp_path / "b", data=small_data).run():
        pass
    for _ in Trainer(cfg(lr=5e-4), tmp_path / "b", resume=True, data=small_data).run():
        pass
    assert_same_state(tensors_at(run, 10), tensors_at(tmp_path / "b", 10))

    # the app closed before the next checkpoint: resumed from the run's own folder, it goes on exactly
    c = tmp_path / "c"
    shutil.copytree(run, c)
    (c / "checkpoints" / "step_00000010.safetensors").unlink()
    events = list(Trainer(load_run_config(c), c, resume=True, data=small_data).run())
    assert events[-1].step == 10 and not any(isinstance(e, ev.Failed) for e in events)
    assert_same_state(tensors_at(run, 10), tensors_at(c, 10))
    recs = [json.loads(x) for x in (c / "metrics.jsonl").read_text().splitlines()]
    assert sum(r.get("event") == "settings" and r["step"] == 4 for r in recs) == 1  # recorded once


def test_what_a_paused_run_may_change_in_place(tmp_path, small_data):
    base = cfg()
    assert live_changes(base, base.replace(lr=1e-4, grad_clip=0.5)) == {"lr": 1e-4, "grad_clip": 0.5}
    assert live_changes(base, base.replace(batch_size=4)) is None  # needs a restart
    assert live_changes(base, base.replace(ema_decay=0.0)) is None  # drops the EMA model
    assert {"lr", "ema_decay", "grad_clip", "preview_every", "checkpoint_every"} <= LIVE_SETTINGS
    assert not {"batch_size", "preset", "schedule", "image_size", "seed"} & LIVE_SETTINGS

    trainer = Trainer(cfg(), tmp_path / "a", data=small_data)
    with pytest.raises(ConfigError, match="Pause the run"):
        trainer.request_step()
    trainer.pause()
    with pytest.raises(ConfigError, match="batch_size cannot change in a paused run"):
        trainer.change_settings(batch_size=4)
    with pytest.raises(ConfigError, match="Learning rate"):
        trainer.change_settings(lr=-1.0)
    assert not trainer._commands  # nothing refused was queued


def test_a_step_in_micro_batches_and_fewer_steps_set_while_paused(tmp_path, small_data):
    """With accumulate, the inspected step shows the whole batch; lowering the steps while paused ends the
    run there, completed."""

    def edit(t):
        t.change_settings(steps=3)
        t.request_step()

    events = drive(Trainer(cfg(steps=100, accumulate=2), tmp_path / "a", data=small_data), 2, edit)
    (e,) = [e for e in events if isinstance(e, ev.StepInspected)]
    assert e.step == 3 and e.prediction.shape == (8, 16, 16, 3) and e.loss_per_image.shape == (8,)
    np.testing.assert_allclose(
        e.loss_per_image, ((e.prediction - e.target) ** 2).mean(axis=(1, 2, 3)), rtol=1e-5
    )
    assert isinstance(events[-1], ev.Finished) and events[-1].reason == "completed" and events[-1].step == 3
