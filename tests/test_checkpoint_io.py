"""File I/O safety: the app's temp files and nobody else's are cleaned up; written files get the modes any
other program would give them (umask, the mode of the file replaced, through symlinks); readers never call a
checkpoint that a training run pruned under them damaged; a skipped damaged checkpoint is said, not hidden;
faults are injected through a hook, not the environment. The same classes, with random cases and larger
counts: `python scripts/fault_injection.py --campaign io --runs N` (scripts/io_campaign.py)."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest
import torch
from conftest import load_script

from ddpm_gui import cli
from ddpm_gui.engine import checkpoint as ck
from ddpm_gui.engine.checkpoint import checkpoint_path, list_checkpoints, load_latest_checkpoint
from ddpm_gui.errors import CheckpointError
from ddpm_gui.models.presets import build_model, get_preset

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def fileio():
    from ddpm_gui.engine import fileio

    return fileio


@pytest.fixture()
def umask():
    """Set the process umask for one test (nothing else runs threads in a test process), restored after."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda m: os.umask(m)
    os.umask(old)


def mode(p: Path) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def small_meta(step: int) -> dict:
    return {"step": step, "config": {}, "model_config": {}}


SMALL = {"model.w": torch.arange(64, dtype=torch.float32)}


def small_ckpt(run: Path, step: int) -> Path:
    return ck.save_checkpoint(checkpoint_path(run, step), SMALL, small_meta(step))


@pytest.fixture(scope="module")
def tiny_tensors() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return ck.prefixed("model", build_model("tiny").state_dict())


def tiny_meta(step: int) -> dict:
    return {"step": step, "config": {"image_size": 16, "preset": "tiny"},
            "model_config": get_preset("tiny").to_dict(), "num_classes": None}  # fmt: skip


def tiny_ckpt(run: Path, step: int, tensors) -> Path:
    return ck.save_checkpoint(checkpoint_path(run, step), tensors, tiny_meta(step))


def damage(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[-10] ^= 0xFF  # in the tensor bytes: only the digest can tell
    path.write_bytes(bytes(raw))


# ----------------------------------------------------------------------------- 1. temp files


def test_cleanup_removes_the_apps_temp_files_only(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "samples").mkdir()
    outside = tmp_path / "outside.txt"
    outside.write_text("a user's file")
    user = {
        run / ".draft.tmp": "notes",
        run / "checkpoints" / ".step_00000008.safetensors.k2j3h4.tmp": "a user's, named like a mkstemp file",
        run / "samples" / ".grid.png.ddpm-tmp-0123abcZ": "not hex",
        run / ".config.json.ddpm-tmp-0123abc": "7 digits",
    }
    for p, text in user.items():
        p.write_text(text)
    own_dir = run / "checkpoints" / ".x.safetensors.ddpm-tmp-0123abcd"
    own_dir.mkdir()
    (own_dir / "inside").write_text("kept")
    own_link = run / "samples" / ".y.png.ddpm-tmp-89abcdef"
    own_link.symlink_to(outside)
    own = [
        run / ".config.json.ddpm-tmp-deadbeef",
        run / "checkpoints" / ".step_00000002.safetensors.ddpm-tmp-00ff00ff",
    ]
    for p in own:
        p.write_bytes(b"half a file")
    removed = ck.remove_temp_files(run)
    assert sorted(removed) == sorted(own) and not any(p.exists() for p in own)
    for p, text in user.items():
        assert p.read_text() == text, p
    assert (own_dir / "inside").read_text() == "kept"  # a folder is never removed, whatever its name
    assert own_link.is_symlink() and outside.read_text() == "a user's file"  # nor a symlink, nor its target
    fio = fileio()
    assert [fio.is_own_temp(p.name) for p in own] == [True, True]
    assert not any(fio.is_own_temp(p.name) for p in user)


def test_atomic_write_names_its_temp_files_with_the_own_pattern(tmp_path):
    fio = fileio()
    seen = []

    def hook(path: Path, phase: str) -> None:
        if phase == "written":
            seen.extend(p.name for p in path.parent.iterdir() if p.name != path.name)

    old = fio.set_fault_hook(hook)
    try:
        for i, name in enumerate(("step_00000001.safetensors", "config.json", "a.b.tmp")):
            ck.atomic_write_bytes(tmp_path / str(i) / name, b"x")
    finally:
        fio.set_fault_hook(old)
    assert len(seen) == 3 and all(fio.is_own_temp(n) for n in seen), seen
    assert sorted(p.name for p in tmp_path.glob("*/*")) == [
        "a.b.tmp",
        "config.json",
        "step_00000001.safetensors",
    ]


# ----------------------------------------------------------------------------- 2. modes, umask, symlinks


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077, 0o027])
def test_a_new_file_gets_the_umask_mode(tmp_path, umask, mask):
    umask(mask)
    ck.atomic_write_bytes(tmp_path / "new.json", b"{}")
    ck.save_checkpoint(tmp_path / "c" / "step_00000001.safetensors", SMALL, small_meta(1))
    assert mode(tmp_path / "new.json") == 0o666 & ~mask
    assert mode(tmp_path / "c" / "step_00000001.safetensors") == 0o666 & ~mask


@pytest.mark.parametrize("old_mode", [0o600, 0o640, 0o664, 0o444])
def test_a_replaced_file_keeps_its_mode(tmp_path, umask, old_mode):
    umask(0o022)
    p = tmp_path / "out.png"
    p.write_bytes(b"old")
    p.chmod(old_mode)
    ck.atomic_write_bytes(p, b"new")
    assert p.read_bytes() == b"new" and mode(p) == old_mode


def test_writing_to_a_symlink_writes_through_to_its_target(tmp_path, umask):
    umask(0o022)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = elsewhere / "real.json"
    target.write_text("old")
    target.chmod(0o640)
    link = tmp_path / "config.json"
    link.symlink_to(target)
    chain = tmp_path / "chain.json"
    chain.symlink_to(link)  # a link to the link
    ck.atomic_write_bytes(link, b"one")
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_bytes() == b"one" and mode(target) == 0o640
    ck.atomic_write_bytes(chain, b"two")
    assert (
        chain.is_symlink() and link.is_symlink() and target.read_bytes() == b"two" and mode(target) == 0o640
    )
    assert sorted(p.name for p in elsewhere.iterdir()) == ["real.json"]  # no temp file left anywhere
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chain.json", "config.json", "elsewhere"]
    dangling = tmp_path / "grid.png"
    dangling.symlink_to(elsewhere / "made.png")  # what `open(link, "w")` would do: create the target
    ck.atomic_write_bytes(dangling, b"png")
    assert dangling.is_symlink() and (elsewhere / "made.png").read_bytes() == b"png"
    assert mode(elsewhere / "made.png") == 0o644


def test_run_folder_and_cli_outputs_get_the_umask_mode(tmp_path, umask):
    """A real (2-step) training run and `sample --out/--gif`: every file follows the umask."""
    from ddpm_gui.data import load_data
    from ddpm_gui.engine.config import TrainConfig
    from ddpm_gui.engine.trainer import Trainer

    umask(0o002)
    c = TrainConfig(data="builtin:64", image_size=16, preset="tiny", batch_size=8, steps=2, warmup_steps=0,
                    log_every=1, preview_every=2, checkpoint_every=2, checkpoint_minutes=0,
                    device="cpu")  # fmt: skip
    run = tmp_path / "run"
    events = list(Trainer(c, run, data=load_data("builtin:64", image_size=16)).run())
    assert type(events[-1]).__name__ == "Finished", events[-1]
    out, gif = tmp_path / "s.png", tmp_path / "s.gif"
    args = [
        "--device",
        "cpu",
        "--n",
        "1",
        "--sampler",
        "ddim",
        "--steps",
        "2",
        "--out",
        str(out),
        "--gif",
        str(gif),
    ]
    assert cli.main(["sample", "--run", str(run), *args]) == 0
    files = [p for p in run.rglob("*") if p.is_file()] + [out, gif]
    assert len(files) >= 5  # config, metrics, checkpoint, preview, lock
    assert {p.name: mode(p) for p in files} == {p.name: 0o664 for p in files}


# ----------------------------------------------------------------------------- 3. readers racing a pruner


def test_checkpoint_pruned_between_listing_and_reading_is_not_called_damaged(tmp_path, monkeypatch):
    """The trainer saves step 3 and prunes step 2 right after a reader listed [1, 2]: the reader lists again
    and loads step 3, with nothing reported as skipped."""
    run = tmp_path / "run"
    for s in (1, 2):
        small_ckpt(run, s)
    real = ck.list_checkpoints
    calls = []

    def listing_then_prune(run_dir):
        items = real(run_dir)
        calls.append([s for s, _ in items])
        if len(calls) == 1:
            small_ckpt(run, 3)
            checkpoint_path(run, 2).unlink()
        return items

    monkeypatch.setattr(ck, "list_checkpoints", listing_then_prune)
    path, _tensors, meta, skipped = load_latest_checkpoint(run)
    assert (path.name, meta["step"], skipped) == ("step_00000003.safetensors", 3, [])
    calls.clear()
    checkpoint_path(run, 1).unlink()
    small_ckpt(run, 2)
    p, problems = ck.latest_checkpoint(run)  # header only: the same retry
    assert p == checkpoint_path(run, 3) and problems == [] and calls[0] == [2, 3]


def test_checkpoint_removed_after_it_was_opened_still_loads(tmp_path, monkeypatch):
    """Removed after the digest pass, before the tensors are read: what was opened is read (or, where the
    open file cannot be reopened, the listing is taken again); never a 'corrupt' file."""
    run = tmp_path / "run"
    for s in (1, 2):
        small_ckpt(run, s)
    real = ck.load_file

    def prune_first(name, *a, **k):
        if checkpoint_path(run, 2).exists():
            small_ckpt(run, 3)
            checkpoint_path(run, 2).unlink()
        return real(name, *a, **k)

    monkeypatch.setattr(ck, "load_file", prune_first)
    path, tensors, meta, skipped = load_latest_checkpoint(run)
    assert skipped == [] and meta["step"] in (2, 3) and path.name == f"step_{meta['step']:08d}.safetensors"
    assert torch.equal(tensors["model.w"], SMALL["model.w"])


def test_readers_racing_a_saving_and_pruning_writer(tmp_path, tiny_tensors):
    """A writer thread saves and prunes (--checkpoint-every 1 --keep 1) as fast as it can while readers
    load the run folder through every reader: none fails, none reports a skipped (damaged) file."""
    from ddpm_gui.engine.sampler import load_bundle

    run = tmp_path / "run"
    small_ckpt(run, 1)
    stop = threading.Event()
    saved = []

    def writer():
        step = 1
        while not stop.is_set():
            step += 1
            p = small_ckpt(run, step)
            ck.prune_checkpoints(run, 1, protect=[p])
            saved.append(step)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    try:
        for _ in range(200):
            path, _t, meta, skipped = load_latest_checkpoint(run)
            assert skipped == [] and path.name == f"step_{meta['step']:08d}.safetensors"
            p, problems = ck.latest_checkpoint(run)
            assert p is not None and problems == []
    finally:
        stop.set()
        t.join(60)
    assert len(saved) >= 5  # the writer really ran alongside
    # load_bundle on a run folder, with the real model's checkpoints
    run2 = tmp_path / "run2"
    tiny_ckpt(run2, 1, tiny_tensors)
    stop.clear()

    def model_writer():
        step = 1
        while not stop.is_set():
            step += 1
            p = tiny_ckpt(run2, step, tiny_tensors)
            ck.prune_checkpoints(run2, 1, protect=[p])

    t = threading.Thread(target=model_writer, daemon=True)
    t.start()
    try:
        for _ in range(20):
            b = load_bundle(run2, device="cpu")
            assert b.notes == [] and b.step >= 1
    finally:
        stop.set()
        t.join(60)


def test_read_meta_of_a_vanished_file_says_so(tmp_path):
    p = small_ckpt(tmp_path / "run", 1)
    p.unlink()
    with pytest.raises(CheckpointError) as e:
        ck.read_meta(p)
    assert "No checkpoint at" in str(e.value) and "corrupt" not in str(e.value)


# ----------------------------------------------------------------------------- 4. a skipped file is said


def test_load_bundle_says_which_checkpoint_it_used_and_why(tmp_path, tiny_tensors, capsys):
    from ddpm_gui.engine.sampler import load_bundle

    run = tmp_path / "run"
    for s in (400, 600):
        tiny_ckpt(run, s, tiny_tensors)
    assert load_bundle(run, device="cpu").notes == []
    damage(checkpoint_path(run, 600))
    b = load_bundle(run, device="cpu")
    assert b.step == 400 and len(b.notes) == 1
    note = b.notes[0]
    assert (
        "step_00000600.safetensors" in note
        and "checksum" in note
        and "using step_00000400.safetensors" in note
    )
    assert b.meta["step"] == 400  # what it loaded, without reading the file again
    out = tmp_path / "s.png"
    code = cli.main(["sample", "--run", str(run), "--device", "cpu", "--n", "1", "--sampler", "ddim",
                     "--steps", "1", "--out", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    warnings = [ln for ln in err.splitlines() if ln.startswith("warning: ")]
    assert code == 0 and out.exists() and len(warnings) == 1
    assert "step_00000600.safetensors" in warnings[0] and "step_00000400.safetensors" in warnings[0]


# ----------------------------------------------------------------------------- 5. faults through a hook


def test_the_environment_injects_no_fault(tmp_path, monkeypatch):
    monkeypatch.setenv("DDPM_GUI_FAULT_IN_SAVE", "enospc:1:")
    monkeypatch.setenv("DDPM_GUI_FAULT_SLEEP_IN_SAVE", "1000")
    ck.atomic_write_bytes(tmp_path / "step_00000001.safetensors", b"fine")
    assert (tmp_path / "step_00000001.safetensors").read_bytes() == b"fine"


@pytest.mark.parametrize("phase", ["open", "half", "written"])
def test_a_failing_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, phase):
    import errno

    fio = fileio()
    p = tmp_path / "config.json"
    p.write_text("old")
    phases = []

    def hook(path: Path, ph: str) -> None:
        phases.append(ph)
        if ph == phase and path.name == "config.json":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    old = fio.set_fault_hook(hook)
    try:
        with pytest.raises(CheckpointError, match="free some disk space"):
            ck.atomic_write_bytes(p, [b"a" * 100, b"b" * 100])
        ck.atomic_write_bytes(tmp_path / "other.json", [b"a" * 100, b"b" * 100])
    finally:
        fio.set_fault_hook(old)
    assert p.read_text() == "old" and sorted(x.name for x in tmp_path.iterdir()) == [
        "config.json",
        "other.json",
    ]
    assert (tmp_path / "other.json").read_bytes() == b"a" * 100 + b"b" * 100
    assert phases[-4:] == ["open", "half", "written", "renamed"]


# ----------------------------------------------------------------------------- foreign files in a run folder


def test_foreign_entries_named_like_checkpoints_are_neither_listed_nor_pruned(tmp_path):
    """Symlinks and folders under a checkpoint's name are not checkpoints; a regular file under one that is
    not laid out as a DDPM Studio checkpoint is listed (loading it says why not), never pruned."""
    run = tmp_path / "run"
    for s in (2, 3, 4):
        small_ckpt(run, s)
    outside = tmp_path / "mine.safetensors"
    outside.write_bytes(b"a user's weights")
    d = run / "checkpoints"
    (d / "step_00000001.safetensors").symlink_to(outside)
    (d / "step_00000005.safetensors").mkdir()
    (d / "step_00000006.safetensors").symlink_to(outside)
    keep_name = d / "step_00000002.safetensors.keep"
    keep_name.write_bytes(b"x")
    user_file = d / "step_00000000.safetensors"
    user_file.write_bytes(b"a user's file under a checkpoint's name")
    assert [s for s, _ in list_checkpoints(run)] == [0, 2, 3, 4]
    ck.prune_checkpoints(run, 1, protect=[checkpoint_path(run, 4)])
    assert [s for s, _ in list_checkpoints(run)] == [0, 4]
    assert user_file.read_bytes() == b"a user's file under a checkpoint's name"
    assert outside.read_bytes() == b"a user's weights" and (d / "step_00000001.safetensors").is_symlink()
    assert (d / "step_00000006.safetensors").is_symlink() and (d / "step_00000005.safetensors").is_dir()
    assert keep_name.exists()
    path, _t, meta, skipped = load_latest_checkpoint(run)
    assert meta["step"] == 4 and skipped == []


def test_run_lock_never_rewrites_a_foreign_lock_file(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    outside = tmp_path / "important.txt"
    outside.write_text("precious")
    (run / ".lock").symlink_to(outside)
    with pytest.raises(CheckpointError, match=r"\.lock"):
        ck.RunLock(run).acquire()
    assert outside.read_text() == "precious" and (run / ".lock").is_symlink()
    (run / ".lock").unlink()
    (run / ".lock").write_text("a user's notes\n")
    with pytest.raises(CheckpointError, match=r"\.lock"):
        ck.RunLock(run).acquire()
    assert (run / ".lock").read_text() == "a user's notes\n"
    (run / ".lock").unlink()
    (run / ".lock").mkdir()
    with pytest.raises(CheckpointError, match=r"\.lock is a folder"):
        ck.RunLock(run).acquire()
    (run / ".lock").rmdir()
    (run / ".lock").write_text("12345")  # ours, from a process that ended
    with ck.RunLock(run):
        assert (run / ".lock").read_text() == str(os.getpid())


# ----------------------------------------------------------------------------- the campaign, short form


def _campaign():
    return load_script("io_campaign")


def test_io_campaign_short_form(tmp_path):
    """Random cases of every class (the long count: scripts/fault_injection.py --campaign io --runs N)."""
    io = _campaign()
    rows = io.campaign(runs=1, seed=3, workdir=tmp_path, log=lambda s: None, calls=16)
    print(io.summary(rows))
    assert {r["cls"] for r in rows} == set(io.CLASSES)
    assert [r["violations"] for r in rows] == [[]] * len(rows)
    assert sum(r["cases"] for r in rows) >= 30
