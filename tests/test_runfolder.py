"""The run folder: what training may delete or rewrite (only files it can prove it wrote), what resuming
accepts (settings that may change, a run without checkpoints, changed data), and how failures are
classified (bad input or a runtime failure)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_all, small_config

from ddpm_gui import cli
from ddpm_gui.engine import events as ev
from ddpm_gui.engine.checkpoint import checkpoint_path, list_checkpoints
from ddpm_gui.engine.config import RUN_CONFIG, TrainConfig, read_config_toml
from ddpm_gui.engine.runfolder import (
    MARKER,
    HistoryWithoutCheckpoint,
    RunFolder,
    check_new_run_dir,
    check_resume_dir,
    is_run_dir,
    resume_data_change,
)
from ddpm_gui.engine.text import fmt_duration
from ddpm_gui.engine.trainer import Trainer, is_oom
from ddpm_gui.errors import CheckpointError, ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

CPU_OOM = (
    "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried to "
    "allocate 4294967296 bytes. Error code 12 (Cannot allocate memory)"
)


def cfg(**kw) -> TrainConfig:
    return small_config(**{"steps": 6, **kw})


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def metric_lines(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def crash_at(step: int):
    def hook(s: int) -> None:
        if s == step:
            raise RuntimeError(f"simulated crash before step {step + 1}")

    return hook


def users_folder(tmp_path: Path) -> Path:
    """A folder of someone's own files that happen to have a run folder's names."""
    folder = tmp_path / "mine"
    (folder / "samples").mkdir(parents=True)
    (folder / "config.json").write_text('{"my": "settings"}\n')
    (folder / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.4}\n')
    (folder / ".draft.tmp").write_text("a draft")
    (folder / "samples" / ".n.tmp").write_text("notes")
    return folder


# ----------------------------------------------------------------------------- 1. nothing of the user's lost


@pytest.mark.parametrize("resume", [False, True], ids=["new", "resume"])
def test_training_into_a_folder_that_is_not_a_run_touches_nothing(tmp_path, data, resume):
    folder = users_folder(tmp_path)
    before = snapshot(folder)
    events = run_all(Trainer(cfg(), folder, resume=resume, data=data))
    fail = events[-1]
    assert isinstance(fail, ev.Failed) and "not a DDPM Studio run folder" in fail.message, events
    assert fail.bad_input and "\n" not in fail.message
    assert not any(isinstance(e, ev.Started) for e in events)
    assert snapshot(folder) == before  # nothing deleted, rewritten or added (not even a lock file)
    assert not is_run_dir(folder)
    with pytest.raises(ConfigError, match="not a DDPM Studio run folder"):
        check_new_run_dir(folder)


def test_cli_train_out_into_someone_elses_folder_fails_and_keeps_every_file(tmp_path, capsys):
    folder = users_folder(tmp_path)
    before = snapshot(folder)
    args = ["train", "--data", "builtin:64", "--image-size", "16", "--steps", "2", "--device", "cpu"]
    code = cli.main([*args, "--out", str(folder)])
    err = capsys.readouterr().err
    assert code != 0 and "not a DDPM Studio run folder" in err and "Traceback" not in err
    assert snapshot(folder) == before


def test_an_empty_run_folder_path_is_refused(tmp_path, data, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an empty path would otherwise mean the current folder
    for blank in ("", "   "):
        with pytest.raises(ConfigError, match="run folder"):
            check_new_run_dir(blank)
        with pytest.raises(ConfigError, match="run folder"):
            Trainer(cfg(), blank, data=data)
        with pytest.raises(ConfigError, match="run folder"):
            RunFolder(blank)
    assert list(tmp_path.iterdir()) == []


def test_new_run_folders_empty_existing_and_a_file(tmp_path):
    check_new_run_dir(tmp_path / "does" / "not" / "exist")  # created when the run starts
    (tmp_path / "empty").mkdir()
    check_new_run_dir(tmp_path / "empty")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not a folder"):
        check_new_run_dir(tmp_path / "file")
    assert not is_run_dir(tmp_path / "empty") and not is_run_dir(tmp_path / "nothing")


def test_a_run_is_marked_and_a_second_new_run_there_is_refused(tmp_path, data):
    run = tmp_path / "run"
    events = run_all(Trainer(cfg(steps=2), run, data=data))
    assert isinstance(events[-1], ev.Finished)
    marker = json.loads((run / MARKER).read_text())
    assert marker["format"] == "ddpm-studio-run" and marker["run_id"]
    assert is_run_dir(run)
    assert read_config_toml(run / RUN_CONFIG)["lr"] == 1e-3
    assert not (run / "config.json").exists()
    with pytest.raises(ConfigError, match="resume"):
        check_new_run_dir(run)
    before = snapshot(run)
    fail = run_all(Trainer(cfg(steps=4), run, data=data))[-1]
    assert isinstance(fail, ev.Failed) and "resume" in fail.message and fail.bad_input
    assert {k: v for k, v in snapshot(run).items() if k != ".lock"} == {
        k: v for k, v in before.items() if k != ".lock"
    }


def test_resume_removes_only_the_apps_own_temp_files(tmp_path, data):
    run = tmp_path / "run"
    run_all(Trainer(cfg(steps=2), run, data=data))
    ours = [
        run / "checkpoints" / ".step_00000004.safetensors.ddpm-tmp-0a1b2c3d",  # what a killed save leaves
        run / "checkpoints" / ".step_00000004.safetensors.k2j3h4ab.tmp",  # ... as older versions named it
    ]
    for p in ours:
        p.write_bytes(b"half a checkpoint")
    theirs = [run / ".draft.tmp", run / "samples" / ".n.tmp", run / "checkpoints" / ".notes.tmp"]
    for p in theirs:
        p.write_text("someone's file")
    (run / "samples" / ".x.ddpm-tmp-0a1b2c3d").mkdir()  # a folder under a temp name is not a temp file
    events = run_all(Trainer(cfg(steps=4), run, resume=True, data=data))
    assert isinstance(events[-1], ev.Finished)
    assert not any(p.exists() for p in ours)
    assert all(p.read_text() == "someone's file" for p in theirs)
    assert (run / "samples" / ".x.ddpm-tmp-0a1b2c3d").is_dir()
    notes = " ".join(e.message for e in events if isinstance(e, ev.Notice))
    assert "Removed 2 unfinished file" in notes


def test_an_older_run_without_marker_is_recognised_by_its_checkpoints(tmp_path, data):
    """A run folder written before the marker existed: config.json and valid checkpoints. It resumes (and is
    marked then); config.json plus a file that only has a checkpoint's name is not a run."""
    run = tmp_path / "run"
    run_all(Trainer(cfg(steps=2), run, data=data))
    (run / MARKER).unlink()
    (run / RUN_CONFIG).unlink()
    (run / "config.json").write_text(json.dumps(cfg(steps=2).to_dict()))
    assert is_run_dir(run)
    events = run_all(Trainer(cfg(steps=4), run, resume=True, data=data))
    assert next(e for e in events if isinstance(e, ev.Started)).step == 2
    assert isinstance(events[-1], ev.Finished) and events[-1].step == 4
    assert (run / MARKER).exists()

    fake = tmp_path / "fake"
    (fake / "checkpoints").mkdir(parents=True)
    (fake / "config.json").write_text("{}")
    (fake / "checkpoints" / "step_00000002.safetensors").write_bytes(b"not a checkpoint")
    assert not is_run_dir(fake)
    before = snapshot(fake)
    assert isinstance(run_all(Trainer(cfg(), fake, resume=True, data=data))[-1], ev.Failed)
    assert snapshot(fake) == before


def test_resume_truncates_metrics_only_past_the_resumed_step(tmp_path, data):
    run = tmp_path / "run"
    tr = Trainer(cfg(steps=10, checkpoint_every=4), run, data=data)
    tr.fault_hook = crash_at(6)
    assert isinstance(run_all(tr)[-1], ev.Failed)
    *losses, failed = metric_lines(run)
    assert [r["step"] for r in losses] == [1, 2, 3, 4, 5, 6]
    assert failed["event"] == "failed" and failed["step"] == 6  # the history ends with how the run ended
    events = run_all(Trainer(cfg(steps=10, checkpoint_every=4), run, resume=True, data=data))
    assert isinstance(events[-1], ev.Finished)
    assert [r["step"] for r in metric_lines(run)] == list(range(1, 11))


# ----------------------------------------------------------------------------- 2. settings changed on resume


def test_resume_applies_and_records_the_settings_that_may_change(tmp_path, data):
    run = tmp_path / "run"
    run_all(Trainer(cfg(steps=6), run, data=data))
    new = cfg(steps=9, lr=1e-4, batch_size=4, weight_decay=0.05)
    tr = Trainer(new, run, resume=True, data=data)
    events = run_all(tr)
    assert isinstance(events[-1], ev.Finished) and events[-1].step == 9, events[-1]
    notes = [e.message for e in events if isinstance(e, ev.Notice)]
    assert "lr 0.001 -> 0.0001 from step 7" in notes
    assert "batch_size 8 -> 4 from step 7" in notes
    assert next(e for e in events if isinstance(e, ev.Started)).batch_size == 4
    assert all(p.batch_size == 4 for p in events if isinstance(p, ev.Progress) and p.step > 6)
    lines = metric_lines(run)
    (rec,) = [r for r in lines if r.get("event") == "settings"]
    assert rec["step"] == 6
    assert rec["changed"]["lr"] == [1e-3, 1e-4] and rec["changed"]["batch_size"] == [8, 4]
    assert [r["lr"] for r in lines if "loss" in r and r["step"] > 6] == [1e-4] * 3
    assert all(g["lr"] == 1e-4 and g["weight_decay"] == 0.05 for g in tr.optim.param_groups)
    saved = read_config_toml(run / RUN_CONFIG)
    assert saved["lr"] == 1e-4 and saved["batch_size"] == 4 and saved["steps"] == 9


def test_resume_refuses_a_change_of_a_fixed_setting_naming_it(tmp_path, data):
    run = tmp_path / "run"
    run_all(Trainer(cfg(steps=2), run, data=data))
    before = snapshot(run)
    fail = run_all(Trainer(cfg(steps=4, seed=7), run, resume=True, data=data))[-1]
    assert isinstance(fail, ev.Failed) and "seed" in fail.message and fail.bad_input
    assert [s for s, _ in list_checkpoints(run)] == [2]
    assert snapshot(run)["metrics.jsonl"] == before["metrics.jsonl"]


# --------------------------------------------------------------------------- 3. no checkpoint, but a history


def test_resume_without_checkpoint_but_with_history_asks_for_a_restart(tmp_path, data):
    run = tmp_path / "run"
    tr = Trainer(cfg(steps=10), run, data=data)
    tr.fault_hook = crash_at(5)
    assert isinstance(run_all(tr)[-1], ev.Failed)
    assert list_checkpoints(run) == []
    history = (run / "metrics.jsonl").read_bytes()
    with pytest.raises(HistoryWithoutCheckpoint) as e:
        check_resume_dir(run)
    assert isinstance(e.value, CheckpointError)
    fail = run_all(Trainer(cfg(steps=10), run, resume=True, data=data))[-1]
    assert isinstance(fail, ev.Failed) and not any(isinstance(e, ev.Started) for e in [fail])
    assert "5 logged steps up to step 5" in fail.message and "no checkpoint" in fail.message
    assert "restart" in fail.message
    assert (run / "metrics.jsonl").read_bytes() == history  # the history is not dropped

    events = run_all(Trainer(cfg(steps=4), run, resume=True, restart=True, data=data))
    assert next(e for e in events if isinstance(e, ev.Started)).step == 0
    assert isinstance(events[-1], ev.Finished) and events[-1].step == 4
    assert any(isinstance(e, ev.Notice) and "from step 0" in e.message for e in events)
    kept = [p for p in run.glob("metrics.*.jsonl")]
    assert len(kept) == 1 and kept[0].read_bytes() == history
    assert [r["step"] for r in metric_lines(run)] == [1, 2, 3, 4]
    check_resume_dir(run)  # a checkpoint now: nothing to ask


def test_restart_refuses_a_run_that_has_checkpoints(tmp_path, data):
    run = tmp_path / "run"
    run_all(Trainer(cfg(steps=2), run, data=data))
    fail = run_all(Trainer(cfg(steps=4), run, resume=True, restart=True, data=data))[-1]
    assert isinstance(fail, ev.Failed) and "checkpoint" in fail.message
    assert [s for s, _ in list_checkpoints(run)] == [2] and not list(run.glob("metrics.*.jsonl"))


@pytest.mark.parametrize("folders", [False, True], ids=["marker-only", "marker-and-empty-folders"])
def test_a_run_killed_before_its_config_existed_resumes_from_the_start(tmp_path, data, folders):
    run = tmp_path / "run"
    rf = RunFolder(run)
    rf.create()
    rf.release()
    if folders:
        (run / "checkpoints").mkdir(exist_ok=True)
        (run / "samples").mkdir(exist_ok=True)
    else:
        for sub in ("checkpoints", "samples"):
            if (run / sub).exists():
                (run / sub).rmdir()
    assert is_run_dir(run)
    check_resume_dir(run)
    events = run_all(Trainer(cfg(steps=3), run, resume=True, data=data))
    assert not [e for e in events if isinstance(e, ev.Notice) and e.level == "warning"]
    assert next(e for e in events if isinstance(e, ev.Started)).step == 0
    assert isinstance(events[-1], ev.Finished) and events[-1].step == 3


def test_resume_of_a_folder_that_does_not_exist_is_refused(tmp_path, data):
    fail = run_all(Trainer(cfg(), tmp_path / "nothing", resume=True, data=data))[-1]
    assert isinstance(fail, ev.Failed) and "nothing to resume" in fail.message
    assert not (tmp_path / "nothing").exists()
    with pytest.raises(CheckpointError, match="nothing to resume"):
        check_resume_dir(tmp_path / "nothing")


# ----------------------------------------------------------------------------- 4. out of memory on the CPU


def test_cpu_and_mps_allocator_failures_are_out_of_memory():
    assert is_oom(RuntimeError(CPU_OOM))
    assert is_oom(RuntimeError("MPS backend out of memory (MPS allocated: 1.00 GB, other allocations: 0)"))
    assert is_oom(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not is_oom(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))


def test_cpu_out_of_memory_in_the_forward_halves_the_batch(tmp_path, data):
    tr = Trainer(cfg(steps=4), tmp_path / "run", data=data)
    fired = []

    def hook(step: int) -> None:
        if step == 1 and not fired:
            fired.append(step)
            fwd = tr.model.forward

            def once(*a, **k):
                tr.model.forward = fwd
                raise RuntimeError(CPU_OOM)

            tr.model.forward = once

    tr.fault_hook = hook
    events = run_all(tr)
    notes = [e.message for e in events if isinstance(e, ev.Notice) and e.level == "warning"]
    assert any("batch size halved to 4" in n for n in notes), events[-1]
    assert isinstance(events[-1], ev.Finished) and events[-1].step == 4


# ----------------------------------------------------------------------------- 5. the data checked on resume


def changed(d, images=None, labels=None):
    from ddpm_gui.data.sources import ImageData

    imgs = d.images if images is None else images
    return ImageData(imgs, d.labels if labels is None else labels, d.class_names, d.name, d.source, None)


def test_resume_refuses_changed_data_unless_allowed(tmp_path, data):
    run = tmp_path / "run"
    small = data.subset(slice(0, 64))
    run_all(Trainer(cfg(steps=2), run, data=small))
    more = changed(
        small,
        images=np.concatenate([small.images, small.images[:3]]),
        labels=np.concatenate([small.labels, small.labels[:3]]),
    )
    assert resume_data_change(run, small) is None
    assert resume_data_change(run, more) == "it had 64 images, now 67"  # asked before resuming, in the app
    fail = run_all(Trainer(cfg(steps=4), run, resume=True, data=more))[-1]
    assert isinstance(fail, ev.Failed) and "64 images" in fail.message and "67" in fail.message
    assert "allow" in fail.message and fail.bad_input
    edited = small.images.copy()
    edited[5, 0, 0, 0] ^= 1
    fail = run_all(Trainer(cfg(steps=4), run, resume=True, data=changed(small, images=edited)))[-1]
    assert isinstance(fail, ev.Failed) and "content" in fail.message
    relabelled = changed(small, labels=(small.labels + 1) % 10)
    fail = run_all(Trainer(cfg(steps=4), run, resume=True, data=relabelled))[-1]
    assert isinstance(fail, ev.Failed) and "labels" in fail.message
    assert [s for s, _ in list_checkpoints(run)] == [2]

    events = run_all(Trainer(cfg(steps=4), run, resume=True, data=more, allow_data_change=True))
    assert isinstance(events[-1], ev.Finished) and events[-1].step == 4
    assert any(isinstance(e, ev.Notice) and e.level == "warning" and "67" in e.message for e in events)
    (rec,) = [r for r in metric_lines(run) if r.get("event") == "data_changed"]
    assert rec["step"] == 2 and "67" in rec["message"]
    # the change is recorded with the new checkpoints: resuming with the new data is no change any more
    events = run_all(Trainer(cfg(steps=5), run, resume=True, data=more))
    assert isinstance(events[-1], ev.Finished) and events[-1].step == 5


# ------------------------------------------------------------------------- 6. bad input or a runtime failure


def test_failed_says_whether_the_input_was_bad(tmp_path, data, monkeypatch):
    fail = run_all(Trainer(cfg(data=str(tmp_path / "no-such-folder")), tmp_path / "a"))[-1]
    assert isinstance(fail, ev.Failed) and fail.bad_input, fail
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    fail = run_all(Trainer(cfg(device="cuda"), tmp_path / "b", data=data))[-1]
    assert isinstance(fail, ev.Failed) and fail.bad_input and "no CUDA GPU" in fail.message
    tr = Trainer(cfg(steps=6), tmp_path / "c", data=data)
    tr.fault_hook = crash_at(2)
    fail = run_all(tr)[-1]
    assert isinstance(fail, ev.Failed) and not fail.bad_input
    tr = Trainer(cfg(steps=6), tmp_path / "d", data=data)

    def poison(step: int) -> None:
        if step == 2:
            with torch.no_grad():
                next(tr.model.parameters()).fill_(float("nan"))

    tr.fault_hook = poison
    fail = run_all(tr)[-1]
    assert isinstance(fail, ev.Failed) and "learning rate" in fail.message and not fail.bad_input


def test_fmt_duration():
    assert fmt_duration(5) == "5s"
    assert fmt_duration(125) == "2m 05s"
    assert fmt_duration(3 * 3600 + 60) == "3h 01m"
    assert fmt_duration(float("nan")) == "–" and fmt_duration(None) == "–" and fmt_duration(-1) == "–"


def test_checkpoint_path_is_unchanged(tmp_path):
    assert RunFolder(tmp_path).checkpoint_path(12) == checkpoint_path(tmp_path, 12)


def test_cli_resumes_a_run_killed_before_its_settings_were_written(tmp_path):
    """A kill at any moment resumes: a folder holding only the marker (and its empty folders) is a run
    that has not started, and `--resume` starts it with the options given."""
    from ddpm_gui import cli
    from ddpm_gui.engine.config import load_run_config
    from ddpm_gui.engine.runfolder import RunFolder

    run = tmp_path / "run"
    folder = RunFolder(run)
    folder.create()
    folder.release()
    assert not (run / "config.toml").exists()
    code = cli.main(["train", "--out", str(run), "--resume", "--data", "builtin:64", "--image-size", "16",
                     "--batch-size", "4", "--steps", "2", "--device", "cpu", "--preview-every", "0"])  # fmt: skip
    assert code == 0
    assert load_run_config(run).steps == 2 and (run / "checkpoints" / "step_00000002.safetensors").exists()
