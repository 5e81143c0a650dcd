"""Training on the GPUs people have: mixed precision chosen by compute capability (bf16 from sm 8.0, fp16
with a gradient scaler below, fp32 on the CPU), gradient accumulation (a batch run as K micro-batches),
and naming the device (cuda:N). The fp16 path runs on the CPU here: torch's autocast, GradScaler and fused
AdamW work there as on CUDA."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import assert_same_tensors, checkpoint_state, run_all, small_config

from ddpm_gui import cli
from ddpm_gui.engine import device as dv
from ddpm_gui.engine import events as ev
from ddpm_gui.engine.checkpoint import checkpoint_path, list_checkpoints, load_checkpoint
from ddpm_gui.engine.device import micro_batches
from ddpm_gui.engine.learner import Learner
from ddpm_gui.engine.trainer import Trainer
from ddpm_gui.errors import CheckpointError, ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def trainer(run, data, precision="auto", guard="auto", resume=False, **kw) -> Trainer:
    tr = Trainer(small_config(**kw), run, data=data, resume=resume)
    tr.precision_request, tr.nan_guard = precision, guard
    return tr


def inf_gradient_at(tr: Trainer, steps: set[int], collapse: bool = False):
    """A fault hook: before each step in `steps`, one parameter's gradient becomes inf (as an fp16 overflow
    makes it); `collapse` first sets the scaler's scale below 1."""

    def hook(s: int) -> None:
        if s in steps:
            if collapse:
                tr.scaler.update(0.5)
            p = next(tr.model.parameters())
            h = p.register_hook(lambda g: (h.remove(), g * float("inf"))[1])

    return hook


# ----------------------------------------------------------------------------- choosing the precision


@pytest.mark.parametrize(
    "amp,capability,native,expected",
    [
        (True, (9, 0), True, "bf16"),  # H100
        (True, (8, 6), True, "bf16"),  # RTX 30xx
        (True, (8, 0), True, "bf16"),  # A100: the first with bf16
        (True, (7, 5), False, "fp16"),  # T4, RTX 20xx
        (True, (7, 5), True, "fp16"),  # bf16 only emulated there: no speed-up
        (True, (7, 0), False, "fp16"),  # V100
        (True, (6, 1), False, "fp16"),  # GTX 10xx
        (True, (8, 0), False, "fp16"),  # a GPU torch says lacks native bf16
        (False, (9, 0), True, "fp32"),  # mixed precision off
        (True, None, True, "fp32"),  # not a CUDA GPU
    ],
)
def test_choose_precision_by_capability(amp, capability, native, expected):
    assert dv.choose_precision(amp, capability, native) == expected


@pytest.mark.parametrize("capability,native,expected", [((8, 9), True, "bf16"), ((7, 5), False, "fp16")])
def test_training_precision_reads_the_gpu(monkeypatch, capability, native, expected):
    asked = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: asked.append(d) or capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native)
    gpu = torch.device("cuda", 1)
    assert dv.training_precision(gpu, amp=True) == expected
    assert asked == [gpu]  # the capability of the device the run trains on
    assert dv.training_precision(gpu, amp=False) == "fp32"
    assert dv.training_precision(torch.device("cpu"), amp=True) == "fp32"


def test_cpu_trains_in_fp32_without_a_scaler(data):
    lr = Learner(small_config(amp=True), data=data)
    lr.setup()
    assert lr.precision == "fp32" and lr.scaler is None
    assert dv.training_precision(torch.device("cpu"), True, "fp16") == "fp16"  # asked for: used as it is
    with pytest.raises(ConfigError, match="Unknown precision 'fp8'"):
        dv.training_precision(torch.device("cpu"), True, "fp8")


# ----------------------------------------------------------------------------- fp16 with a gradient scaler


def test_fp16_trains_with_the_scaler_and_autocast(tmp_path, data):
    tr = trainer(tmp_path / "run", data, "fp16", steps=4)
    dtypes = []
    tr.fault_hook = lambda s: (
        s == 0 and next(tr.model.modules()).register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    )
    events = run_all(tr)
    assert isinstance(events[-1], ev.Finished), events[-1]
    assert tr.scaler is not None and tr.scaler.get_scale() == 65536.0
    assert dtypes and set(dtypes) == {torch.float16}  # the forward ran in fp16 autocast
    assert all(p.dtype == torch.float32 for p in tr.model.parameters())  # the weights stay fp32
    assert {int(s["step"]) for s in tr.optim.state_dict()["state"].values()} == {4}


@pytest.mark.parametrize("guard", ["host", "device"])
def test_fp16_overflow_is_skipped_not_a_failure(tmp_path, data, guard):
    """A gradient overflow in fp16 is the scaler's business: the update is skipped, the scale halved, and
    the run goes on (with either guard); the logged losses stay finite."""
    tr = trainer(tmp_path / "run", data, "fp16", guard, steps=6)
    tr.fault_hook = inf_gradient_at(tr, {1, 3})
    events = run_all(tr)
    assert isinstance(events[-1], ev.Finished) and events[-1].step == 6, events[-1]
    assert tr.scaler.get_scale() == 65536.0 / 4  # halved once per overflow
    assert {int(s["step"]) for s in tr.optim.state_dict()["state"].values()} == {4}  # 2 of 6 skipped
    for m in (tr.model, tr.ema):
        assert all(torch.isfinite(p).all() for p in m.parameters())
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert all(math.isfinite(r["loss"]) for r in rows if "loss" in r)  # no NaN logged


@pytest.mark.parametrize("guard", ["host", "device"])
def test_fp16_gradient_overflowing_below_scale_one_fails_the_run(tmp_path, data, guard):
    """A gradient that overflows even at a scale below 1 is divergence, not fp16's range: the run stops
    with the non-finite message, and the weights stay finite."""
    tr = trainer(tmp_path / "run", data, "fp16", guard, steps=10, checkpoint_every=2)
    tr.fault_hook = inf_gradient_at(tr, {3}, collapse=True)
    fail = run_all(tr)[-1]
    assert isinstance(fail, ev.Failed) and "at step 4" in fail.message and "learning rate" in fail.message
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [2]
    assert all(torch.isfinite(p).all() for p in tr.model.parameters())


def test_scaler_state_round_trips_and_fp16_resume_is_exact(tmp_path, data):
    """The scale and its growth count go into checkpoints; N steps in one go == N/2 + resume + N/2."""
    a = trainer(tmp_path / "a", data, "fp16", steps=8, checkpoint_every=4)
    a.fault_hook = inf_gradient_at(a, {1})
    run_all(a)
    b = trainer(tmp_path / "b", data, "fp16", steps=4, checkpoint_every=4)
    b.fault_hook = inf_gradient_at(b, {1})
    run_all(b)
    _, meta = load_checkpoint(checkpoint_path(tmp_path / "b", 4))
    assert meta["precision"] == "fp16"
    assert meta["grad_scaler"]["scale"] == 32768.0 and meta["grad_scaler"]["_growth_tracker"] == 2
    b = trainer(tmp_path / "b", data, "fp16", resume=True, steps=8, checkpoint_every=4)
    assert isinstance(run_all(b)[-1], ev.Finished)
    assert_same_tensors(
        checkpoint_state(checkpoint_path(tmp_path / "a", 8)),
        checkpoint_state(checkpoint_path(tmp_path / "b", 8)),
    )
    assert a.scaler.state_dict() == b.scaler.state_dict()
    assert a.scaler.state_dict()["_growth_tracker"] == 6  # restored from 2, not restarted from 0

    tensors, meta = load_checkpoint(checkpoint_path(tmp_path / "b", 8))
    fresh = Learner(small_config(), data=data)
    fresh.precision_request = "fp16"
    fresh.setup()
    fresh.load_state_dict(tensors, meta)
    assert fresh.scaler.state_dict() == a.scaler.state_dict()
    meta["grad_scaler"]["scale"] = "big"
    with pytest.raises(CheckpointError, match="could not be restored"):
        fresh.load_state_dict(tensors, meta)


# ----------------------------------------------------------------------------- gradient accumulation


def test_micro_batches_cover_the_batch():
    assert micro_batches(16, 4) == [(0, 4), (4, 8), (8, 12), (12, 16)]
    assert micro_batches(16, 1) == [(0, 16)]
    assert micro_batches(7, 2) == [(0, 3), (3, 7)]  # a batch halved after running out of memory
    assert micro_batches(2, 4) == [(0, 1), (1, 2)]  # never an empty micro-batch


def _one_step(data, **kw) -> tuple[Learner, list[int], float]:
    lr = Learner(small_config(batch_size=16, grad_clip=0.0, **kw), data=data)
    lr.setup()
    sizes: list[int] = []
    lr.model.register_forward_pre_hook(lambda m, args: sizes.append(int(args[0].shape[0])))
    loss = lr.train_step()
    return lr, sizes, float(loss)


@pytest.mark.parametrize("conditional", [False, True])
def test_accumulate_4_micro_batches_of_4_equals_batch_16(data, conditional):
    """The same images, t, noise (and class drops): the summed gradients of 4 micro-batches of 4 are the
    gradient of the batch of 16, to float rounding (the gradients are compared, not the weights after AdamW,
    which scales rounding noise up to full-size steps)."""
    whole, sizes1, loss1 = _one_step(data, conditional=conditional)
    split, sizes4, loss4 = _one_step(data, accumulate=4, conditional=conditional)
    assert sizes1 == [16] and sizes4 == [4, 4, 4, 4]
    assert loss4 == pytest.approx(loss1, rel=1e-6)
    assert torch.allclose(whole.t_loss_sum, split.t_loss_sum, rtol=1e-5, atol=1e-7)
    assert torch.equal(whole.t_loss_cnt, split.t_loss_cnt)
    assert [p.grad is None for p in whole.model.parameters()] == [
        p.grad is None for p in split.model.parameters()
    ]
    g1 = torch.cat([p.grad.flatten() for p in whole.model.parameters() if p.grad is not None])
    g4 = torch.cat([p.grad.flatten() for p in split.model.parameters() if p.grad is not None])
    # to the rounding of the whole gradient (biases in front of a GroupNorm have gradients of pure rounding
    # noise, 1e-9 of the largest: compared one by one they would differ relatively)
    assert torch.allclose(g1, g4, rtol=1e-4, atol=1e-6 * float(g1.abs().max()))
    assert float((g1 - g4).norm() / g1.norm()) < 1e-5


def test_accumulation_resume_is_exact_and_k_may_change(tmp_path, data):
    c = dict(batch_size=8, accumulate=4, steps=6, checkpoint_every=3)
    run_all(trainer(tmp_path / "a", data, **c))
    run_all(trainer(tmp_path / "b", data, **{**c, "steps": 3}))
    events = run_all(trainer(tmp_path / "b", data, resume=True, **c))
    assert isinstance(events[-1], ev.Finished)
    assert_same_tensors(
        checkpoint_state(checkpoint_path(tmp_path / "a", 6)),
        checkpoint_state(checkpoint_path(tmp_path / "b", 6)),
    )
    # another K on resume: the same run in another memory budget, said so
    events = run_all(trainer(tmp_path / "b", data, resume=True, **{**c, "accumulate": 2, "steps": 7}))
    assert isinstance(events[-1], ev.Finished) and events[-1].step == 7
    assert any(isinstance(e, ev.Notice) and "accumulate 4 -> 2" in e.message for e in events)


def test_batch_not_divisible_by_accumulate_is_refused(capsys, tmp_path):
    with pytest.raises(ConfigError, match=r"multiple of 3") as e:
        small_config(batch_size=16, accumulate=3).validate()
    assert "--accumulate" in str(e.value) and "\n" not in str(e.value)
    out = tmp_path / "run"
    code = cli.main(["train", "--batch-size", "10", "--accumulate", "4", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: Batch size 10") and len(err.splitlines()) == 1
    assert not out.exists()


# ----------------------------------------------------------------------------- naming the device


def test_cuda_n_without_cuda_names_the_devices_present(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(dv, "_mps_available", lambda: False)
    with pytest.raises(ConfigError) as e:
        dv.pick_device("cuda:3")
    msg = str(e.value)
    assert "cuda:3" in msg and "no CUDA GPU" in msg and "devices present: cpu" in msg and "'cpu'" in msg
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError) as e:
        dv.pick_device("cuda:3")
    assert "There is no cuda:3" in str(e.value) and "2 CUDA devices (cpu, cuda:0, cuda:1)" in str(e.value)
    for bad in ("cuda:x", "cuda:", "gpu", "cuda:1:2"):
        with pytest.raises(ConfigError, match="cuda:N"):
            small_config(device=bad).validate()
    assert small_config(device="cuda:1").validate().device == "cuda:1"  # checked when the run starts


def test_cli_train_on_a_missing_gpu_is_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = ["train", "--data", "builtin:64", "--image-size", "16", "--preset", "tiny", "--steps", "1"]
    code = cli.main([*argv, "--device", "cuda:3", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if "error:" in x)
    assert code == 2 and "cuda:3" in line and "devices present: cpu" in line
    assert not (tmp_path / "run").exists()  # said before a run folder was made
