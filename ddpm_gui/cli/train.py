"""`ddpm-gui train`: its options are generated from TrainConfig's settings (engine/config.py), so a
setting, its default, its range and its help are written once. Which options the user gave comes from
argparse itself (every generated option defaults to SUPPRESS), so abbreviations and `--opt=value` count."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ddpm_gui.cli.common import add_schedule_args, number_type, schedule_from_args, schedule_given
from ddpm_gui.engine.config import SETTING_TYPES, SETTINGS, TrainConfig
from ddpm_gui.engine.recipes import RECIPES


def add_setting_options(p: argparse.ArgumentParser) -> None:
    """One option per TrainConfig setting (the schedule through the shared schedule options)."""
    defaults = TrainConfig()
    for name, s in SETTINGS.items():
        kind = SETTING_TYPES[name]
        default = getattr(defaults, name)
        if name == "schedule":
            continue
        if kind is bool:
            g = p.add_mutually_exclusive_group()
            for flag, value, text in (
                (s.flag, True, s.help),
                (s.negative, False, f"the opposite of {s.flag}"),
            ):
                mark = " (the default)" if value == default else ""
                g.add_argument(flag, dest=name, action="store_const", const=value, default=argparse.SUPPRESS,
                               help=text + mark)  # fmt: skip
            continue
        shown = "" if default is None else f" (default: {default})"
        kw: dict = {"dest": name, "default": argparse.SUPPRESS, "help": s.help + shown}
        if kind in (int, float):
            kw["type"] = number_type(kind, s.lo, s.hi)
            kw["metavar"] = "N" if kind is int else "X"
        if s.choices:
            kw["choices"] = s.choices
        p.add_argument(s.flag, **kw)  # fmt: skip
    add_schedule_args(p)


def add_parsers(sub) -> None:
    t = sub.add_parser(
        "train",
        help="train a model (headless)",
        description="Train a DDPM. Writes a run folder: config.toml, metrics.jsonl, checkpoints/, samples/. "
        "Settings come from the defaults, then --recipe, then --config FILE, then the options given here.",
    )
    t.add_argument("--out", required=True, help="run folder (new, empty, or a run to --resume)")
    t.add_argument(
        "--recipe",
        default=None,
        metavar="NAME",
        help="start from a named set of settings (options given here still win) - "
        + "; ".join(f"{r.name}: {r.note}" for r in RECIPES.values()).replace("%", "%%"),
    )
    t.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="start from the settings in a TOML file (options still win)",
    )
    t.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out (steps, optimizer, EMA, RNG); settings that are safe to change "
        "mid-run ("
        + ", ".join(SETTINGS[n].flag for n in SETTINGS if SETTINGS[n].resumable)
        + ") may be given",
    )
    t.add_argument(
        "--restart",
        action="store_true",
        help="with --resume, when the run's checkpoints are gone: train again from step 0 (its old metrics are kept)",
    )
    t.add_argument(
        "--allow-data-change",
        action="store_true",
        help="with --resume, go on although the training data differs from the data the run started with",
    )
    t.add_argument(
        "--nproc",
        type=number_type(int, 1, 1024),
        default=1,
        metavar="N",
        help="train as N processes on this machine (one per GPU; DDP, started through torchrun); "
        "--batch-size is the global batch and must be divisible by N. Several machines: see torchrun",
    )
    add_setting_options(t)


def given_settings(args) -> dict:
    """The TrainConfig fields the user gave on the command line (the schedule excluded)."""
    return {name: getattr(args, name) for name in SETTINGS if name != "schedule" and hasattr(args, name)}


def config_from_args(args) -> TrainConfig:
    """A new run's config: defaults <- --recipe <- --config FILE <- the options given."""
    from ddpm_gui.engine.config import read_config_toml
    from ddpm_gui.engine.recipes import get_recipe

    cfg = TrainConfig()
    if args.recipe:
        cfg = get_recipe(args.recipe).apply(cfg)
    if args.config:
        cfg = cfg.replace(**read_config_toml(args.config))
    cfg = cfg.replace(**given_settings(args))
    if schedule_given(args):
        cfg = cfg.replace(schedule=schedule_from_args(args, base=cfg.schedule))
    if cfg.schedule.rescale_zero_snr and "prediction" not in given_settings(args):
        cfg = cfg.replace(prediction="v")  # eps cannot be learnt where no signal is left at t = T
    return cfg


def resumed_config(args, saved: TrainConfig) -> TrainConfig:
    """The saved config with the changes the user asked for; a change that a resumed run cannot take is a
    ConfigError that names it, never silently ignored."""
    from ddpm_gui.engine.config import RESUMABLE
    from ddpm_gui.errors import ConfigError

    if args.recipe or args.config:
        raise ConfigError(
            "A resumed run keeps its own settings: drop --recipe/--config and give only the options to change."
        )
    changes = given_settings(args)
    if schedule_given(args):
        changes["schedule"] = schedule_from_args(args, base=saved.schedule)
    fixed = [
        f"{SETTINGS[k].flag} ({getattr(saved, k)!r} in the run, {v!r} given)"
        for k, v in changes.items()
        if k not in RESUMABLE and v != getattr(saved, k)
    ]
    if fixed:
        raise ConfigError(
            "A resumed run cannot change "
            + "; ".join(fixed)
            + ": leave those out, or start a new run folder."
        )
    return saved.replace(**changes)


class _Console:
    """What `train` prints for each engine event: a tqdm bar on stderr, one line per notice or checkpoint.
    `rank`: one of several processes; those other than rank 0 print their failures only."""

    def __init__(self, preset: str, rank: int = 0):
        self.preset = preset
        self.bar = None
        self.code = 0
        self.rank = rank

    def write(self, text: str, file=None) -> None:
        from tqdm import tqdm

        tqdm.write(text, file=file or sys.stdout)  # around the bar, which is on stderr

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def show(self, e) -> None:
        from tqdm import tqdm

        from ddpm_gui.engine import events as ev

        if self.rank and not isinstance(e, ev.Failed):
            return
        if isinstance(e, ev.Started):
            self.write(
                f"{'Resuming' if e.resumed else 'Training'} {self.preset} ({e.n_params:,} parameters) on "
                f"{e.device}, {e.n_images:,} images of {e.dataset}, batch {e.batch_size}, run folder {e.run_dir}"
            )
            self.bar = tqdm(total=e.total_steps, initial=e.step, unit="step", dynamic_ncols=True)
        elif isinstance(e, ev.Progress) and self.bar is not None:
            self.bar.update(e.step - self.bar.n)
            self.bar.set_postfix(loss=f"{e.loss_smooth:.4f}", img_s=f"{e.img_per_s:.0f}")
        elif isinstance(e, ev.Notice):
            if e.level == "warning":
                self.write("warning: " + e.message, file=sys.stderr)
            else:
                self.write(e.message)
        elif isinstance(e, ev.CheckpointSaved):
            self.write(f"checkpoint: {e.path}")
        elif isinstance(e, ev.Preview):
            self.write(f"preview saved at step {e.step}")
        elif isinstance(e, ev.Finished):
            self.close_bar()
            print(f"{e.reason} at step {e.step}; last checkpoint {e.checkpoint}")
        elif isinstance(e, ev.Failed):
            self.close_bar()
            print(f"error: {f'rank {self.rank}: ' if self.rank else ''}{e.message}", file=sys.stderr)
            self.code = 2 if e.bad_input else 1  # the user's input, or something that failed while running


def _on_signals(handler) -> dict:
    """Install `handler` for Ctrl+C and SIGTERM; the old handlers, to put back."""
    import signal

    old = {}
    for sig in (signal.SIGINT, getattr(signal, "SIGTERM", None)):
        if sig is not None:
            try:
                old[sig] = signal.signal(sig, handler)
            except ValueError:  # not the main thread (cli.main called from a thread): keep the defaults
                pass
    return old


def _resume_config(args, out: Path) -> TrainConfig:
    """The config to resume with: the run's own with the changes given; for a run killed before its
    settings file was written (its marker only), the options given, as for a new run."""
    from ddpm_gui.engine.config import LEGACY_RUN_CONFIG, RUN_CONFIG, load_run_config
    from ddpm_gui.engine.runfolder import is_run_dir

    if is_run_dir(out) and not (out / RUN_CONFIG).exists() and not (out / LEGACY_RUN_CONFIG).exists():
        return config_from_args(args)
    return resumed_config(args, load_run_config(out))


def train_argv(args) -> list[str]:
    """The `train` command line that gives `args` again (less --nproc): what each process is started with."""
    from ddpm_gui.cli.common import SCHEDULE_OPTIONS

    argv = ["train", "--out", str(args.out)]
    argv += ["--recipe", args.recipe] if args.recipe else []
    argv += ["--config", args.config] if args.config else []
    argv += [flag for flag, on in (("--resume", args.resume), ("--restart", args.restart),
                                   ("--allow-data-change", args.allow_data_change)) if on]  # fmt: skip
    for name, value in given_settings(args).items():
        s = SETTINGS[name]
        if SETTING_TYPES[name] is bool:
            argv.append(s.flag if value else s.negative)
        elif value is not None:
            argv += [s.flag, repr(value) if isinstance(value, float) else str(value)]
    for name in SCHEDULE_OPTIONS:
        value = getattr(args, name, None)
        flag = "--" + name.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is not None:
            argv += [flag, repr(value) if isinstance(value, float) else str(value)]
    return argv


def launch_processes(args) -> int:
    """`--nproc N`: the same command as N processes under torchrun, a child process in its own session;
    Ctrl+C and SIGTERM are passed on to it (torchrun passes them to every process: rank 0 saves a
    checkpoint). Returns torchrun's exit code, or 128 + the signal after a stop."""
    import signal
    import subprocess

    from ddpm_gui.engine import distributed

    cfg = _resume_config(args, Path(args.out)) if args.resume else config_from_args(args)
    cfg.validate()
    distributed.check_batch(cfg.batch_size, args.nproc)
    proc = subprocess.Popen(
        distributed.torchrun_command(args.nproc, train_argv(args)), start_new_session=True
    )
    got: list[int] = []

    def forward(signum, _frame):
        got.append(signum)
        proc.send_signal(signum)

    old = _on_signals(forward)
    try:
        code = proc.wait()
        return 128 + got[0] if got else code  # stopped as asked: the 1-process run's code
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def cmd_train(args) -> int:
    from ddpm_gui.engine import distributed
    from ddpm_gui.engine.device import pick_device

    if args.nproc > 1 and not distributed.launched():
        return launch_processes(args)
    out = Path(args.out)
    cfg = _resume_config(args, out) if args.resume else config_from_args(args)
    cfg.validate()
    if not distributed.launched():
        pick_device(cfg.device)  # a device that is not here (cuda:3) is said before a run folder exists
    dist = distributed.init_from_env(cfg.device, cfg.batch_size)
    try:
        return _train(args, cfg, out, dist)
    finally:
        distributed.close()


def _train(args, cfg: TrainConfig, out: Path, dist) -> int:
    import signal
    import time

    from ddpm_gui.engine.trainer import Trainer

    trainer = Trainer(
        cfg, out, resume=args.resume, restart=args.restart, allow_data_change=args.allow_data_change
    )
    console = _Console(cfg.preset, dist.rank)
    interrupted: list[tuple[int, float]] = []

    def graceful(signum, _frame):
        # Ctrl+C / SIGTERM: finish the current step, save a checkpoint, exit; a second one aborts at once.
        # Under torchrun a terminal's Ctrl+C reaches each process twice (from the terminal and relayed by
        # torchrun, which may follow with SIGTERM): only a Ctrl+C seconds later is a second one.
        if interrupted:
            when = interrupted[0][1]
            if not dist.active or (signum == signal.SIGINT and time.monotonic() - when > 5):
                raise KeyboardInterrupt
            return
        interrupted.append((signum, time.monotonic()))
        trainer.stop()
        if dist.leader:
            console.write(
                "stopping: saving a checkpoint after this step (press Ctrl+C again to abort without saving)"
            )

    old_handlers = _on_signals(graceful)
    try:
        for e in trainer.run():
            console.show(e)
    except KeyboardInterrupt:
        # a second Ctrl+C: abort now; the last checkpoint on disk is intact
        print(f"\naborted; the last checkpoint is {trainer.last_checkpoint}", file=sys.stderr)
        return 130
    finally:
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
    if interrupted and console.code == 0:
        return 128 + int(interrupted[0][0])
    return console.code
