"""Fault injection: SIGKILL `ddpm-gui train` at random moments (and exactly inside a save), then resume.

    python scripts/fault_injection.py --runs 70 --seed 21           # the long count (docs/reliability.md)
    python scripts/fault_injection.py --runs 5 --modes in-save,training --steps 12
    python scripts/fault_injection.py --campaign io --runs 20       # file I/O safety (scripts/io_campaign.py)

Every run trains the tiny preset on 256 built-in 16x16 images in a fresh run folder, with a checkpoint
every 2 steps (so saves are frequent), and is interrupted in one of these ways (`--modes`, taken in turn):

    random      SIGKILL at a uniformly random moment of the run's lifetime (start-up included)
    training    SIGKILL at a random moment after the first checkpoint was written
    slow-save   the same, with every save slowed by 0.2 s between write and rename
                (scripts/fault_cli.py --sleep), so most kills land inside a save
    in-save     the process kills itself inside the n-th checkpoint save: half-way through the write,
                after the write but before the rename, or after the rename but before the folder fsync
                (scripts/fault_cli.py --fault)
    repeated    three SIGKILLs in a row (the fresh run, then two resumed runs), then a resume
    enospc      the n-th checkpoint save fails as on a full disk: the CLI must print one error line,
                exit non-zero, leave no partial file; then a resume
    sigint      Ctrl+C (SIGINT) after a random moment: the CLI must stop gracefully, save a checkpoint
                at the step it stopped at, and exit 130

After the interruption the run folder is checked (every file under a checkpoint name loads with every
byte verified, `load_bundle` loads the run with no note, its config.toml parses, metrics.jsonl parses
except at most a cut last line, temp files are never listed as checkpoints), then `ddpm-gui train --out RUN
--resume` finishes the run, and the result is compared with an uninterrupted reference run: the model, EMA and
optimizer tensors must be bitwise equal, and metrics.jsonl must hold the same steps and losses. Any
difference is a violation; the exit status is 1 if there was one.

All processes run with one thread (OMP_NUM_THREADS=1) so that CPU results are bitwise reproducible. Faults
are injected by starting the command through scripts/fault_cli.py, which installs a hook in the atomic writes.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

MODES = ("random", "training", "slow-save", "in-save", "repeated", "enospc", "sigint")
SAVE_ACTIONS = ("kill-mid-write", "kill-before-rename", "kill-after-rename")
HERE = Path(__file__).resolve().parent
CONFIG_NAMES = ("config.toml", "config.json")  # a run's settings (config.json: runs of older versions)


def _script(name: str):
    """A sibling script as a module (this folder is not a package)."""
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


fault_cli = _script("fault_cli")


def train_args(out: Path, steps: int, checkpoint_every: int, fault: str | None = None, sleep: float = 0.0):
    """`ddpm-gui train` of the campaign's run, through scripts/fault_cli.py when a fault is given."""
    return fault_cli.command(
        "train", "--data", "builtin:256", "--image-size", "16", "--preset", "tiny", "--batch-size", "8",
        "--steps", str(steps), "--checkpoint-every", str(checkpoint_every), "--checkpoint-minutes", "0",
        "--keep", "3", "--log-every", "1", "--warmup", "0", "--lr", "1e-3", "--device", "cpu",
        "--out", str(out), fault=fault, sleep=sleep,
    )  # fmt: skip


def base_env(workdir: Path) -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1",
               DDPM_GUI_CACHE=str(workdir / "cache"))  # fmt: skip
    env.pop("DDPM_GUI_DEBUG", None)
    return env


class Proc:
    """A training subprocess whose stdout lines are collected by a thread (so waiting never blocks it)."""

    def __init__(self, cmd: list[str], env: dict):
        self.t0 = time.monotonic()
        self.p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.out: list[str] = []
        self.err = ""
        self._t = threading.Thread(target=self._pump, daemon=True)
        self._t.start()
        self._e = threading.Thread(target=self._pump_err, daemon=True)
        self._e.start()

    def _pump(self) -> None:
        for line in self.p.stdout:
            self.out.append(line)
            self.lines.put(line)

    def _pump_err(self) -> None:
        self.err = self.p.stderr.read()

    def wait_for(self, text: str, count: int = 1, timeout: float = 120) -> bool:
        """Until `count` stdout lines containing `text` were seen (False if the process ended first)."""
        end = time.monotonic() + timeout
        seen = sum(text in line for line in self.out)
        while seen < count and time.monotonic() < end:
            try:
                line = self.lines.get(timeout=0.05)
            except queue.Empty:
                if self.p.poll() is not None and self.lines.empty():
                    return False
                continue
            seen += text in line
        return seen >= count

    def kill_after(self, seconds: float) -> bool:
        """SIGKILL after `seconds` unless it ended before; True if the kill landed."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if self.p.poll() is not None:
                return False
            time.sleep(min(0.01, max(0.0, end - time.monotonic())))
        if self.p.poll() is not None:
            return False
        self.p.kill()  # SIGKILL, of the process this script started
        return True

    def finish(self, timeout: float = 300) -> int:
        rc = self.p.wait(timeout)
        self._t.join(10)
        self._e.join(10)
        return rc


def run_to_end(cmd: list[str], env: dict) -> tuple[int, str, str, float]:
    p = Proc(cmd, env)
    rc = p.finish()
    return rc, "".join(p.out), p.err, time.monotonic() - p.t0


def final_state(run: Path, steps: int):
    from ddpm_gui.engine.checkpoint import checkpoint_path, load_checkpoint

    tensors, _ = load_checkpoint(checkpoint_path(run, steps))
    return {k: v for k, v in tensors.items() if k.startswith(("model.", "ema.", "optim."))}


def metrics(run: Path) -> list[tuple[int, float, float]]:
    out = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if "loss" in r:  # not the records of what a resume changed
            out.append((r["step"], r["loss"], r["loss_smooth"]))
    return out


def _check_checkpoints(run: Path, res: dict) -> None:
    from ddpm_gui.engine.checkpoint import list_checkpoints, load_checkpoint
    from ddpm_gui.engine.fileio import is_own_temp
    from ddpm_gui.engine.sampler import load_bundle
    from ddpm_gui.errors import CheckpointError

    ckpts = list_checkpoints(run)
    res["checkpoints"] = len(ckpts)
    for step, p in ckpts:
        if is_own_temp(p.name):
            res["violations"].append(f"temp file listed as a checkpoint: {p.name}")
        try:
            load_checkpoint(p)
        except CheckpointError as exc:
            res["violations"].append(f"{p.name} does not load: {exc}")
        res["newest"] = step
    if ckpts:
        try:
            b = load_bundle(run, device="cpu")
            if b.step != res["newest"] or b.notes:
                res["violations"].append(
                    f"load_bundle gave step {b.step} {b.notes}, newest is {res['newest']}"
                )
        except CheckpointError as exc:
            res["violations"].append(f"load_bundle failed: {exc}")


def _check_text_files(run: Path, res: dict) -> None:
    import tomllib

    for name, parse in zip(CONFIG_NAMES, (tomllib.loads, json.loads), strict=True):
        if (run / name).exists():
            try:
                parse((run / name).read_text())
            except ValueError as exc:  # tomllib.TOMLDecodeError and json's errors are ValueErrors
                res["violations"].append(f"{name} does not parse: {exc}")
    m = run / "metrics.jsonl"
    if not m.exists():
        return
    lines = m.read_text().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    for i, line in enumerate(lines):
        try:
            json.loads(line)
        except ValueError:
            if i == len(lines) - 1:
                res["cut_line"] = True
            else:
                res["violations"].append(f"metrics.jsonl line {i + 1} does not parse")


def inspect_killed(run: Path) -> dict:
    """What a kill left: checks that hold whatever moment the kill came at."""
    from ddpm_gui.engine.fileio import is_own_temp

    res = {"violations": [], "temp_files": 0, "cut_line": False, "checkpoints": 0, "newest": None}
    if not run.exists():
        return res
    for d in (run, run / "checkpoints", run / "samples"):
        if d.is_dir():
            res["temp_files"] += sum(is_own_temp(p.name) for p in d.iterdir())
    _check_checkpoints(run, res)
    _check_text_files(run, res)
    return res


def resume(run: Path, steps: int, ce: int, env: dict) -> Proc:
    from ddpm_gui.engine.checkpoint import list_checkpoints

    if any((run / name).exists() for name in CONFIG_NAMES):
        # killed after logging steps but before the first checkpoint: the CLI asks for --restart (it keeps
        # that history aside and starts from step 0)
        logged = (run / "metrics.jsonl").is_file() and (run / "metrics.jsonl").stat().st_size > 0
        restart = ["--restart"] if logged and not list_checkpoints(run) else []
        return Proc(fault_cli.command("train", "--out", str(run), "--resume", *restart), env)
    return Proc(train_args(run, steps, ce), env)  # killed before the run folder existed: start it again


# Each interruption mode: (row, rng, run, env, ref, steps, ce) -> the interrupted process's exit status


def _random(row, rng, run, env, ref, steps, ce):
    p = Proc(train_args(run, steps, ce), env)
    delay = rng.uniform(0, ref["t_total"])
    row["detail"] = f"kill at {delay:.2f} s"
    row["landed"] = p.kill_after(delay)
    return p.finish()


def _training(row, rng, run, env, ref, steps, ce, sleep: float = 0.0):
    p = Proc(train_args(run, steps, ce, sleep=sleep), env)
    p.wait_for("checkpoint:")
    delay = rng.uniform(0, ref["t_train"] + sleep * (steps // ce))
    row["detail"] = f"kill {delay:.2f} s after 1st ckpt"
    row["landed"] = p.kill_after(delay)
    return p.finish()


def _slow_save(row, rng, run, env, ref, steps, ce):
    return _training(row, rng, run, env, ref, steps, ce, sleep=0.2)


def _in_save(row, rng, run, env, ref, steps, ce):
    action, nth = rng.choice(SAVE_ACTIONS), rng.randint(1, steps // ce)
    row["detail"] = f"{action} in save {nth}"
    p = Proc(train_args(run, steps, ce, fault=f"{action}:{nth}"), env)
    rc = p.finish()
    row["landed"] = rc == -signal.SIGKILL
    if not row["landed"]:
        row["violations"].append(f"the self-kill did not happen (rc {rc})")
    return rc


def _repeated(row, rng, run, env, ref, steps, ce):
    delays = []
    for k in range(3):
        p = Proc(train_args(run, steps, ce), env) if k == 0 else resume(run, steps, ce, env)
        p.wait_for("checkpoint:")
        delays.append(rng.uniform(0, ref["t_train"] / 2))
        landed = p.kill_after(delays[-1])
        p.finish()
        row["landed"] = row["landed"] or landed
        if k < 2:  # the state left by the last kill is inspected by one_run
            row["violations"] += inspect_killed(run)["violations"]
        if not landed:
            break
    row["detail"] = "kills at " + ", ".join(f"{d:.2f}" for d in delays) + " s"
    return -signal.SIGKILL


def _enospc(row, rng, run, env, ref, steps, ce):
    from ddpm_gui.engine.checkpoint import checkpoint_path

    nth = rng.randint(1, steps // ce)
    row["detail"] = f"disk full at save {nth}"
    p = Proc(train_args(run, steps, ce, fault=f"enospc:{nth}"), env)
    rc = p.finish()
    errs = [ln for ln in p.err.splitlines() if ln.startswith("error:")]
    row["landed"] = rc == 1 and len(errs) == 1
    if not row["landed"] or "Traceback" in p.err or "No space left" not in p.err:
        row["violations"].append(f"disk full: rc {rc}, stderr {p.err[-300:]!r}")
    if nth * ce < steps and checkpoint_path(run, nth * ce).exists():
        row["violations"].append("a checkpoint file exists for the save that failed")
    return rc


def _sigint(row, rng, run, env, ref, steps, ce):
    from ddpm_gui.engine.checkpoint import checkpoint_path

    p = Proc(train_args(run, steps, ce), env)
    p.wait_for("checkpoint:")
    delay = rng.uniform(0, ref["t_train"])
    row["detail"] = f"SIGINT {delay:.2f} s after 1st ckpt"
    time.sleep(delay)
    if p.p.poll() is None:
        p.p.send_signal(signal.SIGINT)
        row["landed"] = True
    rc = p.finish()
    if not row["landed"]:
        return rc
    stopped = [ln for ln in p.out if ln.startswith(("stopped at step", "completed at step"))]
    step = int(stopped[-1].split()[3].rstrip(";")) if stopped else None
    if bool(stopped) and stopped[-1].startswith("completed at step") and rc == -signal.SIGINT:
        # the run had completed and saved; the signal came while the interpreter exited, when Python
        # has already given SIGINT back its default action (killed by SIGINT, nothing left to stop)
        row["landed"] = False
        row["detail"] += ", after the run completed"
    elif rc not in (130, 0) or step is None or not checkpoint_path(run, step).exists():
        row["violations"].append(f"SIGINT: rc {rc}, last line {stopped[-1:]}, no checkpoint at the stop")
    row["detail"] += f", stopped at {step}"
    return rc


INTERRUPT = {"random": _random, "training": _training, "slow-save": _slow_save, "in-save": _in_save,
             "repeated": _repeated, "enospc": _enospc, "sigint": _sigint}  # fmt: skip


def _resume_and_compare(row: dict, run: Path, workdir: Path, ref: dict, steps: int, ce: int) -> None:
    # resume to the end, without the fault: the injected one is for the interrupted process only (with it
    # kept, the resumed process would die or fail at its own n-th save again)
    p = resume(run, steps, ce, base_env(workdir))
    rc = p.finish()
    row["resume_rc"] = rc
    if rc != 0 or "Traceback" in p.err:
        row["violations"].append(
            f"resume failed: rc {rc}: {p.err.strip().splitlines()[-1:] if p.err.strip() else ''}"
        )
        row["bitwise"] = row["metrics_equal"] = False
        return
    after = inspect_killed(run)
    if after["temp_files"]:
        row["violations"].append(f"{after['temp_files']} temp files left after the resume")
    try:
        st = final_state(run, steps)
        row["bitwise"] = st.keys() == ref["state"].keys() and all(
            (st[k] == ref["state"][k]).all().item() for k in st
        )
    except Exception as exc:  # a violation, reported
        row["bitwise"] = False
        row["violations"].append(f"final checkpoint: {exc}")
    row["metrics_equal"] = metrics(run) == ref["metrics"]
    if not row["bitwise"]:
        row["violations"].append("final weights differ from the uninterrupted run")
    if not row["metrics_equal"]:
        row["violations"].append("metrics.jsonl differs from the uninterrupted run")


def one_run(i: int, mode: str, rng: random.Random, workdir: Path, ref: dict, steps: int, ce: int) -> dict:
    run = workdir / f"run_{i:04d}"
    row: dict = {"run": i, "mode": mode, "detail": "", "landed": False, "violations": []}
    row["killed_rc"] = INTERRUPT[mode](row, rng, run, base_env(workdir), ref, steps, ce)
    res = inspect_killed(run)
    row.update(temp_files=res["temp_files"], cut_line=res["cut_line"], checkpoints=res["checkpoints"],
               newest=res["newest"])  # fmt: skip
    row["violations"] += res["violations"]
    _resume_and_compare(row, run, workdir, ref, steps, ce)
    return row


def warm_cache(workdir: Path) -> None:
    """Decode the built-in data once into the runs' cache folder (what every run then loads)."""
    from ddpm_gui.data import load_data

    load_data("builtin:256", image_size=16, cache_dir=workdir / "cache")


def reference(workdir: Path, steps: int, ce: int) -> dict:
    """The uninterrupted run every interrupted one is compared with; its timing drives the kill moments."""
    run = workdir / "reference"
    env = base_env(workdir)
    p = Proc(train_args(run, steps, ce), env)
    p.wait_for("checkpoint:")
    t_first = time.monotonic() - p.t0
    p.wait_for("completed at step")
    t_done = time.monotonic() - p.t0
    rc = p.finish()
    if rc != 0:
        raise SystemExit(f"the reference run failed (rc {rc}):\n{p.err[-2000:]}")
    return {
        "state": final_state(run, steps),
        "metrics": metrics(run),
        "t_total": t_done,  # start to the last line (the interpreter's exit after it is not counted)
        "t_train": max(0.2, t_done - t_first),  # first checkpoint to the end of training
    }


def campaign(runs: int, seed: int, modes=MODES, steps: int = 16, ce: int = 2, workdir: Path | None = None,
             keep: bool = False, log=print) -> list[dict]:  # fmt: skip
    own = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="ddpm-fault-")) if own else Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    try:
        warm_cache(workdir)
        ref = reference(workdir, steps, ce)
        log(
            f"reference run: {ref['t_total']:.1f} s, training phase {ref['t_train']:.1f} s; workdir {workdir}"
        )
        rows = []
        for i in range(runs):
            mode = modes[i % len(modes)]
            row = one_run(i, mode, rng, workdir, ref, steps, ce)
            rows.append(row)
            flag = "VIOLATION " + "; ".join(row["violations"]) if row["violations"] else "ok"
            log(f"[{i + 1}/{runs}] {mode:9s} {row['detail']:34s} newest ckpt {row['newest']!s:>4} "
                f"temp {row['temp_files']} cut {int(row['cut_line'])} -> {flag}")  # fmt: skip
            if not keep and not row["violations"]:
                shutil.rmtree(workdir / f"run_{i:04d}", ignore_errors=True)
        return rows
    finally:
        if own and not keep:
            shutil.rmtree(workdir, ignore_errors=True)


def summary(rows: list[dict]) -> str:
    """A markdown table: one line per mode."""
    head = ("| mode | runs | interruption landed | left temp files | cut metrics line | all checkpoints loaded "
            "| resumed to the end | bitwise = uninterrupted | metrics = uninterrupted | violations |")  # fmt: skip
    lines = [head, "|" + "---|" * 10]
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["mode"], []).append(r)
    for mode, rs in list(by.items()) + [("**all**", rows)]:
        c = Counter()
        for r in rs:
            c["landed"] += bool(r["landed"])
            c["temp"] += r["temp_files"] > 0
            c["cut"] += bool(r["cut_line"])
            c["loaded"] += not any("does not load" in v or "load_bundle" in v for v in r["violations"])
            c["resumed"] += r.get("resume_rc") == 0
            c["bitwise"] += bool(r.get("bitwise"))
            c["metrics"] += bool(r.get("metrics_equal"))
            c["viol"] += bool(r["violations"])
        n = len(rs)
        lines.append(f"| {mode} | {n} | {c['landed']} | {c['temp']} | {c['cut']} | {c['loaded']}/{n} | "
                     f"{c['resumed']}/{n} | {c['bitwise']}/{n} | {c['metrics']}/{n} | {c['viol']} |")  # fmt: skip
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    which = argparse.ArgumentParser(add_help=False)
    which.add_argument("--campaign", choices=("sigkill", "io"), default="sigkill")
    first, rest = which.parse_known_args(argv)
    if first.campaign == "io":  # its own options: scripts/io_campaign.py --help
        return _script("io_campaign").main(rest)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--campaign", choices=("sigkill", "io"), default="sigkill",
        help="sigkill: this campaign; io: file I/O safety (scripts/io_campaign.py: --runs --seed --calls)",
    )  # fmt: skip
    ap.add_argument("--runs", type=int, default=14, help="number of interrupted runs")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill moments and save numbers")
    ap.add_argument(
        "--modes", default=",".join(MODES), help=f"comma-separated, taken in turn: {', '.join(MODES)}"
    )
    ap.add_argument("--steps", type=int, default=16, help="training steps per run")
    ap.add_argument("--checkpoint-every", type=int, default=2)
    ap.add_argument(
        "--workdir", type=Path, default=None, help="keep run folders here (default: a temp folder)"
    )
    ap.add_argument(
        "--keep", action="store_true", help="keep every run folder (default: only those with violations)"
    )
    ap.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    a = ap.parse_args(argv)
    modes = tuple(m.strip() for m in a.modes.split(",") if m.strip())
    bad = [m for m in modes if m not in MODES]
    if bad:
        ap.error(f"unknown mode(s) {', '.join(bad)}; choose from {', '.join(MODES)}")
    t0 = time.monotonic()
    rows = campaign(a.runs, a.seed, modes, a.steps, a.checkpoint_every, a.workdir, a.keep)
    print()
    print(f"{len(rows)} interrupted runs, seed {a.seed}, {time.monotonic() - t0:.0f} s, "
          f"{time.strftime('%Y-%m-%d %H:%M')}")  # fmt: skip
    print(summary(rows))
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1, default=str))
    return 1 if any(r["violations"] for r in rows) else 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    raise SystemExit(main())
