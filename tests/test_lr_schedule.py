"""The learning-rate schedule: the warm-up, then constant or a cosine decay to zero, as the optimizer sees it."""

import json
import math

import pytest
import torch
from conftest import small_config

from ddpm_gui.engine.config import TrainConfig, lr_at
from ddpm_gui.engine.trainer import Trainer
from ddpm_gui.errors import ConfigError


def test_constant_is_the_warm_up_then_the_peak():
    c = TrainConfig(lr=1e-3, warmup_steps=4, steps=20)
    assert [lr_at(c, s) for s in range(6)] == [1e-3 * ((s + 1) / 4) for s in range(4)] + [1e-3, 1e-3]
    assert lr_at(c, 19) == 1e-3 and lr_at(c.replace(warmup_steps=0), 0) == 1e-3


def test_cosine_falls_from_the_peak_to_zero_at_the_last_step():
    c = TrainConfig(lr=2e-3, warmup_steps=10, steps=111, lr_schedule="cosine")
    lrs = [lr_at(c, s) for s in range(111)]
    assert lrs[:10] == [lr_at(c.replace(lr_schedule="constant"), s) for s in range(10)]  # the same warm-up
    assert lrs[10] == 2e-3  # the peak right after the warm-up
    assert lrs[60] == pytest.approx(1e-3, rel=1e-12)  # half-way through the decay: half the peak
    assert lrs[35] == pytest.approx(2e-3 * 0.5 * (1 + math.cos(math.pi / 4)), rel=1e-12)
    assert lrs[110] == 0.0  # the last step
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    # more steps asked than the decay was drawn for (a run extended by hand): it stays at zero
    assert lr_at(c, 500) == 0.0


def test_cosine_without_warm_up_and_a_one_step_run():
    c = TrainConfig(lr=1e-3, warmup_steps=0, steps=1, lr_schedule="cosine")
    assert lr_at(c, 0) == 1e-3
    assert lr_at(c.replace(steps=3), 2) == 0.0


def test_unknown_schedule_is_refused_with_the_choices():
    with pytest.raises(ConfigError, match="constant, cosine"):
        TrainConfig(lr_schedule="linear").validate()


def test_training_uses_the_schedule_each_step(tmp_path, data, monkeypatch):
    """The rate in the optimizer at each of its steps, and the rate logged for that step, are lr_at's."""
    applied = []
    step = torch.optim.AdamW.step

    def recording_step(self, *a, **kw):
        applied.append(self.param_groups[0]["lr"])
        return step(self, *a, **kw)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    c = small_config(steps=12, warmup_steps=3, lr=1e-3, lr_schedule="cosine")
    events = list(Trainer(c, tmp_path / "run", data=data).run())
    assert type(events[-1]).__name__ == "Finished", events[-1]
    assert applied == [lr_at(c, i) for i in range(12)]
    assert applied[3] == 1e-3 and applied[-1] == 0.0
    logged = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    by_step = {r["step"]: r["lr"] for r in logged if "lr" in r and isinstance(r.get("step"), int)}
    assert [by_step[s] for s in range(1, 13)] == applied  # the record of step N: the rate of update N
