"""File I/O campaign: random cases of what can sit in a run folder or an output path, and of readers racing
a training run that saves and prunes, against the properties the app promises. Run it with

    python scripts/fault_injection.py --campaign io --runs 20 --seed 1     # the long count
    python scripts/io_campaign.py --runs 20 --seed 1                       # the same

(tests/test_checkpoint_io.py runs a short form with every pytest). Each round runs every class once:

foreign-files: a run folder holding the app's checkpoints and temp files among entries it did not write:
    user files named like temp files (`.draft.tmp`, mkstemp-like and near-miss names), folders and symlinks
    under the app's temp-file and checkpoint names, foreign files under checkpoint names, foreign `.lock`
    files. Cleanup, listing, loading, pruning and locking run; every foreign entry (and what its symlinks
    point to) must be unchanged, every own temp file gone, the newest own checkpoint loaded, only foreign
    files reported as skipped.
readers-vs-pruner: writers save a checkpoint and prune to 1 (--checkpoint-every 1 --keep 1) in a loop (a
    thread of this process, and a separate process) while this process loads the runs through every reader:
    none may fail or report a skipped file; read_meta of a listed path may only say the file vanished.
output-modes: a random umask and target (new file, existing file of a random mode, symlink, chain of
    symlinks, dangling symlink, folder; named config.toml, metrics.jsonl, a PNG, a checkpoint...) written
    through every writer: mode 0o666 less the umask for a new file, the old mode for a replaced one,
    symlinks kept and written through, a folder refused, no temp file left.
write-faults: a write that fails (disk full, no permission, I/O error) at a random phase: the old file keeps
    its bytes and mode, no temp file is left, the error is a CheckpointError.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import os
import random
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("foreign-files", "readers-vs-pruner", "output-modes", "write-faults")
KINDS = ("file", "folder", "symlink", "dangling")


def _snapshot(p: Path):
    """What an entry is, to compare before and after: its kind, content digest or link target."""
    if p.is_symlink():
        return ("link", os.readlink(p))
    if p.is_dir():
        return ("dir", sorted((q.name, _snapshot(q)) for q in p.iterdir()))
    if p.exists():
        return ("file", hashlib.sha256(p.read_bytes()).hexdigest(), stat.S_IMODE(p.stat().st_mode))
    return None


def _hex(rng: random.Random, n: int, digits: str = "0123456789abcdef") -> str:
    return "".join(rng.choice(digits) for _ in range(n))


def _user_temp_name(rng: random.Random) -> str:
    alnum = "abcdefghijklmnopqrstuvwxyz0123456789_"
    return rng.choice([
        ".draft.tmp", ".config.json.swp", ".~lock.notes.odt#", f".notes.{_hex(rng, 6, alnum)}.tmp",
        f".step_{rng.randint(0, 99):08d}.safetensors.{_hex(rng, 8, alnum)}.tmp",  # the old mkstemp form
        f".x.ddpm-tmp-{_hex(rng, 7)}", f".x.ddpm-tmp-{_hex(rng, 8, '0123456789ABCDEF')}",
        f".x.ddpm-tmp-{_hex(rng, 9)}", f"x.ddpm-tmp-{_hex(rng, 8)}", f".x.ddpm-tmp-{_hex(rng, 8)}.bak",
    ])  # fmt: skip


def _make(p: Path, kind: str, outside: Path, rng: random.Random) -> None:
    if kind == "file":
        p.write_bytes(rng.randbytes(rng.randint(0, 64)))
    elif kind == "folder":
        p.mkdir()
        (p / "inside.txt").write_text("a user's file")
    elif kind == "symlink":
        p.symlink_to(outside)
    else:
        p.symlink_to(outside.parent / "never-there")


def _small(step: int):
    import torch

    return {"model.w": torch.arange(16, dtype=torch.float32) + step}, {"step": step, "config": {},
                                                                     "model_config": {}}  # fmt: skip


# ----------------------------------------------------------------------------- foreign files


def _foreign_setup(rng, run: Path, outside: Path):
    from ddpm_gui.engine import checkpoint as ck

    folders = [run, run / "checkpoints", run / "samples"]
    for d in folders:
        d.mkdir(parents=True, exist_ok=True)
    steps = sorted(rng.sample(range(1, 60), rng.randint(1, 4)))
    for s in steps:
        ck.save_checkpoint(ck.checkpoint_path(run, s), *_small(s))
    own_temps = [
        rng.choice(folders)
        / f".{rng.choice(['config.json', 'x.png', 'step_00000001.safetensors'])}.ddpm-tmp-"
        f"{_hex(rng, 8)}"
        for _ in range(rng.randint(0, 3))
    ]
    for p in own_temps:
        p.write_bytes(b"half a file")
    foreign: list[Path] = []
    foreign_ckpts: list[int] = []  # foreign regular files under a checkpoint's name
    for _ in range(rng.randint(4, 12)):
        kind = rng.choice(KINDS)
        pick = rng.random()
        d = rng.choice(folders)
        if pick < 0.4:
            name = _user_temp_name(rng)
        elif pick < 0.6 and kind != "file":  # the app's own temp-file name, on something that is no file
            name = f".{rng.choice(['config.json', 'y.png'])}.ddpm-tmp-{_hex(rng, 8)}"
        elif pick < 0.85:
            d, name = run / "checkpoints", f"step_{rng.randint(0, 70):08d}.safetensors"
        else:
            name = f"step_{rng.randint(0, 70):08d}.safetensors.unreadable"
        p = d / name
        if os.path.lexists(p) or p in own_temps:
            continue
        _make(p, kind, outside, rng)
        foreign.append(p)
        if kind == "file" and d == run / "checkpoints" and name.endswith(".safetensors"):
            foreign_ckpts.append(int(name[5:13]))
    return steps, own_temps, foreign, foreign_ckpts


def foreign_files(rng: random.Random, work: Path) -> tuple[int, list[str], list[str]]:
    from ddpm_gui.engine import checkpoint as ck

    run, outside = work / "run", work / "outside.bin"
    outside.write_bytes(b"a user's file outside the run folder")
    steps, own_temps, foreign, foreign_ckpts = _foreign_setup(rng, run, outside)
    before = {p: _snapshot(p) for p in foreign}
    out_before = _snapshot(outside)
    bad = []
    removed = ck.remove_temp_files(run)
    if sorted(removed) != sorted(own_temps):
        bad.append(
            f"remove_temp_files removed {sorted(p.name for p in removed)}, "
            f"own {sorted(p.name for p in own_temps)}"
        )
    listed = [s for s, _ in ck.list_checkpoints(run)]
    if listed != sorted(set(steps) | set(foreign_ckpts)):
        bad.append(f"listed {listed}, expected {sorted(set(steps) | set(foreign_ckpts))}")
    path, _t, meta, skipped = ck.load_latest_checkpoint(run)
    newer_foreign = sorted((s for s in foreign_ckpts if s > steps[-1]), reverse=True)
    if meta["step"] != steps[-1] or [int(p.name[5:13]) for p, _ in skipped] != newer_foreign:
        bad.append(f"loaded {meta['step']} skipping {[p.name for p, _ in skipped]}; newest own {steps[-1]}")
    keep = rng.randint(1, 3)
    ck.prune_checkpoints(run, keep, protect=[path])
    left = [s for s, _ in ck.list_checkpoints(run)]
    all_listed = sorted(set(steps) | set(foreign_ckpts))
    expect = [s for s in all_listed if s in foreign_ckpts or s in all_listed[-keep:] or s == steps[-1]]
    if left != expect:
        bad.append(f"after prune --keep {keep}: {left}, expected {expect}")
    bad += _lock_case(rng, run, outside)
    for p, snap in before.items():
        if _snapshot(p) != snap:
            bad.append(f"foreign {p.relative_to(work)} changed: {snap} -> {_snapshot(p)}")
    if _snapshot(outside) != out_before:
        bad.append("a symlink's target outside the run folder changed")
    return len(foreign) + len(own_temps) + len(steps) + 4, bad, []


def _lock_case(rng: random.Random, run: Path, outside: Path) -> list[str]:
    from ddpm_gui.engine.fileio import RunLock
    from ddpm_gui.errors import CheckpointError

    lock = run / ".lock"
    kind = rng.choice(["absent", "empty", "digits", "text", "symlink", "folder", "dangling"])
    if kind in ("empty", "digits", "text"):
        lock.write_text({"empty": "", "digits": "4242", "text": "a user's notes\n"}[kind])
    elif kind in ("symlink", "folder", "dangling"):
        _make(lock, {"symlink": "symlink", "folder": "folder", "dangling": "dangling"}[kind], outside, rng)
    snap = _snapshot(lock)
    ours = kind in ("absent", "empty", "digits")
    try:
        with RunLock(run):
            if not ours:
                return [f".lock that is {kind}: acquired"]
            if lock.read_text() != str(os.getpid()):
                return [f".lock that is {kind}: the pid was not written"]
    except CheckpointError as exc:
        if ours:
            return [f".lock that is {kind}: refused ({exc})"]
        if _snapshot(lock) != snap or ".lock" not in str(exc):
            return [f".lock that is {kind}: changed, or an unclear message ({exc})"]
    finally:
        if lock.is_dir() and not lock.is_symlink():
            shutil.rmtree(lock)
        elif os.path.lexists(lock):
            lock.unlink()
    return []


# ----------------------------------------------------------------------------- readers vs a pruning writer


def write_until(run: Path, stop: Path) -> int:
    """Save and prune to 1 checkpoint (`--checkpoint-every 1 --keep 1`) as fast as possible until `stop`
    exists; the last step saved."""
    from ddpm_gui.engine import checkpoint as ck

    tensors, meta = ck.load_checkpoint(ck.checkpoint_path(run, 1))
    step = 1
    while not stop.exists():
        step += 1
        p = ck.save_checkpoint(ck.checkpoint_path(run, step), tensors, {**meta, "step": step})
        ck.prune_checkpoints(run, 1, protect=[p])
    return step


# write_until in a second process
WRITER = f"""
import sys
from pathlib import Path
sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
from io_campaign import write_until
print(write_until(Path(sys.argv[1]), Path(sys.argv[2])))
"""


def _reader_call(which: str, small: Path, model: Path) -> tuple[list[str], int]:
    """One read of a run folder being pruned: (what it reported as skipped or wrong, files seen vanishing)."""
    from ddpm_gui.engine import checkpoint as ck
    from ddpm_gui.engine.sampler import load_bundle

    if which == "load_latest_checkpoint":
        p, _t, m, skipped = ck.load_latest_checkpoint(small)
        wrong = [] if p == ck.checkpoint_path(small, m["step"]) else [f"{p.name} holds step {m['step']}"]
        return [why for _p, why in skipped] + wrong, 0
    if which == "latest_checkpoint":
        return ck.latest_checkpoint(small)[1], 0
    if which == "load_bundle":
        return load_bundle(model, device="cpu").notes, 0
    try:  # a path listed a moment ago: it may be gone, and must then say so (never "damaged")
        ck.read_meta(ck.list_checkpoints(small)[-1][1])
    except ck.CheckpointVanished:
        return [], 1
    return [], 0


def _thread_writer(run: Path, stop: Path, saves: list[int]) -> threading.Thread:
    """WRITER in a thread of this process: the interpreter switches threads every few milliseconds, often
    right between a reader's listing and its open (a wider window than a second process on another core)."""

    def loop() -> None:
        saves.append(write_until(run, stop))

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    return t


def readers_vs_pruner(rng: random.Random, work: Path, calls: int = 60) -> tuple[int, list[str], list[str]]:
    """Writers saving and pruning (a thread of this process, small checkpoints; a process, the tiny UNet's,
    for load_bundle) against the readers of this one."""
    import torch

    from ddpm_gui.engine import checkpoint as ck
    from ddpm_gui.errors import CheckpointError
    from ddpm_gui.models.presets import build_model, get_preset

    small, model, stop = work / "small", work / "model", work / "stop"
    ck.save_checkpoint(ck.checkpoint_path(small, 1), *_small(1))
    torch.manual_seed(rng.randint(0, 1000))
    meta = {
        "step": 1,
        "config": {"image_size": 16, "preset": "tiny"},
        "model_config": get_preset("tiny").to_dict(),
    }
    ck.save_checkpoint(
        ck.checkpoint_path(model, 1), ck.prefixed("model", build_model("tiny").state_dict()), meta
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    w = subprocess.Popen([sys.executable, "-c", WRITER, str(model), str(stop)], env=env, cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    bad, vanished, saves = [], 0, []
    thread = _thread_writer(small, stop, saves)
    try:
        end = time.monotonic() + 300  # generous: the writer process only has to start
        while w.poll() is None and time.monotonic() < end and ck.list_checkpoints(model)[-1][0] < 3:
            time.sleep(0.05)
        for i in range(calls):
            which = ("load_latest_checkpoint", "latest_checkpoint", "read_meta", "load_bundle")[i % 4]
            try:
                notes, gone = _reader_call(which, small, model)
                vanished += gone
                if notes:
                    bad.append(f"{which} reported {notes}")
            except CheckpointError as exc:
                bad.append(f"{which} failed: {exc}")
    finally:
        stop.touch()
        out, err = w.communicate(timeout=300)
        thread.join(300)
    saves.append(int(out.strip() or 0))
    if w.returncode != 0 or len(saves) != 2 or min(saves) < 3:
        bad.append(f"a writer failed (rc {w.returncode}, saves {saves}): {err[-300:]}")
    return calls, bad, [f"{'+'.join(map(str, saves))} saves by the writers; {vanished} listed files vanished"]


# ----------------------------------------------------------------------------- output modes, write faults


def _target(rng: random.Random, work: Path, name: str):
    """(kind, path to write, file that must get the bytes (None: a folder, to be refused), expected mode
    (None: the umask's))."""
    elsewhere = work / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    kind = rng.choice(["new", "new-subfolder", "existing", "symlink", "chain", "dangling", "folder"])
    path = work / name
    if kind == "new":
        return kind, path, path, None
    if kind == "new-subfolder":
        return kind, work / "sub" / name, work / "sub" / name, None
    if kind == "folder":
        path.mkdir()
        return kind, path, None, None
    real = elsewhere / f"real-{name}"
    if kind == "dangling":
        path.symlink_to(real)
        return kind, path, real, None
    real.write_bytes(b"old")
    mode = rng.choice([0o600, 0o640, 0o644, 0o664, 0o444])
    real.chmod(mode)
    if kind == "existing":
        real.rename(path)
        return kind, path, path, mode
    path.symlink_to(real)
    if kind == "chain":
        mid = work / f"mid-{name}"
        path.unlink()
        mid.symlink_to(real)
        path.symlink_to(mid)
    return kind, path, real, mode


def _writers():
    import numpy as np

    from ddpm_gui.cli.common import write_json
    from ddpm_gui.engine import checkpoint as ck
    from ddpm_gui.engine.images import save_png

    return {
        "atomic_write_bytes": lambda p: ck.atomic_write_bytes(p, b"new bytes"),
        "atomic_write_json": lambda p: ck.atomic_write_json(p, {"a": 1}),
        "save_checkpoint": lambda p: ck.save_checkpoint(p, *_small(1)),
        "save_png": lambda p: save_png(p, np.zeros((4, 4, 3), np.uint8)),
        "write_json": lambda p: write_json(str(p), {"a": 1}),
    }


def _temps(work: Path) -> list[str]:
    from ddpm_gui.engine.fileio import is_own_temp

    return [str(p) for p in work.rglob("*") if is_own_temp(p.name)]


def output_modes(rng: random.Random, work: Path, n: int = 12) -> tuple[int, list[str], list[str]]:
    from ddpm_gui.errors import CheckpointError

    bad = []
    writers = _writers()
    for i in range(n):
        case = work / f"case{i}"
        case.mkdir()
        mask = rng.choice([0o022, 0o002, 0o077, 0o027, 0o007])
        writer = rng.choice(sorted(writers))
        name = rng.choice(
            ["config.toml", "config.json", "metrics.jsonl", "grid.png", "step_00000001.safetensors"]
        )
        kind, path, real, mode = _target(rng, case, name)
        old = os.umask(mask)
        try:
            writers[writer](path)
            err = None
        except CheckpointError as exc:
            err = exc
        finally:
            os.umask(old)
        what = f"{writer} to a {kind} {name} (umask {mask:03o})"
        if real is None:
            if err is None or not path.is_dir():
                bad.append(f"{what}: {'no error' if err is None else 'the folder changed'}")
        elif err is not None:
            bad.append(f"{what}: {err}")
        else:
            got = stat.S_IMODE(os.stat(real).st_mode)
            want = mode if mode is not None else 0o666 & ~mask
            if got != want or real.read_bytes() == b"old":
                bad.append(f"{what}: mode {got:o}, expected {want:o}")
            if kind in ("symlink", "chain", "dangling") and not path.is_symlink():
                bad.append(f"{what}: the symlink was replaced by a file")
        if _temps(case):
            bad.append(f"{what}: temp files left {_temps(case)}")
    return n, bad, []


def write_faults(rng: random.Random, work: Path, n: int = 12) -> tuple[int, list[str], list[str]]:
    from ddpm_gui.engine import fileio
    from ddpm_gui.errors import CheckpointError

    bad, done = [], 0
    for i in range(n):
        case = work / f"case{i}"
        case.mkdir()
        kind, path, real, mode = _target(rng, case, rng.choice(["config.json", "step_00000001.safetensors"]))
        if real is None:
            continue
        done += 1
        before = _snapshot(real)
        phase = rng.choice(["open", "half", "written"])
        code = rng.choice([errno.ENOSPC, errno.EACCES, errno.EIO])

        def hook(p, ph, phase=phase, code=code):
            if ph == phase:
                raise OSError(code, os.strerror(code), str(p))

        old = fileio.set_fault_hook(hook)
        try:
            fileio.atomic_write_bytes(path, [rng.randbytes(100), rng.randbytes(rng.randint(1, 100))])
            bad.append(f"{kind}: a failure at {phase} did not raise")
        except CheckpointError as exc:
            if os.strerror(code) not in str(exc):
                bad.append(f"{kind}: unclear message {exc}")
        finally:
            fileio.set_fault_hook(old)
        if _snapshot(real) != before or _temps(case):
            bad.append(f"{kind}: failure at {phase} changed the old file or left {_temps(case)}")
    return done, bad, []


# ----------------------------------------------------------------------------- the campaign

RUNNERS = {"foreign-files": foreign_files, "readers-vs-pruner": readers_vs_pruner,
           "output-modes": output_modes, "write-faults": write_faults}  # fmt: skip


def campaign(
    runs: int, seed: int, workdir: Path | None = None, log=print, classes=CLASSES, calls: int = 60
) -> list[dict]:
    """`runs` rounds of every class; one row per class and round: cases checked, violations, and what
    happened (info). Each class returns (cases, violations, info)."""
    own = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="ddpm-io-")) if own else Path(workdir)
    rng = random.Random(seed)
    rows = []
    try:
        for r in range(runs):
            for cls in classes:
                work = workdir / f"{r:03d}-{cls}"
                work.mkdir(parents=True)
                args = (rng, work, calls) if cls == "readers-vs-pruner" else (rng, work)
                cases, violations, info = RUNNERS[cls](*args)
                row = {"round": r, "cls": cls, "cases": cases, "violations": violations, "info": info}
                rows.append(row)
                flag = "VIOLATION " + "; ".join(violations) if violations else "ok"
                log(f"[{r + 1}/{runs}] {cls:17s} {cases:3d} cases -> {flag} {' '.join(info)}")
                if not row["violations"]:
                    shutil.rmtree(work, ignore_errors=True)
        return rows
    finally:
        if own:
            shutil.rmtree(workdir, ignore_errors=True)


def summary(rows: list[dict]) -> str:
    lines = ["| class | rounds | cases | violations |", "|---|---|---|---|"]
    for cls in dict.fromkeys(r["cls"] for r in rows):
        rs = [r for r in rows if r["cls"] == cls]
        lines.append(
            f"| {cls} | {len(rs)} | {sum(r['cases'] for r in rs)} | {sum(len(r['violations']) for r in rs)} |"
        )
    lines.append(f"| **all** | {len(rows)} | {sum(r['cases'] for r in rows)} | "
                 f"{sum(len(r['violations']) for r in rows)} |")  # fmt: skip
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="rounds; each runs every class once")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--calls", type=int, default=60, help="reader calls per readers-vs-pruner round")
    ap.add_argument("--classes", default=",".join(CLASSES), help=f"comma-separated: {', '.join(CLASSES)}")
    ap.add_argument(
        "--workdir", type=Path, default=None, help="keep failing cases here (default: a temp folder)"
    )
    a = ap.parse_args(argv)
    classes = tuple(c.strip() for c in a.classes.split(",") if c.strip())
    if set(classes) - set(CLASSES):
        ap.error(f"unknown class(es); choose from {', '.join(CLASSES)}")
    t0 = time.monotonic()
    rows = campaign(a.runs, a.seed, a.workdir, classes=classes, calls=a.calls)
    print(
        f"\n{a.runs} rounds, seed {a.seed}, {time.monotonic() - t0:.0f} s, {time.strftime('%Y-%m-%d %H:%M')}"
    )
    print(summary(rows))
    return 1 if any(r["violations"] for r in rows) else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
