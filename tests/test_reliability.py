"""Runs that survive: exact resume (also after a crash, an autosave by minutes and inside the EMA warm-up),
non-finite losses, out-of-memory, full disks, vanished data, locked and old/new run folders, every input
door of the CLI, and a fast subset of the SIGKILL fault injection (scripts/fault_injection.py runs the
long count; see docs/reliability.md)."""

from __future__ import annotations

import copy
import errno
import json
import os
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_same_tensors, checkpoint_state, load_script, run_all, small_config

from ddpm_gui import cli
from ddpm_gui.data import load_data
from ddpm_gui.engine import checkpoint as ck
from ddpm_gui.engine import events as ev
from ddpm_gui.engine import fileio
from ddpm_gui.engine.checkpoint import checkpoint_path, list_checkpoints, load_checkpoint
from ddpm_gui.engine.config import TrainConfig, load_run_config
from ddpm_gui.engine.trainer import Trainer
from ddpm_gui.errors import CheckpointError, ConfigError
from ddpm_gui.models import presets

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def cfg(**kw) -> TrainConfig:
    return small_config(**{"steps": 10, **kw})


def metrics(run: Path) -> list[tuple]:
    return [
        (r["step"], r["loss"], r["loss_smooth"])
        for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
        if "loss" in r  # not the records of settings changed on resume
    ]


class Crash(Exception):
    """Stands for the process dying (the fault hook raises it between two steps)."""


def crash_at(step: int):
    def hook(s: int) -> None:
        if s == step:
            raise Crash(f"simulated crash before step {step + 1}")

    return hook


# ----------------------------------------------------------------------------- exact resume


@pytest.fixture()
def dropout_preset(monkeypatch):
    """The tiny preset with dropout, so that resuming must restore the global RNG too."""
    monkeypatch.setitem(presets.PRESETS, "tiny-dropout", replace(presets.PRESETS["tiny"], dropout=0.1))
    return "tiny-dropout"


def test_resume_after_crash_and_autosave_by_minutes_is_bitwise_exact(tmp_path, data, dropout_preset):
    """N steps in one go == a run that crashed after an autosave *by minutes*, resumed to N: model, EMA
    (still in its warm-up, decay (1+s)/(10+s)), AdamW state and the logged loss curve, bitwise on the CPU."""
    c = cfg(preset=dropout_preset, ema_decay=0.999, steps=10)
    run_all(Trainer(c, tmp_path / "a", data=data))
    crashed = Trainer(c.replace(checkpoint_minutes=1e-5), tmp_path / "b", data=data)  # autosave every step
    crashed.fault_hook = crash_at(7)
    events = run_all(crashed)
    assert isinstance(events[-1], ev.Failed) and "simulated crash" in events[-1].message
    assert [s for s, _ in list_checkpoints(tmp_path / "b")][-1] == 7  # saved by the minutes rule
    # the crashed run logged nothing after its last checkpoint that the resume must drop; add a stray
    # line as a killed process could have, and a line cut in the middle
    with open(tmp_path / "b" / "metrics.jsonl", "a") as f:
        f.write('{"step": 8, "loss": 123.0, "loss_smooth": 1}\n{"step": 9, "lo')
    events = run_all(Trainer(c, tmp_path / "b", resume=True, data=data))
    assert next(e for e in events if isinstance(e, ev.Started)).step == 7
    assert isinstance(events[-1], ev.Finished) and events[-1].step == 10
    assert_same_tensors(
        checkpoint_state(checkpoint_path(tmp_path / "a", 10)),
        checkpoint_state(checkpoint_path(tmp_path / "b", 10)),
    )
    assert metrics(tmp_path / "a") == metrics(tmp_path / "b")  # the curve continues where it stopped


def test_resume_without_any_checkpoint_starts_over(tmp_path, data):
    """A run killed before its first save: --resume starts it again from step 0 (with a notice)."""
    tr = Trainer(cfg(steps=6), tmp_path / "run", data=data)
    tr.fault_hook = crash_at(3)
    assert isinstance(run_all(tr)[-1], ev.Failed)
    assert list_checkpoints(tmp_path / "run") == []
    events = run_all(Trainer(cfg(steps=6), tmp_path / "run", resume=True, restart=True, data=data))
    assert any(isinstance(e, ev.Notice) and "from step 0" in e.message for e in events)
    assert next(e for e in events if isinstance(e, ev.Started)).step == 0
    assert isinstance(events[-1], ev.Finished) and events[-1].step == 6
    assert [s for s, *_ in metrics(tmp_path / "run")] == list(range(1, 7))


def test_damaged_newest_checkpoint_is_set_aside_and_temp_files_cleaned(tmp_path, data):
    run = tmp_path / "run"
    run_all(Trainer(cfg(steps=6, checkpoint_every=2, keep_checkpoints=5), run, data=data))
    newest = checkpoint_path(run, 6)
    raw = bytearray(newest.read_bytes())
    raw[-100] ^= 0xFF  # one flipped bit-pattern in the tensor bytes: only the digest can tell
    newest.write_bytes(bytes(raw))
    # what a killed save leaves, and users' files that only look like temp files
    leftover = run / "checkpoints" / ".step_00000008.safetensors.ddpm-tmp-0a1b2c3d"
    leftover.write_bytes(b"half a checkpoint")
    users = [run / ".draft.tmp", run / "checkpoints" / ".notes.k2j3h4.tmp"]
    for p in users:
        p.write_text("a user's file, named like a temp file")
    events = run_all(
        Trainer(cfg(steps=8, checkpoint_every=2, keep_checkpoints=5), run, resume=True, data=data)
    )
    notes = " ".join(e.message for e in events if isinstance(e, ev.Notice))
    assert "step_00000006.safetensors" in notes and "checksum" in notes and "unreadable" in notes
    assert "interrupted save" in notes
    assert next(e for e in events if isinstance(e, ev.Started)).step == 4
    assert not leftover.exists() and (run / "checkpoints" / "step_00000006.safetensors.unreadable").exists()
    assert all(p.read_text() == "a user's file, named like a temp file" for p in users)
    assert [s for s, _ in list_checkpoints(run)] == [2, 4, 6, 8]
    assert isinstance(events[-1], ev.Finished)


def test_rolling_keep_leaves_the_two_newest_checkpoints_and_both_load(tmp_path, data):
    """checkpoint_every=2, keep_checkpoints=2 over 10 steps: five saves, the three oldest pruned on the way."""
    run = tmp_path / "run"
    events = run_all(Trainer(cfg(steps=10, checkpoint_every=2, keep_checkpoints=2), run, data=data))
    assert isinstance(events[-1], ev.Finished) and events[-1].step == 10
    assert [e.step for e in events if isinstance(e, ev.CheckpointSaved)] == [2, 4, 6, 8, 10]
    assert [s for s, _ in list_checkpoints(run)] == [8, 10]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "step_00000008.safetensors",
        "step_00000010.safetensors",
    ]  # nothing else left behind (no temp files, no pruned ones)
    loaded = {}
    for step in (8, 10):
        _, meta = load_checkpoint(checkpoint_path(run, step))  # every byte checked against its digest
        assert meta["step"] == step
        loaded[step] = checkpoint_state(checkpoint_path(run, step))
    assert loaded[8].keys() == loaded[10].keys()
    assert any(not torch.equal(loaded[8][k], loaded[10][k]) for k in loaded[8] if k.startswith("model."))
    # and the run resumes from the newest
    events = run_all(
        Trainer(cfg(steps=12, checkpoint_every=2, keep_checkpoints=2), run, resume=True, data=data)
    )
    assert next(e for e in events if isinstance(e, ev.Started)).step == 10
    assert [s for s, _ in list_checkpoints(run)] == [10, 12]


# ----------------------------------------------------------------------------- non-finite loss


def nan_output_at(tr: Trainer, bad_step: int):
    """Make the model's output NaN for one step (a bad batch), without touching the weights."""
    snap = {}

    def hook(s: int) -> None:
        if s == bad_step:
            snap["model"] = copy.deepcopy(tr.model.state_dict())
            snap["ema"] = copy.deepcopy(tr.ema.state_dict())
            fwd = tr.model.forward

            def once(*a, **k):
                tr.model.forward = fwd
                return fwd(*a, **k) * float("nan")

            tr.model.forward = once

    return hook, snap


def test_nan_loss_host_guard_stops_before_the_weights_or_ema_change(tmp_path, data):
    """CPU (host guard): the loss is checked every step, so the bad step never reaches the weights or the
    EMA; the good losses before it are logged; nothing is saved after; the message says what to change."""
    tr = Trainer(cfg(steps=30, log_every=5, checkpoint_every=4), tmp_path / "run", data=data)
    hook, snap = nan_output_at(tr, 6)
    tr.fault_hook = hook
    events = run_all(tr)
    fail = events[-1]
    assert isinstance(fail, ev.Failed) and "at step 7" in fail.message and "nan" in fail.message
    assert "learning rate" in fail.message and "resume" in fail.message
    assert fail.step == 6 and fail.checkpoint and fail.checkpoint.endswith("step_00000004.safetensors")
    assert_same_tensors(
        {f"model.{k}": v for k, v in snap["model"].items()},
        {f"model.{k}": v for k, v in tr.model.state_dict().items()},
    )
    assert all(torch.equal(v, tr.ema.state_dict()[k]) for k, v in snap["ema"].items())
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [4]
    assert [s for s, *_ in metrics(tmp_path / "run")][-1] == 6  # steps 6 was read and logged before the stop
    b = tr.bundle()  # the app can still sample from the last good state
    assert all(torch.isfinite(p).all() for p in b.model.parameters())


def test_nan_gradient_with_finite_loss_is_caught_too(tmp_path, data):
    tr = Trainer(cfg(steps=10, grad_clip=0.0), tmp_path / "run", data=data)

    def hook(s: int) -> None:
        if s == 3:
            p = next(tr.model.parameters())
            h = p.register_hook(lambda g: (h.remove(), g * float("inf"))[1])

    tr.fault_hook = hook
    fail = run_all(tr)[-1]
    assert (
        isinstance(fail, ev.Failed) and "gradient norm became" in fail.message and "at step 4" in fail.message
    )
    assert "gradient clipping" in fail.message  # grad_clip was off: the advice says to turn it on
    assert all(torch.isfinite(p).all() for p in tr.model.parameters())


def test_nan_loss_device_guard_skips_the_update_without_a_sync(tmp_path, data):
    """The CUDA path (nan_guard='device', exercised here with the CPU's fused AdamW): the bad step is
    skipped on the device (found_inf), later good steps go on until the next read, which stops the run.
    The weights, the EMA and the per-timestep statistics stay finite; no checkpoint after the bad step."""
    tr = Trainer(cfg(steps=30, log_every=4, checkpoint_every=4), tmp_path / "run", data=data)
    tr.nan_guard = "device"
    hook, _ = nan_output_at(tr, 5)
    tr.fault_hook = hook
    events = run_all(tr)
    fail = events[-1]
    assert tr._device_guard and isinstance(fail, ev.Failed)
    assert "at step 6" in fail.message and fail.step == 8  # found at the read of step 8
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [4]
    for m in (tr.model, tr.ema):
        assert all(torch.isfinite(p).all() for p in m.parameters())
    assert torch.isfinite(tr.t_loss_sum).all()
    steps_done = {int(s["step"]) for s in tr.optim.state_dict()["state"].values()}
    assert steps_done == {7}  # 8 steps ran, the bad one was skipped by the fused kernel
    prog = [e for e in events if isinstance(e, ev.Progress)]
    assert np.concatenate([p.steps for p in prog]).tolist() == [1, 2, 3, 4, 5]  # the good ones before it


def test_device_guard_training_matches_host_guard_when_all_is_finite(tmp_path, data):
    """The guard changes nothing while the losses are finite: both use the fused AdamW, so the weights are
    bitwise equal (a for-each AdamW would not do: biases in front of a GroupNorm have gradients of pure rounding
    noise, which Adam scales up to full-size steps)."""
    a = Trainer(cfg(steps=4), tmp_path / "a", data=data)
    run_all(a)
    b = Trainer(cfg(steps=4), tmp_path / "b", data=data)
    b.nan_guard = "device"
    assert isinstance(run_all(b)[-1], ev.Finished)
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k


# ----------------------------------------------------------------------------- out of memory


def test_oom_halving_survives_resume_and_oom_in_the_update_stops(tmp_path, data):
    run = tmp_path / "run"
    tr = Trainer(cfg(steps=4, batch_size=8), run, data=data)
    fired = []

    def oom(step: int) -> None:
        if step == 1 and not fired:
            fired.append(1)
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    tr.fault_hook = oom
    assert isinstance(run_all(tr)[-1], ev.Finished)
    events = run_all(Trainer(cfg(steps=6, batch_size=8), run, resume=True, data=data))
    assert next(e for e in events if isinstance(e, ev.Started)).batch_size == 4
    assert any(isinstance(e, ev.Notice) and "halved earlier" in e.message for e in events)
    # out of memory inside the optimizer step: the weights may be half-updated, so stop without saving
    tr = Trainer(cfg(steps=20, checkpoint_every=2), tmp_path / "run2", data=data)
    real_step = None

    def hook(step: int) -> None:
        nonlocal real_step
        if step == 3:
            real_step = tr.optim.step

            def boom(*a, **k):
                tr.optim.step = real_step
                raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB")

            tr.optim.step = boom

    tr.fault_hook = hook
    fail = run_all(tr)[-1]
    assert isinstance(fail, ev.Failed) and "while updating the weights" in fail.message
    assert [s for s, _ in list_checkpoints(tmp_path / "run2")] == [2]


# ----------------------------------------------------------------------------- disks and folders


def failing_replace(monkeypatch, err: int, after: int = 0):
    """os.replace fails (disk full / no permission) for checkpoint files after `after` successful ones."""
    real = os.replace
    seen = []

    def fake(src, dst, *a, **k):
        if str(dst).endswith(".safetensors"):
            seen.append(dst)
            if len(seen) > after:
                raise OSError(err, os.strerror(err), str(dst))
        return real(src, dst, *a, **k)

    monkeypatch.setattr(fileio.os, "replace", fake)


@pytest.mark.parametrize(
    "err,words", [(errno.ENOSPC, "free some disk space"), (errno.EACCES, "writable run folder")]
)
def test_disk_full_or_unwritable_keeps_the_last_good_checkpoint(tmp_path, data, monkeypatch, err, words):
    run = tmp_path / "run"
    failing_replace(monkeypatch, err, after=1)
    events = run_all(Trainer(cfg(steps=8, checkpoint_every=2), run, data=data))
    fail = events[-1]
    assert isinstance(fail, ev.Failed) and os.strerror(err) in fail.message and words in fail.message
    assert "previous files were kept" in fail.message
    assert fail.checkpoint and fail.checkpoint.endswith("step_00000002.safetensors")
    assert [s for s, _ in list_checkpoints(run)] == [2]
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]  # no partial file
    load_checkpoint(checkpoint_path(run, 2))
    monkeypatch.undo()
    events = run_all(Trainer(cfg(steps=8, checkpoint_every=2), run, resume=True, data=data))
    assert isinstance(events[-1], ev.Finished) and events[-1].step == 8


def test_run_folder_that_cannot_be_created(tmp_path, data):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    fail = run_all(Trainer(cfg(), blocker / "run", data=data))[-1]
    assert isinstance(fail, ev.Failed) and "Cannot create the run folder" in fail.message


def test_two_trainers_never_share_a_run_folder(tmp_path, data):
    run = tmp_path / "run"
    first = Trainer(cfg(steps=3), run, data=data)
    gen = first.run()
    assert isinstance(next(gen), ev.Notice)  # the folder is locked once setup began
    second = run_all(Trainer(cfg(steps=3), run, resume=True, data=data))
    assert isinstance(second[-1], ev.Failed) and "in use by another training run" in second[-1].message
    assert str(os.getpid()) in second[-1].message
    assert isinstance(list(gen)[-1], ev.Finished)  # the lock goes with the run
    assert isinstance(run_all(Trainer(cfg(steps=4), run, resume=True, data=data))[-1], ev.Finished)


def test_data_cache_vanishing_mid_run_and_corrupt_between_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("DDPM_GUI_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    tr = Trainer(cfg(data="builtin:64", steps=4), run)  # the trainer loads (and caches) the data itself

    def wipe(step: int) -> None:
        if step == 2:
            for f in (tmp_path / "cache").iterdir():
                f.unlink()

    tr.fault_hook = wipe
    assert isinstance(run_all(tr)[-1], ev.Finished)  # the data is in memory once loaded
    load_data("builtin:64", image_size=16)  # cached again
    (cache_file,) = (tmp_path / "cache").iterdir()
    cache_file.write_bytes(b"garbage" * 10)
    events = run_all(Trainer(cfg(data="builtin:64", steps=6), run, resume=True))
    assert isinstance(events[-1], ev.Finished)  # a damaged cache is rebuilt
    # an image folder that disappeared between two runs: a clear message
    folder = tmp_path / "pics"
    folder.mkdir()
    for i in range(4):
        from PIL import Image

        Image.fromarray(np.full((16, 16, 3), i * 40, np.uint8)).save(folder / f"{i}.png")
    run2 = tmp_path / "run2"
    assert isinstance(run_all(Trainer(cfg(data=str(folder), steps=2), run2))[-1], ev.Finished)
    for f in folder.iterdir():
        f.unlink()
    folder.rmdir()
    fail = run_all(Trainer(cfg(data=str(folder), steps=4), run2, resume=True))[-1]
    assert isinstance(fail, ev.Failed) and "does not exist" in fail.message


# ----------------------------------------------------------------------------- run folder versions


def test_run_folder_from_a_newer_or_older_version(tmp_path, data):
    from ddpm_gui.engine.config import RUN_CONFIG, config_toml
    from ddpm_gui.engine.runfolder import MARKER

    run = tmp_path / "run"
    run_all(Trainer(cfg(steps=2), run, data=data))
    saved = cfg(steps=2).to_dict()
    # older: a run folder of a version with config.json and no marker; fields it did not know take their
    # defaults
    (run / RUN_CONFIG).unlink()
    (run / MARKER).unlink()
    old = {k: saved[k] for k in ("data", "image_size", "preset", "schedule", "prediction", "steps", "device")}
    (run / "config.json").write_text(json.dumps(old))
    c = load_run_config(run)
    assert c.image_size == 16 and c.lr == TrainConfig().lr and c.version == 1
    # newer config: refused, and not overwritten
    (run / "config.json").write_text(json.dumps({**saved, "version": 7}))
    fail = run_all(Trainer(cfg(steps=4), run, resume=True, data=data))[-1]
    assert isinstance(fail, ev.Failed) and "newer DDPM Studio" in fail.message
    assert json.loads((run / "config.json").read_text())["version"] == 7 and not (run / RUN_CONFIG).exists()
    (run / RUN_CONFIG).write_text(config_toml({**saved, "version": 7}))
    fail = run_all(Trainer(cfg(steps=4), run, resume=True, data=data))[-1]
    assert isinstance(fail, ev.Failed) and "newer DDPM Studio" in fail.message
    assert "version = 7" in (run / RUN_CONFIG).read_text()
    (run / RUN_CONFIG).unlink()
    # newer checkpoint format: refused, not skipped and not renamed
    (run / "config.json").write_text(json.dumps(saved))
    tensors, meta = load_checkpoint(checkpoint_path(run, 2))
    newer = ck.save_checkpoint(
        checkpoint_path(run, 3), tensors, {**meta, "format_version": ck.FORMAT_VERSION + 1}
    )
    fail = run_all(Trainer(cfg(steps=4), run, resume=True, data=data))[-1]
    assert isinstance(fail, ev.Failed) and "newer DDPM Studio" in fail.message and newer.exists()
    # damaged or foreign config.json
    for text in ("{not json", "[1, 2]", "\udcff"):
        (run / "config.json").write_bytes(text.encode("utf-8", "surrogateescape"))
        with pytest.raises((CheckpointError, ConfigError)):
            load_run_config(run)


# ----------------------------------------------------------------------------- every input door (CLI)


BAD_TRAIN_ARGS = [
    (["--lr", "-0.1"], "--lr: must be from 1e-08 to 1"),  # ranges from TrainConfig's settings
    (["--lr", "nan"], "--lr: expected a finite number"),
    (["--T", "0"], "T must be"),
    (["--beta-start", "1.5"], "beta_start"),
    (["--beta-end", "0"], "beta_end"),
    (["--image-size", "30"], "multiple of 8"),
    (["--preset", "huge"], "Unknown preset"),
    (["--schedule", "wiggly"], "Unknown schedule"),
    (["--ema", "1"], "--ema: must be from 0 to 0.99999"),
    (["--device", "cuda:x"], "device must be"),
    (["--checkpoint-minutes", "-1"], "--checkpoint-minutes: must be from 0"),
    (["--grad-clip", "inf"], "--grad-clip: expected a finite number"),
    (["--batch-size", "0"], "--batch-size: must be from 1 to 65,536"),
    (["--steps", "-5"], "--steps: must be from 1 to 100,000,000"),
]


@pytest.mark.parametrize("args,words", BAD_TRAIN_ARGS, ids=[a[0][0] + "=" + a[0][1] for a in BAD_TRAIN_ARGS])
def test_cli_train_validates_every_argument(tmp_path, capsys, args, words):
    try:
        code = cli.main(["train", "--out", str(tmp_path / "run"), "--device", "cpu", *args])
    except SystemExit as e:  # argparse's own errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and words in err and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(("error:", "usage:", "ddpm-gui train: error:"))
    assert not (tmp_path / "run").exists()  # nothing written for a refused run


def test_cli_resume_of_newer_or_missing_run_is_one_line(tmp_path, capsys):
    assert cli.main(["train", "--out", str(tmp_path / "nothing"), "--resume"]) == 2
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "config.json").write_text(json.dumps({**TrainConfig().to_dict(), "version": 9}))
    assert cli.main(["train", "--out", str(tmp_path / "new"), "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "not a DDPM Studio run folder" in err[0] and "newer DDPM Studio" in err[1]


def run_cli(*args, env=None, fault=None, timeout=300) -> subprocess.CompletedProcess:
    """`ddpm-gui ARGS` in a real process; with `fault`, started through scripts/fault_cli.py (see there)."""
    e = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    e.pop("DDPM_GUI_DEBUG", None)
    cmd = _fault_injection().fault_cli.command(*args, fault=fault)
    return subprocess.run(cmd, capture_output=True, text=True, env=e, timeout=timeout, cwd=ROOT)


def test_cli_disk_full_is_one_line_and_resume_finishes(tmp_path, data):
    """The real process: a full disk at the 2nd save (scripts/fault_cli.py --fault enospc:2) is one error
    line, exit 1, no partial file; --resume (with a new learning rate) then finishes the run."""
    run = tmp_path / "run"
    env = {"DDPM_GUI_CACHE": str(tmp_path / "cache")}
    args = ["train", "--data", "builtin:256", "--image-size", "16", "--batch-size", "8", "--steps", "6",
            "--checkpoint-every", "2", "--checkpoint-minutes", "0", "--device", "cpu", "--out", str(run)]  # fmt: skip
    p = run_cli(*args, env=env, fault="enospc:2")
    errors = [ln for ln in p.stderr.splitlines() if "error" in ln.lower()]
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    assert len(errors) == 1 and "No space left on device" in errors[0] and "free some disk space" in errors[0]
    assert [s for s, _ in list_checkpoints(run)] == [2] and not list((run / "checkpoints").glob(".*"))
    p = run_cli("train", "--out", str(run), "--resume", "--lr", "0.0005", env=env)
    assert p.returncode == 0, p.stderr
    assert "completed at step 6" in p.stdout and "ignored" not in p.stderr, p.stderr


# ----------------------------------------------------------------------------- SIGKILL, the CI subset


def _fault_injection():
    return load_script("fault_injection")


def test_sigkill_fault_injection_ci_subset(tmp_path):
    """3 SIGKILLs (two exactly inside a save, one at a random moment of training) and one Ctrl+C, each
    followed by --resume: every checkpoint on disk loads, and the resumed run ends bitwise equal to an
    uninterrupted one. The long count: `python scripts/fault_injection.py --runs 70 --seed 21` (docs/reliability.md)."""
    fi = _fault_injection()
    rows = fi.campaign(4, seed=4, modes=("in-save", "training", "in-save", "sigint"), steps=8, workdir=tmp_path,
                       log=lambda s: None)  # fmt: skip
    print(fi.summary(rows))
    assert [r["violations"] for r in rows] == [[]] * 4
    assert all(r["bitwise"] and r["metrics_equal"] and r["resume_rc"] == 0 for r in rows)
    assert rows[0]["landed"] and rows[2]["landed"]  # the in-save kills always land
