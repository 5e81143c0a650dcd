"""Safe loading, through every door that accepts a file: a pickle crafted to run code is never run, plain
state dicts load, weights of another architecture / channel count / image size are refused with a message
naming the mismatch, and truncated or corrupt files are one clear line on the CLI (the GUI's dialog for the
same files is in tests/qt/test_safe_loading_gui.py)."""

from __future__ import annotations

import builtins
import json
import os
import pickle
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import small_config
from safetensors.torch import save_file

from ddpm_gui import cli
from ddpm_gui.engine import checkpoint as ck
from ddpm_gui.engine import events as ev
from ddpm_gui.engine.checkpoint import checkpoint_path, load_checkpoint, load_foreign_state_dict, read_meta
from ddpm_gui.engine.config import TrainConfig
from ddpm_gui.engine.sampler import load_bundle
from ddpm_gui.engine.trainer import Trainer
from ddpm_gui.errors import CheckpointError, ConfigError, DDPMError
from ddpm_gui.models.presets import build_model, get_preset

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def cfg(**kw) -> TrainConfig:
    return small_config(**{"data": "builtin:64", "checkpoint_every": 2, "steps": 2, **kw})


@pytest.fixture(scope="module")
def data():
    from ddpm_gui.data import load_data

    return load_data("builtin:64", image_size=16)


@pytest.fixture(scope="module")
def run(tmp_path_factory, data) -> Path:
    """A real run folder: the tiny preset, 16x16, 2 steps, one checkpoint."""
    run = tmp_path_factory.mktemp("safe") / "run"
    events = list(Trainer(cfg(), run, data=data).run())
    assert isinstance(events[-1], ev.Finished), events[-1]
    return run


@pytest.fixture(scope="module")
def good(run) -> Path:
    return checkpoint_path(run, 2)


def sample_cli(path, *extra) -> tuple[int, list[str]]:
    """`ddpm-gui sample --checkpoint PATH` in this process: (exit code, stderr lines)."""
    out = Path(path).parent / "never.png"
    code = cli.main(["sample", "--checkpoint", str(path), "--device", "cpu", "--n", "1", "--sampler", "ddim",
                     "--steps", "1", "--out", str(out), *extra])  # fmt: skip
    return code, out


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# ----------------------------------------------------------------------------- files crafted to run code


class _Reduce:
    """An object whose unpickling calls fn(*args): what a malicious .pt file holds."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def evil_files(folder: Path) -> dict[str, tuple[Path, Path]]:
    """name -> (crafted file, the file its unpickling would create). Every known way to pickle code: a zip
    .pt (torch.save), an old-style .pt, raw pickles of protocols 2 and 4, and disguises (.pth, .safetensors,
    no suffix)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}

    def marker(name: str) -> Path:
        return folder / f"PWNED-{name}"

    m = marker("zip")
    torch.save({"weight": torch.zeros(2), "x": _Reduce(os.system, f"touch {m}")}, folder / "zip.pt")
    out["zip.pt"] = (folder / "zip.pt", m)
    m = marker("legacy")
    torch.save({"x": _Reduce(Path.touch, m)}, folder / "legacy.pt", _use_new_zipfile_serialization=False)
    out["legacy.pt"] = (folder / "legacy.pt", m)
    m = marker("raw2")
    (folder / "raw2.pth").write_bytes(pickle.dumps({"x": _Reduce(builtins.open, str(m), "w")}, protocol=2))
    out["raw2.pth"] = (folder / "raw2.pth", m)
    m = marker("raw4")
    (folder / "raw4.pt").write_bytes(pickle.dumps(_Reduce(Path.touch, m), protocol=4))
    out["raw4.pt"] = (folder / "raw4.pt", m)
    m = marker("exec")
    code = f"open({str(m)!r}, 'w').write('ran')"
    torch.save(_Reduce(builtins.exec, code), folder / "exec.pt")
    out["exec.pt"] = (folder / "exec.pt", m)
    for name, src in (("disguised.safetensors", "zip.pt"), ("noext", "raw2.pth"), ("old.bin", "legacy.pt")):
        (folder / name).write_bytes((folder / src).read_bytes())
        out[name] = (folder / name, out[src][1])
    return out


@pytest.fixture()
def evil(tmp_path):
    files = evil_files(tmp_path / "evil")
    yield files
    ran = [n for n, (_, m) in files.items() if m.exists()]
    assert not ran, f"unpickling ran code: {ran}"


def test_the_crafted_files_do_run_code_when_unpickled_unsafely(tmp_path):
    """The test files are real: plain pickle.load (what torch.load(weights_only=False) does) runs them."""
    files = evil_files(tmp_path)
    path, marker = files["raw4.pt"]
    with open(path, "rb") as f:
        pickle.load(f)  # on purpose, on our own file, to prove the payload works
    assert marker.exists()
    path, marker = files["zip.pt"]
    torch.load(path, weights_only=False)  # noqa: S614 - the same
    assert marker.exists()


def test_foreign_door_refuses_code_and_names_it(evil):
    for name, (path, _) in evil.items():
        with pytest.raises(CheckpointError) as e:
            load_foreign_state_dict(path)
        msg = str(e.value)
        assert path.name in msg and "Only safetensors files and plain PyTorch state dicts" in msg, msg
        assert "weights_only` set to `False" not in msg and "\x1b" not in msg  # never torch's unsafe advice
        if name != "disguised.safetensors":  # torch.load reads that name as safetensors: no unpickler either
            assert "was refused" in msg and ("was not run" in msg or "nothing in it was run" in msg), msg
    msgs = {
        n: str(pytest.raises(CheckpointError, load_foreign_state_dict, p).value) for n, (p, _) in evil.items()
    }
    assert "posix.system" in msgs["zip.pt"] or "nt.system" in msgs["zip.pt"]
    assert "exec" in msgs["exec.pt"] and "open" in msgs["raw2.pth"]


def test_checkpoint_doors_never_unpickle(evil):
    """load_checkpoint / read_meta / load_bundle (no preset): the file is not safetensors, so it is never
    handed to an unpickler at all; the message says what it is and how foreign weights are opened."""
    for name, (path, _) in evil.items():
        for door in (load_checkpoint, read_meta):
            with pytest.raises(CheckpointError) as e:
                door(path)
            assert "not a safetensors file" in str(e.value), (name, str(e.value))
            assert "--preset" in str(e.value)
        with pytest.raises(CheckpointError) as e:
            load_bundle(path, device="cpu")
        assert path.name in str(e.value) and "--preset" in str(e.value)


def test_load_bundle_with_a_preset_refuses_code(evil):
    for name, (path, _) in evil.items():
        with pytest.raises(CheckpointError) as e:
            load_bundle(path, device="cpu", preset="tiny", image_size=16)
        msg = str(e.value)
        if name == "disguised.safetensors":  # a zip named .safetensors: read by safetensors, which refuses it
            assert "not a readable safetensors file" in msg
        else:
            assert "Only safetensors files and plain PyTorch state dicts" in msg, msg


@pytest.mark.parametrize("command", ["sample", "denoise", "eval"])
def test_cli_refuses_code_in_one_line(evil, capsys, command):
    """Every sub-command that takes --checkpoint (eval has no --preset: it scores DDPM Studio runs only)."""
    out = ["--grid"] if command == "eval" else ["--out"]
    extras = [[]] if command == "eval" else [[], ["--preset", "tiny", "--image-size", "16"]]
    for name, (path, _) in evil.items():
        for extra in extras:
            never = path.parent / "never.png"
            code = cli.main([command, "--checkpoint", str(path), "--device", "cpu", *out, str(never), *extra])
            line = one_error_line(capsys)
            assert code == 2 and path.name in line and not never.exists(), (name, extra, line)


def test_run_folder_door_sets_a_crafted_checkpoint_aside(evil, tmp_path, data):
    """A crafted file under a checkpoint's name in a run folder: resume and load_bundle skip it (never
    unpickled), resume sets it aside as .unreadable and goes on from the last real checkpoint."""
    run = tmp_path / "run"
    assert isinstance(list(Trainer(cfg(), run, data=data).run())[-1], ev.Finished)
    for step, name in ((8, "zip.pt"), (9, "raw4.pt")):
        checkpoint_path(run, step).write_bytes(evil[name][0].read_bytes())
    b = load_bundle(run, device="cpu")
    assert b.step == 2
    events = list(Trainer(cfg(steps=4), run, resume=True, data=data).run())
    notes = " ".join(e.message for e in events if isinstance(e, ev.Notice))
    assert "step_00000009.safetensors" in notes and "not a safetensors file" in notes
    assert next(e for e in events if isinstance(e, ev.Started)).step == 2
    assert isinstance(events[-1], ev.Finished)
    assert (run / "checkpoints" / "step_00000008.safetensors.unreadable").exists()


def test_cli_in_a_fresh_process_is_one_line(evil, tmp_path):
    """The real process (torch's own warnings included): one line, exit 2, nothing run."""
    path, _ = evil["raw4.pt"]  # protocol 4: torch warns about it on stderr unless told not to
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("DDPM_GUI_DEBUG", None)
    p = subprocess.run(
        [sys.executable, "-m", "ddpm_gui", "sample", "--checkpoint", str(path), "--preset", "tiny",
         "--device", "cpu", "--out", str(tmp_path / "x.png")],
        capture_output=True, text=True, env=env, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "was refused" in p.stderr, p.stderr


# ----------------------------------------------------------------------------- plain state dicts load


def tiny_state(seed: int = 1, **changes) -> dict[str, torch.Tensor]:
    """A state dict of the tiny preset's UNet (or of a variant of it)."""
    torch.manual_seed(seed)
    return build_model(replace(get_preset("tiny"), **changes)).state_dict()


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model+epoch", "legacy", "safetensors"])
def test_plain_state_dict_loads_through_every_door(tmp_path, capsys, wrap):
    sd = tiny_state()
    path = tmp_path / ("weights.safetensors" if wrap == "safetensors" else "weights.pt")
    if wrap == "plain":
        torch.save(sd, path)
    elif wrap == "state_dict":
        torch.save({"state_dict": sd}, path)
    elif wrap == "model+epoch":
        torch.save({"model": sd, "epoch": 3, "lr": 1e-3}, path)
    elif wrap == "legacy":
        torch.save(sd, path, _use_new_zipfile_serialization=False)
    else:
        save_file(sd, path)
    if wrap != "safetensors":
        got = load_foreign_state_dict(path)
        assert got.keys() == sd.keys() and all(torch.equal(got[k], sd[k]) for k in sd)
    b = load_bundle(path, device="cpu", preset="tiny", image_size=16)
    assert b.image_size == 16 and b.num_classes is None and b.preset == "tiny"
    assert all(torch.equal(v, sd[k]) for k, v in b.model.state_dict().items())
    out = tmp_path / "grid.png"
    code = cli.main(["sample", "--checkpoint", str(path), "--preset", "tiny", "--image-size", "16", "--device",
                     "cpu", "--n", "2", "--sampler", "ddim", "--steps", "2", "--out", str(out)])  # fmt: skip
    assert code == 0 and out.exists(), capsys.readouterr().err


def test_conditional_state_dict_gets_its_classes_from_the_file(tmp_path):
    torch.manual_seed(0)
    sd = build_model("tiny", num_classes=5).state_dict()
    torch.save(sd, tmp_path / "cond.pt")
    b = load_bundle(tmp_path / "cond.pt", device="cpu", preset="tiny", image_size=16)
    assert b.num_classes == 5


def test_own_checkpoint_with_a_preset_loads_as_itself(good, capsys):
    b = load_bundle(good, device="cpu", preset="small")  # the file's own description wins
    assert b.preset == "tiny" and b.step == 2 and b.image_size == 16
    code = cli.main(["sample", "--run", str(good.parent.parent), "--preset", "tiny", "--out", "x.png"])
    assert code == 2 and "--preset is for a --checkpoint file" in one_error_line(capsys)


# ----------------------------------------------------------------------------- another architecture


def test_foreign_weights_of_another_preset_channel_count_or_size(tmp_path, capsys):
    cases = {
        "small.pt": (build_model("small").state_dict(), ["does not fit the preset 'tiny'", "other shapes"]),
        "grey.pt": (tiny_state(image_channels=1), ["1-channel images, this one 3-channel images"]),
        "wide.pt": (tiny_state(n_channels=64), ["other shapes"]),
        "deeper.pt": (tiny_state(n_blocks=2), ["weights are unknown to this model"]),
    }
    for name, (sd, words) in cases.items():
        torch.save(sd, tmp_path / name)
        with pytest.raises(CheckpointError) as e:
            load_bundle(tmp_path / name, device="cpu", preset="tiny", image_size=16)
        assert name in str(e.value) and all(w in str(e.value) for w in words), str(e.value)
        code, out = sample_cli(tmp_path / name, "--preset", "tiny", "--image-size", "16")
        line = one_error_line(capsys)
        assert code == 2 and all(w in line for w in words) and not out.exists(), line
    # a size the preset's depth cannot halve, and an unknown preset: refused before the file is read
    torch.save(tiny_state(), tmp_path / "ok.pt")
    with pytest.raises(ConfigError, match="multiple of 8"):
        load_bundle(tmp_path / "ok.pt", device="cpu", preset="tiny", image_size=30)
    code, _ = sample_cli(tmp_path / "ok.pt", "--preset", "huge")
    assert code == 2 and "Unknown preset 'huge'" in one_error_line(capsys)


def rewrite(src: Path, dst: Path, **meta_changes) -> Path:
    """A copy of a checkpoint with header fields changed (written with fresh digests, as a hand-made or
    foreign-tool file would be)."""
    tensors, meta = load_checkpoint(src)
    for k, v in meta_changes.items():
        if isinstance(v, dict):
            meta[k] = {**meta[k], **v}
        else:
            meta[k] = v
    return ck.save_checkpoint(
        dst, tensors, {k: v for k, v in meta.items() if k not in ("format", "format_version")}
    )


def test_checkpoint_whose_header_and_weights_disagree(good, tmp_path, capsys):
    cases = {
        "grey.safetensors": ({"model_config": {"image_channels": 1}}, "3-channel images, this one 1-channel"),
        "small.safetensors": (
            {"model_config": get_preset("small").to_dict()},
            "does not fit the model it describes",
        ),
        "classes.safetensors": ({"num_classes": 10}, "weights are missing (e.g. class_emb.weight)"),
    }
    for name, (changes, words) in cases.items():
        bad = rewrite(good, tmp_path / name, **changes)
        with pytest.raises(CheckpointError, match=words.replace("(", r"\(").replace(")", r"\)")):
            load_bundle(bad, device="cpu")
        code, _ = sample_cli(bad)
        assert code == 2 and words in one_error_line(capsys)


@pytest.mark.parametrize(
    "changes,words",
    [
        ({"config": {"preset": "small"}, "model_config": get_preset("small").to_dict()}, "preset is 'small'"),
        ({"config": {"image_size": 32}}, "image_size is 32 in the checkpoint but 16"),
        ({"model_config": {"image_channels": 1}}, "channel count is 1 in the checkpoint but 3 here"),
        ({"num_classes": 10, "config": {"conditional": True}}, "conditional is True in the checkpoint"),
    ],
    ids=["preset", "image_size", "channels", "classes"],
)
def test_resume_refuses_a_checkpoint_of_another_run_kind(tmp_path, data, good, changes, words):
    """A checkpoint copied in from a run of another preset, image size, channel count or class count."""
    run = tmp_path / "run"
    assert isinstance(list(Trainer(cfg(), run, data=data).run())[-1], ev.Finished)
    rewrite(good, checkpoint_path(run, 4), **changes)
    fail = list(Trainer(cfg(steps=6), run, resume=True, data=data).run())[-1]
    assert (
        isinstance(fail, ev.Failed) and "does not fit this run" in fail.message and words in fail.message
    ), fail
    assert checkpoint_path(run, 4).exists()  # refused, not set aside: it is not damaged


def test_resume_of_a_checkpoint_saved_on_another_device_kind(tmp_path, data):
    """A CUDA generator's state (16 bytes) in a checkpoint resumed on the CPU (5056 bytes), as when a run
    moves between a GPU machine and a laptop: it resumes, with a notice that it is no longer bitwise."""
    run = tmp_path / "run"
    assert isinstance(list(Trainer(cfg(), run, data=data).run())[-1], ev.Finished)
    tensors, meta = load_checkpoint(checkpoint_path(run, 2))
    tensors["rng.gen"] = torch.zeros(16, dtype=torch.uint8)  # what torch.cuda's Philox generator keeps
    ck.save_checkpoint(checkpoint_path(run, 2), tensors, {k: v for k, v in meta.items() if k != "format"})
    events = list(Trainer(cfg(steps=4), run, resume=True, data=data).run())
    assert isinstance(events[-1], ev.Finished) and events[-1].step == 4, events[-1]
    notes = " ".join(e.message for e in events if isinstance(e, ev.Notice))
    assert "saved on another kind of device" in notes


# ----------------------------------------------------------------------------- truncated and corrupt files


def corrupt_variants(good: Path) -> dict[str, bytes]:
    raw = good.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    flip_data = bytearray(raw)
    flip_data[-50] ^= 0x01
    flip_head = bytearray(raw)
    i = raw.index(b"step", 8)
    flip_head[i] ^= 0x20  # "step" -> "Step": still JSON, same length: only the digest can tell
    return {
        "zero-length": b"",
        "seven bytes": raw[:7],
        "header only": raw[: 8 + n],
        "header cut": raw[: 8 + n // 2],
        "cut at 1/3": raw[: len(raw) // 3],
        "one byte short": raw[:-1],
        "one byte extra": raw + b"\0",
        "random bytes": os.urandom(4096),
        "random after header": raw[: 8 + n] + os.urandom(len(raw) - 8 - n),
        "header length 2^63": (1 << 63).to_bytes(8, "little") + raw[8:],
        "header length too big": (len(raw)).to_bytes(8, "little") + raw[8:],
        "header length too small": (n - 8).to_bytes(8, "little") + raw[8:],
        "header length 0": (0).to_bytes(8, "little") + raw[8:],
        "header not JSON": raw[:8] + b"\xff" * n + raw[8 + n :],
        "header a list": len(b"[1,2]").to_bytes(8, "little") + b"[1,2]",
        "flipped data bit": bytes(flip_data),
        "flipped header letter": bytes(flip_head),
        "a PNG": b"\x89PNG\r\n\x1a\n" + os.urandom(200),
        "a JSON file": b'{"step": 3}',
    }


def test_corrupt_checkpoints_are_one_line_on_the_cli(good, tmp_path, capsys):
    for name, data in corrupt_variants(good).items():
        path = tmp_path / "ckpt.safetensors"
        path.write_bytes(data)
        with pytest.raises(CheckpointError):
            load_checkpoint(path)
        with pytest.raises(CheckpointError):
            load_bundle(path, device="cpu")
        for command in ("sample", "denoise"):
            out = tmp_path / "never.png"
            code = cli.main([command, "--checkpoint", str(path), "--device", "cpu", "--out", str(out)])
            line = one_error_line(capsys)
            assert code == 2 and "ckpt.safetensors" in line and not out.exists(), (name, line)
            assert len(line) < 400, (name, line)


def test_corrupt_pt_files_are_one_line_on_the_cli(tmp_path, capsys):
    torch.save(tiny_state(), tmp_path / "good.pt")
    raw = (tmp_path / "good.pt").read_bytes()
    torch.save(tiny_state(), tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    legacy = (tmp_path / "legacy.pt").read_bytes()
    variants = {
        "zero-length": b"",
        "random bytes": os.urandom(4096),
        "zip cut in half": raw[: len(raw) // 2],
        "zip cut at 100": raw[:100],
        "old-style cut in half": legacy[: len(legacy) // 2],
        "a pickled list of numbers": pickle.dumps([1, 2, 3], protocol=2),
        "a pickled empty dict": pickle.dumps({}, protocol=2),
        "text": b"hello\n",
    }
    for name, data in variants.items():
        path = tmp_path / "w.pt"
        path.write_bytes(data)
        with pytest.raises(CheckpointError):
            load_foreign_state_dict(path)
        code, out = sample_cli(path, "--preset", "tiny")
        line = one_error_line(capsys)
        assert code == 2 and "w.pt" in line and not out.exists(), (name, line)
        assert "weights_only` set to `False" not in line, line


def test_run_folder_with_only_corrupt_checkpoints_is_one_line(run, tmp_path, capsys):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    p = checkpoint_path(copy, 2)
    p.write_bytes(p.read_bytes()[:1000])
    code = cli.main(["sample", "--run", str(copy), "--device", "cpu", "--out", str(tmp_path / "x.png")])
    line = one_error_line(capsys)
    assert code == 2 and "No readable checkpoint" in line and "truncated" in line, line


def test_errors_are_user_errors_not_bugs(good, tmp_path):
    """Every refusal above is a DDPMError (the CLI's one line, the GUI's dialog), never another exception.
    read_meta checks the header only (its digest and the file's length), so damaged tensor bytes pass it."""
    meta = read_meta(good)
    for name, data in corrupt_variants(good).items():
        path = tmp_path / "c.safetensors"
        path.write_bytes(data)
        try:
            assert read_meta(path) == meta and name in ("random after header", "flipped data bit"), name
        except DDPMError:
            pass
        for door in (load_checkpoint, lambda p: load_bundle(p, device="cpu"),
                     lambda p: load_bundle(p, device="cpu", preset="tiny")):  # fmt: skip
            try:
                door(path)
            except DDPMError:
                pass
            else:
                raise AssertionError(f"{name}: loaded")
    (tmp_path / "meta.json").write_text(json.dumps({"not": "a checkpoint"}))
    with pytest.raises(CheckpointError):
        load_bundle(tmp_path / "meta.json", device="cpu")
