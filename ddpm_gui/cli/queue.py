"""`ddpm-gui queue add|list|remove|run`: the training queue of a runs folder (engine/queue.py), the same
queue the app's Train tab adds to ("Add to queue") and its Runs tab shows. `queue run` trains the queued
runs one after the other, each exactly as `ddpm-gui train` would (the same code path), until the queue is
empty or it is interrupted (Ctrl+C stops the run going on, which saves a checkpoint; the rest stay queued)."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from ddpm_gui.cli.common import command
from ddpm_gui.engine.recipes import RECIPES


def add_parsers(sub) -> None:
    from ddpm_gui.cli.train import add_setting_options
    from ddpm_gui.engine.runs import default_runs_root

    q = sub.add_parser(
        "queue",
        help="queue training runs and train them one after the other (headless)",
        description="The training queue of a runs folder (queue.json in it), shared with the app.",
    )
    qs = q.add_subparsers(dest="queue_command", metavar="action", required=True)
    runs_help = f"the runs folder whose queue to use (default: {default_runs_root()})"

    a = command(qs, "add", "queue a run: settings as for `ddpm-gui train`")
    a.add_argument("--runs", default=None, help=runs_help)
    a.add_argument(
        "--out",
        dest="run_out",
        default=None,
        help="its run folder (default: a new dated folder in the runs folder)",
    )
    a.add_argument(
        "--recipe",
        default=None,
        metavar="NAME",
        help="start from a named set of settings: " + ", ".join(RECIPES),
    )
    a.add_argument("--config", default=None, metavar="FILE", help="start from the settings in a TOML file")
    add_setting_options(a)

    ls = command(qs, "list", "show the queue")
    ls.add_argument("--runs", default=None, help=runs_help)
    ls.add_argument("--json", action="store_true", help="print JSON")

    rm = command(qs, "remove", "take a run off the queue")
    rm.add_argument("--runs", default=None, help=runs_help)
    rm.add_argument("entry", help="its position (from 1, as `queue list` shows) or its id")

    r = command(qs, "run", "train the queued runs one after the other")
    r.add_argument("--runs", default=None, help=runs_help)


def _queue(args):
    from ddpm_gui.engine.queue import RunQueue
    from ddpm_gui.engine.runs import default_runs_root

    return RunQueue(Path(args.runs).expanduser() if args.runs else default_runs_root())


def cmd_queue(args) -> int:
    return {"add": _add, "list": _list, "remove": _remove, "run": run_queue}[args.queue_command](args)


def _add(args) -> int:
    from ddpm_gui.cli.train import config_from_args

    q = _queue(args)
    entry = q.add(config_from_args(args).validate(), args.run_out)
    print(f"queued {entry.id} at position {len(q)}: {entry.describe()}")
    return 0


def _list(args) -> int:
    entries = _queue(args).entries()
    if args.json:
        print(json.dumps([e.to_dict() for e in entries], indent=2))
        return 0
    if not entries:
        print("the queue is empty")
    for i, e in enumerate(entries, 1):
        note = f"  (skipped: {e.error})" if e.error else ""
        print(f"{i}. {e.id}  {e.describe()}{note}")
    return 0


def _remove(args) -> int:
    entry = _queue(args).remove(args.entry)
    print(f"removed {entry.id}: {entry.describe()}")
    return 0


def train_entry(out: Path, config) -> int:
    """Train one queued run through `ddpm-gui train --out OUT --config FILE` in this process: the settings
    go through a temporary settings file, so the run is set up exactly as the train command sets it up."""
    from ddpm_gui.cli import build_parser
    from ddpm_gui.cli.train import cmd_train
    from ddpm_gui.engine.config import config_toml

    fd, name = tempfile.mkstemp(prefix="ddpm-queue-", suffix=".toml")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(config_toml(config))
        return cmd_train(build_parser().parse_args(["train", "--out", str(out), "--config", name]))
    finally:
        os.unlink(name)


def run_queue(args) -> int:
    """Take the queued runs one by one and train each; exit 0 when all completed, 1 when one did not, the
    signal's code when interrupted (the rest stay queued)."""
    from ddpm_gui.engine.queue import unique_run_dir
    from ddpm_gui.engine.runfolder import check_new_run_dir
    from ddpm_gui.errors import DDPMError

    q = _queue(args)
    code, done = 0, 0
    while True:
        entry = q.pop_next()
        if entry is None:
            break
        out = Path(entry.out) if entry.out else unique_run_dir(q.root)
        try:
            check_new_run_dir(out)
            entry.config.validate()
        except DDPMError as exc:
            q.put_back(entry, str(exc))
            print(f"error: queued run {entry.id} cannot start (left in the queue): {exc}", file=sys.stderr)
            code = 1
            continue
        print(f"queue: training {entry.id} ({entry.describe()}) in {out}")
        rc = train_entry(out, entry.config)
        done += 1
        if rc >= 128:  # interrupted: the run saved a checkpoint; the others wait
            print(f"queue: interrupted; {len(q)} run(s) left in the queue", file=sys.stderr)
            return rc
        code = code or (1 if rc else 0)
    print(
        f"queue: {done} run(s) trained; the queue is empty" if not len(q) else f"queue: {done} run(s) trained"
    )
    return code
