"""`ddpm-gui`: with no sub-command it opens DDPM Studio; sub-commands run the engine headless.

Errors a user can cause are one line on stderr and a non-zero exit, never a traceback
(set DDPM_GUI_DEBUG=1 to see tracebacks). Heavy imports (torch, datasets) happen inside the commands,
so `ddpm-gui --help` and the window's first paint stay fast.
"""

from __future__ import annotations

import argparse
import os
import sys

from ddpm_gui import __version__

EXAMPLES = """examples:
  ddpm-gui                                  open the app
  ddpm-gui train --data builtin --preset tiny --steps 500 --batch-size 64 --out runs/demo
  ddpm-gui train --out runs/demo --resume --steps 1000
  ddpm-gui sample --run runs/demo --n 16 --sampler ddim --steps 50 --out grid.png --gif reverse.gif
  ddpm-gui forward --data builtin --index 3 --out strip.png --gif forward.gif
  ddpm-gui denoise --run runs/demo --index 4 --t 50 --k 10 --out denoise.png
  ddpm-gui info
  ddpm-gui bench --preset tutorial --json bench.json
  ddpm-gui eval --run runs/demo --n 500 --json eval.json
"""


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors as one line on stderr (exit 2), like every other error of the CLI."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="ddpm-gui",
        description="DDPM Studio: train and explore denoising diffusion models on small images. "
        "With no command, opens the desktop app.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"ddpm-gui {__version__}")
    p.add_argument(
        "--self-test",
        action="store_true",
        help="open the window offscreen, train and sample a few "
        "steps in a temporary folder, print what was checked, exit 0 on success",
    )
    sub = p.add_subparsers(dest="command", metavar="command")
    from ddpm_gui.cli import export, images, queue, tb, tools, train

    for m in (train, images, tools, queue, tb, export):
        m.add_parsers(sub)
    return p


def _commands() -> dict:
    from ddpm_gui.cli import export, images, queue, tb, tools, train

    return {
        "train": train.cmd_train,
        "sample": images.cmd_sample,
        "forward": images.cmd_forward,
        "denoise": images.cmd_denoise,
        "info": tools.cmd_info,
        "bench": tools.cmd_bench,
        "eval": tools.cmd_eval,
        "queue": queue.cmd_queue,
        "export-tb": tb.cmd_export_tb,
        "export": export.cmd_export,
    }


def _warnings_as_lines() -> None:
    """The engine's and data layer's logged warnings (skipped images, ...) as `warning: ...` lines on stderr,
    like the command's own; once per process."""
    import logging

    log = logging.getLogger("ddpm_gui")
    if not any(getattr(h, "ddpm_gui_cli", False) for h in log.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("warning: %(message)s"))
        handler.setLevel(logging.WARNING)
        handler.ddpm_gui_cli = True  # type: ignore[attr-defined]
        log.addHandler(handler)
        log.propagate = False


def _check_outputs(args) -> None:
    """Every output file a command will write is checked before the work starts (sampling can take
    minutes): a folder, a read-only place or a full disk is said at once, worded for that option."""
    from ddpm_gui.engine.fileio import check_output

    if args.command == "train":
        return  # its --out is a run folder, checked by the run folder itself
    for name in ("out", "gif", "grid", "json"):
        value = getattr(args, name, None)
        if isinstance(value, str) and value != "-":
            check_output(value, f"--{name}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        if args.self_test:
            from ddpm_gui.selftest import self_test

            return self_test()
        from ddpm_gui.qt.app import run_app

        return run_app([sys.argv[0]])
    from ddpm_gui.errors import DDPMError

    _warnings_as_lines()
    try:
        _check_outputs(args)
        return _commands()[args.command](args)
    except DDPMError as exc:
        if os.environ.get("DDPM_GUI_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        if os.environ.get("DDPM_GUI_DEBUG"):
            raise
        print(
            f"error: {exc.strerror or exc}: {getattr(exc, 'filename', '') or ''}".rstrip(": "),
            file=sys.stderr,
        )
        return 2
