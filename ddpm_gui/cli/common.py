"""Argument types and option groups shared by several sub-commands."""

from __future__ import annotations

import argparse
import json
import sys

# `--model demo`: the model shipped with the app (a folder of that name is ./demo); torch-free to import
from ddpm_gui.engine.demo import DEMO_NAME as DEMO_MODEL


def number_type(kind: type, lo: float | None = None, hi: float | None = None):
    """An argparse type: a whole (kind=int) or finite (kind=float) number within [lo, hi], else a one-line
    usage error that names the range."""
    import math

    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'a whole number' if kind is int else 'a number'}, got {text!r}"
            ) from None
        if kind is float and not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            show = (lambda x: f"{int(x):,}") if kind is int else (lambda x: f"{x:g}")
            if hi is None:
                rng = "at least 1" if lo == 1 else f"{show(lo)} or more"
            else:
                rng = f"from {show(lo)} to {show(hi)}"
            raise argparse.ArgumentTypeError(f"must be {rng}, got {text}")
        return v

    return parse


positive_int = number_type(int, 1)
nonneg_int = number_type(int, 0)


def add_schedule_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("noise schedule (default: the tutorial's, linear 1e-4..0.04 over T=100)")
    g.add_argument("--schedule", default=None, help="preset: tutorial, ddpm-paper, cosine, tutorial-zero-snr")
    g.add_argument(
        "--schedule-kind",
        choices=["linear", "cosine", "quadratic"],
        default=None,
        help="how beta grows with t (overrides the preset's)",
    )
    g.add_argument("--T", type=int, default=None, help="number of diffusion steps")
    g.add_argument(
        "--beta-start", type=float, default=None, help="first beta of the schedule (linear, quadratic)"
    )
    g.add_argument("--beta-end", type=float, default=None, help="last beta, at t=T (linear, quadratic)")
    g.add_argument("--zero-snr", action="store_true", default=None, help="rescale to zero terminal SNR")


def command(sub, name: str, help: str, **kw) -> argparse.ArgumentParser:
    """A sub-command whose --help shows every option's default."""
    return sub.add_parser(name, help=help, formatter_class=argparse.ArgumentDefaultsHelpFormatter, **kw)


def add_model_source(p: argparse.ArgumentParser, foreign: bool = True) -> None:
    """--model (any model: see load_bundle), --run or --checkpoint (one of them), and with `foreign` the
    options for a plain state dict."""
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument(
        "--model",
        metavar="PATH_OR_ID",
        help="any model: a run folder, a checkpoint, a diffusers model folder, a Hugging Face model id "
        f"already in the local cache (never downloaded), or '{DEMO_MODEL}' (the model shipped with the app)",
    )
    g.add_argument("--run", help="run folder (its newest checkpoint)")
    g.add_argument(
        "--checkpoint",
        help="a .safetensors checkpoint"
        + (", or a plain .pt/.pth state dict with --preset" if foreign else ""),
    )
    if foreign:
        add_foreign_args(p)


def pick(args, *names: str) -> dict:
    """The options `names` as keyword arguments (the engine's parameters share the options' names)."""
    return {name: getattr(args, name) for name in names}


def add_foreign_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "foreign weights (a plain state dict of a DDPM Studio UNet, read with "
        "torch.load(weights_only=True): never unpickled code)"
    )
    g.add_argument(
        "--preset", default=None, help="the model preset the --checkpoint weights were trained with"
    )
    g.add_argument(
        "--image-size",
        dest="model_image_size",
        type=positive_int,
        default=32,
        metavar="N",
        help="the image size the --preset weights were trained at (a run or checkpoint knows its own)",
    )


def add_sampler_args(p: argparse.ArgumentParser) -> None:
    """--sampler (core.spec.SAMPLERS, torch-free) and --steps for the strided ones."""
    from ddpm_gui.core.spec import SAMPLERS

    p.add_argument(
        "--sampler",
        choices=list(SAMPLERS),
        default="ddpm",
        help="; ".join(f"{s.name}: {s.help}" for s in SAMPLERS.values()),
    )
    strided = ", ".join(s.name for s in SAMPLERS.values() if s.strided)
    p.add_argument("--steps", type=positive_int, default=50, help=f"steps of a strided sampler ({strided})")


def add_sample_mode_arg(p: argparse.ArgumentParser) -> None:
    modes = [
        "eager",
        "auto",
        "cuda-graph",
        "compile",
    ]  # ddpm_gui.engine.accel.MODES (not imported here: torch)
    p.add_argument(
        "--sample-mode",
        choices=modes,
        default="auto",
        help="sampling acceleration (auto: CUDA graphs on CUDA, eager elsewhere; any failure runs eagerly)",
    )


SCHEDULE_OPTIONS = ("schedule", "schedule_kind", "T", "beta_start", "beta_end", "zero_snr")


def schedule_given(args) -> bool:
    """Whether any noise-schedule option was given (argparse's own record: the defaults are None)."""
    return any(getattr(args, name, None) is not None for name in SCHEDULE_OPTIONS)


def schedule_from_args(args, base=None):
    """The schedule the options describe: a --schedule preset (else `base`, else the tutorial's) with the
    --schedule-kind/--T/--beta-start/--beta-end/--zero-snr edits on top."""
    from dataclasses import replace

    from ddpm_gui.core.spec import SCHEDULE_PRESETS, ScheduleConfig
    from ddpm_gui.errors import ConfigError

    base = base or ScheduleConfig()
    if args.schedule:
        if args.schedule not in SCHEDULE_PRESETS:
            raise ConfigError(
                f"Unknown schedule '{args.schedule}': choose one of {', '.join(SCHEDULE_PRESETS)}."
            )
        base = SCHEDULE_PRESETS[args.schedule]
    changes = {}
    for name, attr in (
        ("schedule_kind", "kind"),
        ("T", "T"),
        ("beta_start", "beta_start"),
        ("beta_end", "beta_end"),
        ("zero_snr", "rescale_zero_snr"),
    ):
        v = getattr(args, name, None)
        if v is not None:
            changes[attr] = v
    return replace(base, **changes).validate()


def load_bundle(args):
    """The model --model, --run or --checkpoint names (--model demo: the shipped demo model)."""
    from ddpm_gui.engine.sampler import load_bundle
    from ddpm_gui.errors import CheckpointError, ConfigError

    model = getattr(args, "model", None)
    if (args.run or model == DEMO_MODEL) and args.preset:
        raise ConfigError(
            "--preset is for a --checkpoint file of foreign weights: a run folder describes its own model."
        )
    if model == DEMO_MODEL:
        try:
            from ddpm_gui.engine.demo import load_demo_bundle
        except ImportError:
            raise CheckpointError(
                "This installation has no demo model: train one (ddpm-gui train) or pass a --model path."
            ) from None
        return load_demo_bundle(device=args.device)
    return load_bundle(
        model or args.run or args.checkpoint,
        device=args.device,
        use_ema=not getattr(args, "no_ema", False),
        preset=args.preset,
        image_size=args.model_image_size,
    )


def note_fallback(bundle) -> None:
    """What loading and accelerating the model did that the user did not ask for, on stderr: a damaged newer
    checkpoint of a run that was skipped (`warning:`), the demo model's label and sampling that fell back to
    eager mode (`note:`)."""
    from ddpm_gui.engine.demo import DEMO_NOTE

    for note in getattr(bundle, "notes", None) or ():
        print(f"{'note' if note == DEMO_NOTE else 'warning'}: {note}", file=sys.stderr)
    reason = getattr(bundle.model, "fallback_reason", None)
    if reason:
        print(f"note: {reason}", file=sys.stderr)


def int_list(text: str, what: str) -> tuple[int, ...]:
    from ddpm_gui.errors import ConfigError

    try:
        vals = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(
            f"{what} must be whole numbers separated by commas, like 1,16,64; got {text!r}."
        ) from None
    if not vals or min(vals) < 1:
        raise ConfigError(f"{what} must be whole numbers of at least 1, like 1,16,64; got {text!r}.")
    return vals


def write_json(path: str, obj: dict) -> None:
    from ddpm_gui.engine.checkpoint import atomic_write_bytes

    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


class PhaseBars:
    """A `progress(done, total, message)` callback (the engine's) drawn as tqdm bars on stderr, one per phase
    (the message's text before its first colon): stdout stays clean for --json."""

    def __init__(self):
        self.bar = None
        self.phase = None

    def __call__(self, done: int, total: int, message: str) -> None:
        from tqdm import tqdm

        phase = message.split(":")[0]
        if phase != self.phase or self.bar is None:
            self.close()
            self.phase = phase
            self.bar = tqdm(total=total, desc=phase, unit="", file=sys.stderr, dynamic_ncols=True)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
