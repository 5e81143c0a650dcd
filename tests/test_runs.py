"""The runs of a runs folder (engine/runs.py) and the training queue (engine/queue.py, `ddpm-gui queue`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ddpm_gui import cli
from ddpm_gui.engine import events as ev
from ddpm_gui.engine import runs
from ddpm_gui.engine.fileio import atomic_write_bytes
from ddpm_gui.engine.queue import QUEUE_FILE, RunQueue
from ddpm_gui.engine.trainer import Trainer
from ddpm_gui.errors import ConfigError
from tests.conftest import small_config

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
DEADLINE_S = 600  # generous: the machine may be busy; nothing here is timed


def train(run: Path, data, stop_at: int | None = None, fail_at: int | None = None, **kw) -> list:
    tr = Trainer(small_config(**kw), run, data=data)

    def hook(step: int) -> None:
        if step == stop_at:
            tr.stop()
        if step == fail_at:
            raise RuntimeError("injected failure")

    tr.fault_hook = hook
    return list(tr.run())


def file_records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_finished_stopped_and_a_diff_of_their_settings(tmp_path, data):
    train(tmp_path / "a", data, steps=4)
    train(tmp_path / "b", data, steps=30, stop_at=5, lr=5e-4)
    (tmp_path / "not-a-run").mkdir()
    infos = {r.name: r for r in runs.scan_runs(tmp_path)}
    assert set(infos) == {"a", "b"}
    a, b = infos["a"], infos["b"]
    assert (a.status, a.step, a.total_steps) == (runs.FINISHED, 4, 4)
    assert (b.status, b.step, b.total_steps) == (
        runs.STOPPED,
        6,
        30,
    )  # stop() during step 6: it ends after it
    assert a.preset == "tiny" and a.data == "builtin:256" and a.created > 0
    loss = [r["loss"] for r in file_records(tmp_path / "a") if "loss" in r]
    assert a.last_loss == pytest.approx(loss[-1])
    rows = {row.name: row.values for row in runs.settings_diff([a, b])}
    assert rows == {"lr": ("0.001", "0.0005"), "steps": ("4", "30")}
    assert runs.settings_diff([a, a]) == []


def test_failure_record_marks_a_run_failed_and_a_resume_clears_it(tmp_path, data):
    run = tmp_path / "r"
    train(run, data, steps=30, stop_at=6, checkpoint_every=3)
    with open(run / "metrics.jsonl", "a") as f:  # what the trainer logs when a run fails
        f.write(json.dumps(runs.failure_record(8, "Training failed: boom")) + "\n")
    info = runs.read_run(run)
    assert info.status == runs.FAILED and "boom" in info.error
    tr = Trainer(small_config(steps=8, checkpoint_every=3), run, resume=True, data=data)
    assert isinstance(list(tr.run())[-1], ev.Finished)
    info = runs.read_run(run)
    assert info.status == runs.FINISHED and info.error == ""


def test_trainer_records_its_failure(tmp_path, data):
    """A run that fails leaves a failure record, so the Runs tab tells it from a stopped one."""
    out = train(tmp_path / "f", data, steps=30, fail_at=4)
    assert isinstance(out[-1], ev.Failed)
    info = runs.read_run(tmp_path / "f")
    assert info.status == runs.FAILED and "injected failure" in info.error


def test_reader_skips_a_half_written_line_and_rereads_a_cut_log(tmp_path):
    path = tmp_path / "metrics.jsonl"
    line = lambda s: json.dumps({"step": s, "loss": 1.0 / s}) + "\n"  # noqa: E731
    path.write_text(line(1) + line(2) + line(3)[:9])
    m = runs.RunMetrics(path)
    assert m.update() and m.steps == [1, 2]
    assert not m.update()  # nothing new: the half line waits
    with open(path, "a") as f:
        f.write(line(3)[9:] + line(4))
    assert m.update() and m.steps == [1, 2, 3, 4] and m.losses[-1] == 0.25
    atomic_write_bytes(path, (line(1) + line(2)).encode())  # a resume cut the log back to step 2
    assert m.update() and m.steps == [1, 2]
    with open(path, "a") as f:
        f.write(line(3))
    reader = runs.MetricsReader(path)
    assert [r["step"] for r in reader.poll()[0]] == [1, 2, 3]
    with open(path, "r+") as f:  # cut in place (same file, shorter)
        f.truncate(len(line(1)))
    recs, reset = reader.poll()
    assert reset and [r["step"] for r in recs] == [1]
    path.unlink()
    assert reader.poll() == ([], True)


def test_temp_files_of_a_save_in_progress_are_not_listed(tmp_path, data):
    run = tmp_path / "r"
    train(run, data, steps=3)
    (run / "checkpoints" / ".step_00000009.safetensors.ddpm-tmp-0123abcd").write_bytes(b"half")
    (run / "samples" / ".step_00000009.png.ddpm-tmp-0123abcd").write_bytes(b"half")
    assert [s for s, _ in runs.checkpoints(run)] == [3]
    assert all(s != 9 for s, _ in runs.previews(run))
    by_t = runs.timestep_loss(runs.checkpoints(run)[-1][1])
    assert (
        by_t is not None and by_t.shape == (small_config().schedule.T,) and (by_t[~(by_t != by_t)] > 0).all()
    )


def _cli_env(tmp_path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", DDPM_GUI_CACHE=str(tmp_path / "cache"))
    env.pop("DDPM_GUI_DEBUG", None)
    return env


def test_follows_a_run_another_process_trains(tmp_path):
    """`ddpm-gui train` in a subprocess: the reader sees its lines arrive while it runs (never a partial
    one) and the run shows as running; stopped by SIGTERM, it shows as stopped."""
    run = tmp_path / "live"
    args = ["train", "--data", "builtin:256", "--image-size", "16", "--preset", "tiny", "--batch-size", "4",
            "--steps", "100000", "--log-every", "1", "--preview-every", "0", "--checkpoint-every", "50",
            "--checkpoint-minutes", "0", "--device", "cpu", "--threads", "1", "--out", str(run)]  # fmt: skip
    p = subprocess.Popen([sys.executable, "-m", "ddpm_gui", *args], cwd=ROOT, env=_cli_env(tmp_path),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        m = runs.RunMetrics(run / "metrics.jsonl")
        seen, growth, statuses = 0, 0, set()
        end = time.monotonic() + DEADLINE_S
        while growth < 3 and time.monotonic() < end and p.poll() is None:
            if m.update() and len(m.steps) > seen:
                growth += seen > 0  # new lines after the first read
                seen = len(m.steps)
                statuses.add(runs.read_run(run).status)
            time.sleep(0.2)
        assert growth >= 3, p.stderr.read().decode() if p.poll() is not None else "no new lines"
        assert statuses == {runs.RUNNING}
        assert m.steps == sorted(m.steps) and m.steps[0] == 1
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=DEADLINE_S) == 128 + signal.SIGTERM
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    m.update()
    recs = [r for r in file_records(run) if "loss" in r]
    assert m.steps == [r["step"] for r in recs] and m.losses == [r["loss"] for r in recs]
    info = runs.read_run(run)
    assert info.status == runs.STOPPED and info.step == m.steps[-1]


# ----------------------------------------------------------------------------- the queue


def test_queue_add_move_remove_pop_and_a_foreign_file(tmp_path):
    q = RunQueue(tmp_path)
    assert q.entries() == []
    a = q.add(small_config(steps=1))
    b = q.add(small_config(steps=2), out=tmp_path / "b")
    c = q.add(small_config(steps=3))
    with pytest.raises(ConfigError, match="already queued"):
        q.add(small_config(), out=tmp_path / "b")
    with pytest.raises(ConfigError):
        q.add(small_config(lr=-1.0))
    assert q.move(c.id, -1) == 1
    assert [e.id for e in RunQueue(tmp_path).entries()] == [a.id, c.id, b.id]
    assert q.remove(2).id == c.id
    assert [e.config.steps for e in q.entries()] == [1, 2]
    first = q.pop_next()
    assert first.id == a.id and first.config == small_config(steps=1)
    q.put_back(first, "its folder is not empty")
    assert q.pop_next().id == b.id and q.pop_next() is None and len(q) == 1
    (tmp_path / QUEUE_FILE).write_text('{"something": "else"}')
    with pytest.raises(ConfigError, match="not DDPM Studio's training queue"):
        q.add(small_config())
    assert (tmp_path / QUEUE_FILE).read_text() == '{"something": "else"}'


WRITER = """
import sys
from ddpm_gui.engine.queue import RunQueue
from tests.conftest import small_config
q = RunQueue(sys.argv[1])
print("ready", flush=True)
while True:
    q.add(small_config(steps=7))
    q.add(small_config(steps=8))
    q.remove(2)
    q.remove(2)
"""


def test_queue_file_survives_sigkill_mid_write(tmp_path):
    """A process rewrites the queue in a loop and is killed (SIGKILL) at arbitrary moments: the file is
    always a whole queue, the old one or the new one (atomic writes)."""
    q = RunQueue(tmp_path)
    q.add(small_config(steps=5))
    valid = {(5,), (5, 7), (5, 7, 8), (5, 8)}
    kills = 0
    for i in range(6):
        p = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE)
        assert p.stdout.readline().strip() == b"ready"
        for _ in range(20):  # reads while it writes
            assert tuple(e.config.steps for e in q.entries()) in valid
        time.sleep(0.05 * (i % 3))
        p.send_signal(signal.SIGKILL)
        p.wait()
        kills += 1
        assert tuple(e.config.steps for e in q.entries()) in valid
    assert kills == 6 and not [n for n in os.listdir(tmp_path) if "ddpm-tmp" in n and n.startswith(".queue")]


def test_cli_queue_add_list_remove_run(tmp_path, capsys):
    small = ["--data", "builtin:256", "--image-size", "16", "--preset", "tiny", "--batch-size", "4",
             "--log-every", "1", "--preview-every", "0", "--checkpoint-minutes", "0", "--device", "cpu"]  # fmt: skip
    runs_dir = tmp_path / "runs"
    assert cli.main(["queue", "add", "--runs", str(runs_dir), "--steps", "2", *small]) == 0
    assert cli.main(["queue", "add", "--runs", str(runs_dir), "--steps", "9", *small]) == 0
    assert (
        cli.main(
            ["queue", "add", "--runs", str(runs_dir), "--steps", "3", "--out", str(tmp_path / "c"), *small]
        )
        == 0
    )
    assert cli.main(["queue", "remove", "--runs", str(runs_dir), "2"]) == 0
    capsys.readouterr()
    assert cli.main(["queue", "list", "--runs", str(runs_dir)]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == 2 and "2 steps" in listed[0] and "3 steps" in listed[1]
    assert cli.main(["queue", "remove", "--runs", str(runs_dir), "7"]) == 2
    assert "No queued run" in capsys.readouterr().err
    assert cli.main(["queue", "run", "--runs", str(runs_dir)]) == 0
    assert "the queue is empty" in capsys.readouterr().out
    done = {r.path: r for r in runs.scan_runs(runs_dir)} | {tmp_path / "c": runs.read_run(tmp_path / "c")}
    assert sorted((r.status, r.step) for r in done.values()) == [(runs.FINISHED, 2), (runs.FINISHED, 3)]
    assert RunQueue(runs_dir).entries() == []


# ----------------------------------------------------------------------------- forking, validation, quality


def tree_bytes(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (relative path -> contents)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_fork_copies_one_checkpoint_and_resumes_there_leaving_the_run_as_it_was(tmp_path, data):
    from ddpm_gui.errors import CheckpointError

    run = tmp_path / "r"
    events = train(run, data, steps=9, checkpoint_every=3, val_every=3, val_size=12)
    assert isinstance(events[-1], ev.Finished)
    assert [s for s, _p in runs.checkpoints(run)] == [3, 6, 9]
    before = tree_bytes(run)
    fork = runs.fork_run(run, 3)
    assert runs.is_run_dir(fork) and runs.read_run(fork).step == 3
    assert fork == tmp_path / "r-from-3"
    assert [s for s, _p in runs.checkpoints(fork)] == [3]
    assert (fork / "checkpoints" / "step_00000003.safetensors").read_bytes() == before[
        "checkpoints/step_00000003.safetensors"
    ]
    assert (fork / "config.toml").read_bytes() == before["config.toml"]
    recs = file_records(fork)
    assert recs and max(r["step"] for r in recs) == 3
    kept = [r for r in file_records(run) if r["step"] <= 3]
    assert recs == kept  # the history up to the step, validation records included
    assert any("val" in r for r in recs)
    assert (fork / ".ddpm-studio-run").read_bytes() != before[".ddpm-studio-run"]  # a run of its own
    assert runs.fork_run(run, 3) == tmp_path / "r-from-3-2"  # never into an existing folder
    with pytest.raises(CheckpointError, match="keeps no checkpoint of step 4"):
        runs.fork_run(run, 4)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        runs.fork_run(run, 6, dest=tmp_path / "taken")
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["notes.txt"]
    assert tree_bytes(run) == before

    # the fork trains on from step 3, as a resume of it
    tr = Trainer(
        small_config(steps=9, checkpoint_every=3, val_every=3, val_size=12), fork, resume=True, data=data
    )
    out = list(tr.run())
    started = next(e for e in out if isinstance(e, ev.Started))
    assert started.step == 3 and isinstance(out[-1], ev.Finished)
    info = runs.read_run(fork)
    assert (info.status, info.step) == (runs.FINISHED, 9)
    assert [r["step"] for r in file_records(fork) if runs.loss_of(r) is not None] == list(range(1, 10))
    assert tree_bytes(run) == before  # the original is byte-identical after the fork trained


def test_a_half_done_fork_is_removed(tmp_path, data, monkeypatch):
    from ddpm_gui.errors import CheckpointError

    run = tmp_path / "r"
    train(run, data, steps=6, checkpoint_every=3)
    before = tree_bytes(run)
    real = runs.atomic_write_bytes

    def fail_on_checkpoint(path, data):
        if str(path).endswith(".safetensors"):
            raise CheckpointError("disk full")
        real(path, data)

    monkeypatch.setattr(runs, "atomic_write_bytes", fail_on_checkpoint)
    with pytest.raises(CheckpointError, match="disk full"):
        runs.fork_run(run, 3)
    assert not (tmp_path / "r-from-3").exists() and tree_bytes(run) == before


def test_validation_records_are_read_apart_from_the_training_loss(tmp_path, data):
    from ddpm_gui.engine.validation import ValResult

    run = tmp_path / "r"
    train(run, data, steps=6)
    with open(run / "metrics.jsonl", "a") as f:
        for step, total in ((2, 0.30), (4, 0.20), (6, 0.25)):
            rec = ValResult(
                step, total, {"low": total / 2, "mid": total, "high": total * 1.5}, 0.1, 12
            ).record()
            f.write(json.dumps(rec) + "\n")
    m = runs.RunMetrics.of(run)
    steps, vals = m.val_curve()
    assert list(steps) == [2, 4, 6] and list(vals) == pytest.approx([0.30, 0.20, 0.25])
    assert m.steps == list(range(1, 7))  # validation records are not training losses
    info = runs.read_run(run)
    assert (info.val_last["step"], info.val_last["val"]) == (6, pytest.approx(0.25))
    assert (info.val_best["step"], info.val_best["val"]) == (4, pytest.approx(0.20))
    assert runs.val_text(info.val_best) == "0.2 @4"


def test_quality_results_read_what_record_eval_keeps(tmp_path, data):
    """Records of EvalResult dicts: the newest of one step is the last; checkpoints locate their run."""
    run = tmp_path / "r"
    train(run, data, steps=3, checkpoint_every=3)
    ckpt = runs.checkpoints(run)[0][1]
    assert runs.run_of_checkpoint(ckpt) == run and runs.run_of_checkpoint(run) == run
    assert (
        runs.run_of_checkpoint(tmp_path) is None
        and runs.run_of_checkpoint(tmp_path / "x.safetensors") is None
    )
    evals = run / runs.EVALS
    evals.mkdir()
    for name, step, fd, t in (("step_00000003.json", 3, 5.0, 1.0), ("step_00000003-2.json", 3, 4.0, 2.0),
                              ("step_00000001.json", 1, 9.0, 3.0)):  # fmt: skip
        (evals / name).write_text(json.dumps({"frechet_distance": fd, "model_step": step, "time": t}))
    (evals / "notes.json").write_text('{"something": "else"}')
    info = runs.read_run(run)
    assert [(r["model_step"], r["frechet_distance"]) for r in info.evals] == [(1, 9.0), (3, 5.0), (3, 4.0)]
    assert info.quality_last["frechet_distance"] == 4.0 and info.quality_best["frechet_distance"] == 4.0


def test_runs_started_within_a_second_are_listed_newest_first(tmp_path, data):
    """The marker's start time has microseconds: two short runs begun in the same second keep their order."""
    for name in ("z-first", "a-second", "m-third"):
        train(tmp_path / name, data, steps=1)
    assert [r.name for r in runs.scan_runs(tmp_path)] == ["m-third", "a-second", "z-first"]
    created = [r.created for r in runs.scan_runs(tmp_path)]
    assert created[0] > created[1] > created[2] and created[0] - created[2] < 60


def test_a_marker_written_to_the_second_still_gives_the_start_time(tmp_path, data):
    train(tmp_path / "old", data, steps=1)
    marker = tmp_path / "old" / runs.MARKER
    info = json.loads(marker.read_text())
    info["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(1_700_000_000))
    marker.write_text(json.dumps(info))
    assert runs.scan_runs(tmp_path)[0].created == 1_700_000_000
