"""`ddpm-gui`: with no sub-command it opens DDPM Studio; sub-commands run the engine headless.

Errors a user can cause are one line on stderr and a non-zero exit, never a traceback
(set DDPM_GUI_DEBUG=1 to see tracebacks). Heavy imports (torch, datasets) happen inside the commands,
so `ddpm-gui --help` and the window's first paint stay fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

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


def _positive_int(v: str) -> int:
    try:
        n = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {v!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def _nonneg_int(v: str) -> int:
    try:
        n = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {v!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {n}")
    return n


def _add_schedule_args(p: argparse.ArgumentParser) -> None:
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


def _add_foreign_args(p: argparse.ArgumentParser) -> None:
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
        type=_positive_int,
        default=32,
        metavar="N",
        help="the image size the --preset weights were trained at (a run or checkpoint knows its own)",
    )


def _add_sample_mode_arg(p: argparse.ArgumentParser) -> None:
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


def _schedule_from_args(args):
    from dataclasses import replace

    from ddpm_gui.core.schedule import SCHEDULE_PRESETS, ScheduleConfig
    from ddpm_gui.errors import ConfigError

    base = ScheduleConfig()
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

    # --- train
    t = sub.add_parser(
        "train",
        help="train a model (headless)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Train a DDPM. Writes a run folder: config.json, metrics.jsonl, checkpoints/, samples/.",
    )
    t.add_argument(
        "--data",
        default="builtin",
        help="builtin, builtin:N, a Hugging Face id (cifar10), a folder or a parquet/arrow file",
    )
    t.add_argument(
        "--image-size", type=_positive_int, default=32, help="train at NxN pixels (images are resized)"
    )
    t.add_argument("--limit", type=_positive_int, default=None, help="use only the first N images")
    t.add_argument(
        "--preset", default="tiny", help="model preset: tutorial (the article's 42M UNet), small, tiny"
    )
    t.add_argument(
        "--recipe",
        default=None,
        metavar="NAME",
        help="start from a named set of settings (options given here still win): quick-cpu (recognisable "
        "built-in shapes in about 10 minutes on a 2-core CPU), tutorial (the article's)",
    )
    cond = t.add_mutually_exclusive_group()
    cond.add_argument(
        "--conditional", action="store_true", help="class-conditional (classifier-free guidance)"
    )
    cond.add_argument(
        "--unconditional",
        action="store_true",
        help="not class-conditional, also where the recipe is (for data without class labels)",
    )
    t.add_argument(
        "--prediction", choices=["eps", "v"], default="eps", help="what the network predicts: the noise or v"
    )
    t.add_argument("--steps", type=_positive_int, default=2000, help="total training steps")
    t.add_argument("--batch-size", type=_positive_int, default=128, help="images per training step")
    t.add_argument("--lr", type=float, default=3e-4, help="peak learning rate (AdamW)")
    t.add_argument("--ema", type=float, default=0.999, help="EMA decay (0 = off)")
    t.add_argument("--grad-clip", type=float, default=1.0, help="clip the gradient norm to this (0 = off)")
    t.add_argument("--warmup", type=_nonneg_int, default=100, help="lr warm-up steps")
    t.add_argument("--no-amp", action="store_true", help="no bf16 autocast on CUDA")
    t.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    t.add_argument("--seed", type=_nonneg_int, default=0, help="random seed (weights, batches, noise)")
    t.add_argument(
        "--preview-every", type=_nonneg_int, default=0, help="save a sample grid every N steps (0 = off)"
    )
    t.add_argument(
        "--checkpoint-every", type=_nonneg_int, default=500, help="save a checkpoint every N steps (0 = off)"
    )
    t.add_argument(
        "--checkpoint-minutes", type=float, default=5.0, help="also save one every M minutes (0 = off)"
    )
    t.add_argument("--keep", type=_positive_int, default=3, help="rolling number of checkpoints kept")
    t.add_argument(
        "--log-every",
        type=_positive_int,
        default=10,
        help="read the loss and log it to metrics.jsonl every N steps",
    )
    t.add_argument("--out", required=True, help="run folder")
    t.add_argument(
        "--resume", action="store_true", help="continue the run in --out (steps, optimizer, EMA, RNG)"
    )
    _add_schedule_args(t)

    # --- sample
    s = sub.add_parser(
        "sample",
        help="sample images from a trained model",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="run folder (its newest checkpoint)")
    src.add_argument(
        "--checkpoint", help="a .safetensors checkpoint, or a plain .pt/.pth state dict with --preset"
    )
    _add_foreign_args(s)
    s.add_argument("--n", type=_positive_int, default=16, help="number of images")
    s.add_argument(
        "--sampler",
        choices=["ddpm", "ddim"],
        default="ddpm",
        help="ddpm: the full ancestral chain; ddim: --steps steps",
    )
    s.add_argument("--steps", type=_positive_int, default=50, help="DDIM steps")
    s.add_argument("--eta", type=float, default=0.0, help="DDIM eta")
    s.add_argument(
        "--variance", choices=["beta", "posterior"], default="beta", help="DDPM: sigma^2 = beta_t or beta~_t"
    )
    s.add_argument("--seed", type=_nonneg_int, default=0, help="random seed of the noise")
    s.add_argument(
        "--class", dest="class_label", default=None, help="class index or name (conditional models)"
    )
    s.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale")
    s.add_argument("--no-clip", action="store_true", help="do not clip the predicted x0")
    s.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    s.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    _add_sample_mode_arg(s)
    s.add_argument("--out", default="samples.png", help="PNG grid of the final samples")
    s.add_argument("--gif", default=None, help="animated GIF of the reverse process")
    s.add_argument("--scale", type=_positive_int, default=2, help="pixel scale of the outputs")

    # --- forward
    f = sub.add_parser(
        "forward",
        help="show the forward (noising) process of one image",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    fsrc = f.add_mutually_exclusive_group()
    fsrc.add_argument("--data", default="builtin", help="dataset to take the image from")
    fsrc.add_argument("--image", help="an image file instead")
    f.add_argument("--index", type=_nonneg_int, default=3, help="image index in the dataset")
    f.add_argument("--image-size", type=_positive_int, default=32, help="resize the image to NxN pixels")
    f.add_argument("--frames", type=_positive_int, default=6, help="frames in the strip")
    f.add_argument(
        "--closed-form", action="store_true", help="use q(x_t|x_0) instead of iterating q(x_t|x_(t-1))"
    )
    f.add_argument("--seed", type=_nonneg_int, default=0, help="random seed of the noise")
    f.add_argument("--out", default="forward.png", help="PNG strip of --frames steps")
    f.add_argument("--gif", default=None, help="animated GIF of every step, x_0 to x_T")
    f.add_argument("--scale", type=_positive_int, default=4, help="pixel scale of the outputs")
    _add_schedule_args(f)

    # --- denoise
    d = sub.add_parser(
        "denoise",
        help="the tutorial's experiment: noise an image to t and denoise it K ways",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    dsrc = d.add_mutually_exclusive_group(required=True)
    dsrc.add_argument("--run", help="run folder (its newest checkpoint)")
    dsrc.add_argument(
        "--checkpoint", help="a .safetensors checkpoint, or a plain .pt/.pth state dict with --preset"
    )
    _add_foreign_args(d)
    d.add_argument("--data", default="builtin", help="dataset to take the image from")
    d.add_argument("--image", default=None, help="an image file instead of --data/--index")
    d.add_argument("--index", type=_nonneg_int, default=4, help="image index in the dataset")
    d.add_argument("--t", type=_nonneg_int, default=50, help="timestep to noise the image to")
    d.add_argument("--k", type=_positive_int, default=10, help="number of independent denoisings")
    d.add_argument("--seed", type=_nonneg_int, default=0, help="random seed of the noise")
    d.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    _add_sample_mode_arg(d)
    d.add_argument("--out", default="denoise.png", help="PNG row: original, noised, denoised")
    d.add_argument("--scale", type=_positive_int, default=3, help="pixel scale of the output")

    # --- bench
    b = sub.add_parser(
        "bench",
        help="time DDPM Studio's training and sampling against the tutorial's own loop",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="In one process: the tutorial's training loop and DDPM Studio's trainer on the same "
        "model and batch (img/s, speedup, FLOPs, TFLOP/s, fraction of the measured matmul peak), "
        "sampling time for the full DDPM chain, peak memory. See docs/benchmarks.md.",
    )
    b.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    b.add_argument("--preset", default="tutorial", help="model preset for both loops")
    b.add_argument("--batch-size", type=_positive_int, default=128, help="training batch size of both loops")
    b.add_argument("--image-size", type=_positive_int, default=32, help="image size (NxN) of both loops")
    b.add_argument("--iters", type=_positive_int, default=5, help="timed steps of each loop (median)")
    b.add_argument("--warmup", type=_nonneg_int, default=2, help="untimed steps of each loop first")
    b.add_argument("--data", default="builtin", help="dataset both loops read")
    b.add_argument(
        "--sample-batches", default="1,16,64", help="batch sizes for the sampling times, comma-separated"
    )
    b.add_argument(
        "--sample-repeats", type=_positive_int, default=1, help="timed sampling runs per batch size (median)"
    )
    _add_sample_mode_arg(b)
    b.add_argument("--skip-sampling", action="store_true", help="time training only")
    b.add_argument(
        "--variants", action="store_true", help="also time training with channels_last and torch.compile"
    )
    b.add_argument(
        "--threads", type=_positive_int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    b.add_argument(
        "--quick", action="store_true", help="a smoke run: tiny preset, 16x16, batch 16, few steps"
    )
    b.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")

    # --- eval
    e = sub.add_parser(
        "eval",
        help="sample quality without a network: a classifier trained on the real images",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Draw samples from a run, classify them with a small CNN trained on the run's "
        "(labelled) dataset and cached, and print the classifier's held-out accuracy, the share of "
        "recognisable samples (conditional: accuracy on the requested class) and the Frechet distance "
        "of its features, real vs generated and real vs real.",
    )
    esrc = e.add_mutually_exclusive_group(required=True)
    esrc.add_argument("--run", help="run folder (its newest checkpoint)")
    esrc.add_argument("--checkpoint", help="a .safetensors checkpoint")
    e.add_argument("--data", default=None, help="labelled dataset (default: the one the run trained on)")
    e.add_argument("--n", type=_positive_int, default=500, help="number of samples")
    e.add_argument(
        "--sampler",
        choices=["ddpm", "ddim"],
        default="ddpm",
        help="ddpm: the full ancestral chain; ddim: --steps steps",
    )
    e.add_argument("--steps", type=_positive_int, default=50, help="DDIM steps")
    e.add_argument(
        "--guidance", type=float, default=1.0, help="classifier-free guidance scale (conditional models)"
    )
    e.add_argument("--seed", type=_nonneg_int, default=0, help="random seed of the samples")
    e.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    e.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    _add_sample_mode_arg(e)
    e.add_argument(
        "--retrain", action="store_true", help="train the classifier again instead of using the cache"
    )
    e.add_argument("--grid", default=None, metavar="PNG", help="also save the first 64 samples as a grid")
    e.add_argument(
        "--json",
        nargs="?",
        const="-",
        default=None,
        metavar="FILE",
        help="write the results as JSON (to FILE, or to stdout when no FILE is given)",
    )

    # --- info
    i = sub.add_parser("info", help="devices, versions, and every model preset with parameters and FLOPs")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.add_argument("--image-size", type=_positive_int, default=32, help="image size (NxN) for the FLOPs")
    return p


# ----------------------------------------------------------------------------- commands


# TrainConfig field -> the train options that set it (an option given on the command line wins over --recipe)
_RECIPE_FLAGS = {
    "preset": {"preset"}, "image_size": {"image-size"}, "batch_size": {"batch-size"}, "steps": {"steps"},
    "lr": {"lr"}, "ema_decay": {"ema"}, "warmup_steps": {"warmup"}, "preview_every": {"preview-every"},
    "schedule": {"schedule", "schedule-kind", "T", "beta-start", "beta-end", "zero-snr"}, "prediction": {"prediction"},
    "conditional": {"conditional", "unconditional"},
}  # fmt: skip


def _recipe_changes(name: str, given: set[str]) -> dict:
    from ddpm_gui.engine.recipes import recipe_fields

    fields = recipe_fields(name)
    return {k: v for k, v in fields.items() if not (_RECIPE_FLAGS.get(k, set()) & given)}


def cmd_train(args) -> int:
    import signal

    from tqdm import tqdm

    from ddpm_gui.engine import events as ev
    from ddpm_gui.engine.config import TrainConfig, load_run_config
    from ddpm_gui.engine.trainer import Trainer

    out = Path(args.out)
    if args.resume:
        cfg = load_run_config(out)  # a one-line error when missing, damaged or from a newer version
        # on resume only the length of the run (and where/how it runs) may change
        given = {a[2:].split("=")[0] for a in args.argv if a.startswith("--")}
        ignored = sorted(given - {"steps", "device", "out", "resume"})
        if ignored:
            print(
                "warning: a resumed run keeps its own settings; ignored: "
                + ", ".join(f"--{a}" for a in ignored),
                file=sys.stderr,
            )
        changes = {}
        if "steps" in given:
            changes["steps"] = args.steps
        if "device" in given:
            changes["device"] = args.device
        cfg = cfg.replace(**changes)
    else:
        given = {a[2:].split("=")[0] for a in args.argv if a.startswith("--")}
        cfg = TrainConfig(
            data=args.data,
            image_size=args.image_size,
            data_limit=args.limit,
            preset=args.preset,
            conditional=args.conditional,
            schedule=_schedule_from_args(args),
            prediction=args.prediction,
            lr=args.lr,
            batch_size=args.batch_size,
            steps=args.steps,
            warmup_steps=args.warmup,
            grad_clip=args.grad_clip,
            ema_decay=args.ema,
            amp=not args.no_amp,
            device=args.device,
            seed=args.seed,
            log_every=args.log_every,
            preview_every=args.preview_every,
            checkpoint_every=args.checkpoint_every,
            checkpoint_minutes=args.checkpoint_minutes,
            keep_checkpoints=args.keep,
        )
        if args.recipe:
            cfg = cfg.replace(**_recipe_changes(args.recipe, given))
    cfg.validate()
    trainer = Trainer(cfg, out, resume=args.resume)
    bar = None
    code = 0
    interrupted: list[int] = []

    def graceful(signum, _frame):
        # Ctrl+C / SIGTERM: finish the current step, save a checkpoint, exit; a second one aborts at once
        if interrupted:
            raise KeyboardInterrupt
        interrupted.append(signum)
        trainer.stop()
        tqdm.write(
            "stopping: saving a checkpoint after this step (press Ctrl+C again to abort without saving)"
        )

    old_handlers = {}
    for sig in (signal.SIGINT, getattr(signal, "SIGTERM", None)):
        if sig is not None:
            try:
                old_handlers[sig] = signal.signal(sig, graceful)
            except ValueError:  # not the main thread (cli.main called from a thread): keep the defaults
                pass
    try:
        for e in trainer.run():
            if isinstance(e, ev.Started):
                tqdm.write(
                    f"{'Resuming' if e.resumed else 'Training'} {cfg.preset} ({e.n_params:,} parameters) on {e.device}, "
                    f"{e.n_images:,} images of {e.dataset}, batch {e.batch_size}, run folder {e.run_dir}"
                )
                bar = tqdm(total=e.total_steps, initial=e.step, unit="step", dynamic_ncols=True)
            elif isinstance(e, ev.Progress) and bar is not None:
                bar.update(e.step - bar.n)
                bar.set_postfix(loss=f"{e.loss_smooth:.4f}", img_s=f"{e.img_per_s:.0f}")
            elif isinstance(e, ev.Notice):
                tqdm.write(("warning: " if e.level == "warning" else "") + e.message)
            elif isinstance(e, ev.CheckpointSaved):
                tqdm.write(f"checkpoint: {e.path}")
            elif isinstance(e, ev.Preview):
                tqdm.write(f"preview saved at step {e.step}")
            elif isinstance(e, ev.Finished):
                if bar is not None:
                    bar.close()
                print(f"{e.reason} at step {e.step}; last checkpoint {e.checkpoint}")
            elif isinstance(e, ev.Failed):
                if bar is not None:
                    bar.close()
                print(f"error: {e.message}", file=sys.stderr)
                code = 1
    except KeyboardInterrupt:
        # a second Ctrl+C: abort now; the last checkpoint on disk is intact
        print(f"\naborted; the last checkpoint is {trainer.last_checkpoint}", file=sys.stderr)
        return 130
    finally:
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
    if interrupted and code == 0:
        return 128 + int(interrupted[0])
    return code


def _load_bundle(args):
    from ddpm_gui.engine.sampler import load_bundle
    from ddpm_gui.errors import ConfigError

    if args.run and args.preset:
        raise ConfigError(
            "--preset is for a --checkpoint file of foreign weights: a run folder describes its own model."
        )
    return load_bundle(
        args.run or args.checkpoint,
        device=args.device,
        use_ema=not getattr(args, "no_ema", False),
        preset=args.preset,
        image_size=args.model_image_size,
    )


def _note_fallback(bundle) -> None:
    reason = getattr(bundle.model, "fallback_reason", None)
    if reason:
        print(f"note: {reason}", file=sys.stderr)


def cmd_sample(args) -> int:
    from tqdm import tqdm

    from ddpm_gui.engine.images import make_grid, save_gif, save_png
    from ddpm_gui.engine.sampler import SampleConfig, accelerated, sample_frames
    from ddpm_gui.errors import ConfigError

    bundle = accelerated(_load_bundle(args), args.sample_mode)
    label = args.class_label
    if label is not None:
        if bundle.num_classes is None:
            raise ConfigError("This model is not class-conditional: drop --class.")
        names = bundle.class_names or []
        if label in names:
            label = names.index(label)
        else:
            try:
                label = int(label)
            except ValueError:
                raise ConfigError(
                    f"Unknown class '{label}': use an index or one of {', '.join(names)}."
                ) from None
    cfg = SampleConfig(
        n=args.n,
        sampler=args.sampler,
        steps=args.steps,
        eta=args.eta,
        variance=args.variance,
        seed=args.seed,
        class_label=label,
        guidance=args.guidance,
        clip_x0=not args.no_clip,
    )
    frames = []
    total = None
    bar = None
    for fr in sample_frames(bundle, cfg):
        if bar is None:
            total = fr.total
            bar = tqdm(total=total, unit="step", desc=f"{args.sampler} sampling")
        bar.update(1)
        if args.gif:
            frames.append(make_grid(fr.xt, scale=args.scale))
        last = fr
    bar.close()
    save_png(args.out, make_grid(last.xt, scale=args.scale))
    print(f"wrote {args.out} ({args.n} samples, model step {bundle.step}, {total} steps)")
    if args.gif:
        save_gif(args.gif, frames)
        print(f"wrote {args.gif} ({len(frames)} frames)")
    _note_fallback(bundle)
    return 0


def _one_image(args) -> tuple:
    """(uint8 HxWx3 image, caption) from --image or --data/--index."""
    import numpy as np

    from ddpm_gui.errors import DataError

    size = getattr(args, "image_size", 32)
    if args.image:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(args.image) as im:
                im = im.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
                return np.array(im), Path(args.image).name  # a writable copy (torch.from_numpy)
        except (OSError, UnidentifiedImageError) as exc:
            raise DataError(f"Cannot read the image {args.image}: {exc}.") from exc
    from ddpm_gui.data import load_data

    data = load_data(
        args.data, image_size=size, limit=max(args.index + 1, 16) if args.data == "builtin" else None
    )
    if args.index >= len(data):
        raise DataError(f"Index {args.index} is out of range: {data.name} has {len(data)} images.")
    return data.images[args.index], data.name


def cmd_forward(args) -> int:
    import numpy as np
    import torch

    from ddpm_gui.core.diffusion import from_uint8, q_sample, q_step, to_uint8
    from ddpm_gui.core.schedule import NoiseSchedule
    from ddpm_gui.engine.images import make_grid, save_gif, save_png

    sched = NoiseSchedule(_schedule_from_args(args))
    img, _ = _one_image(args)
    x0 = from_uint8(torch.from_numpy(np.ascontiguousarray(img))[None])
    gen = torch.Generator().manual_seed(args.seed)
    frames = [to_uint8(x0)[0].numpy()]
    x = x0
    for t in range(sched.T):
        if args.closed_form:
            x, _ = q_sample(x0, t, sched, generator=gen)
        else:
            x = q_step(x, t, sched, generator=gen)
        frames.append(to_uint8(x)[0].numpy())
    idx = np.linspace(0, sched.T, args.frames).round().astype(int)
    strip = make_grid(np.stack([frames[i] for i in idx]), columns=len(idx), scale=args.scale)
    save_png(args.out, strip)
    s = sched.summary()
    print(
        f"wrote {args.out}: steps {idx.tolist()} of T={sched.T}; alpha_bar_T = {s['alpha_bar_T']:.3f} "
        f"(x_T keeps {100 * s['signal_left_at_T']:.0f}% of the image)"
    )
    if args.gif:
        save_gif(args.gif, [f.repeat(args.scale, 0).repeat(args.scale, 1) for f in frames])
        print(f"wrote {args.gif} ({len(frames)} frames)")
    return 0


def cmd_denoise(args) -> int:
    import numpy as np

    from ddpm_gui.engine.images import make_grid, save_png
    from ddpm_gui.engine.sampler import accelerated, denoise_frames

    bundle = accelerated(_load_bundle(args), args.sample_mode)
    args.image_size = bundle.image_size
    img, name = _one_image(args)
    start = last = None
    for fr in denoise_frames(bundle, img, t=args.t, k=args.k, seed=args.seed):
        if fr.index == -1:
            start = fr.xt
        last = fr
    row = np.concatenate([img[None], start[:1], last.xt])
    save_png(args.out, make_grid(row, columns=len(row), scale=args.scale))
    print(f"wrote {args.out}: original, noised to t={args.t}, then {args.k} denoised continuations")
    _note_fallback(bundle)
    return 0


def cmd_info(args) -> int:
    import platform

    import torch

    from ddpm_gui.engine.device import describe_devices
    from ddpm_gui.models.presets import PRESETS, build_model, count_parameters, flops_per_image

    info = {
        "ddpm_gui": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "devices": [label for _, label in describe_devices()[1:]],
        "presets": {},
    }
    for name, cfg in PRESETS.items():
        n = count_parameters(build_model(cfg))
        fl = flops_per_image(cfg, args.image_size)
        info["presets"][name] = {
            "parameters": n,
            "gflop_forward": fl["forward"] / 1e9,
            "gflop_train": fl["train"] / 1e9,
        }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(
        f"DDPM Studio {info['ddpm_gui']}  (Python {info['python']}, torch {info['torch']}, CUDA {info['cuda']})"
    )
    print("devices: " + ", ".join(info["devices"]))
    print(f"model presets at {args.image_size}x{args.image_size}:")
    print(f"  {'preset':10s} {'parameters':>12s} {'GFLOP fwd':>10s} {'GFLOP train':>12s}")
    for name, d in info["presets"].items():
        print(f"  {name:10s} {d['parameters']:>12,d} {d['gflop_forward']:>10.3f} {d['gflop_train']:>12.3f}")
    return 0


def _int_list(text: str, what: str) -> tuple[int, ...]:
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


def _write_json(path: str, obj: dict) -> None:
    from ddpm_gui.engine.checkpoint import atomic_write_bytes

    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def cmd_bench(args) -> int:
    import torch

    from ddpm_gui.bench import BenchConfig, run_bench

    if args.quick:
        cfg = BenchConfig.quick_config(args.device)
    else:
        cfg = BenchConfig(
            preset=args.preset,
            batch_size=args.batch_size,
            image_size=args.image_size,
            iters=args.iters,
            warmup=args.warmup,
            device=args.device,
            data=args.data,
            sample_batches=_int_list(args.sample_batches, "--sample-batches"),
            sample_repeats=args.sample_repeats,
        )
    cfg.sample_mode = args.sample_mode
    cfg.skip_sampling = args.skip_sampling
    cfg.variants = args.variants
    if args.threads:
        cfg.threads = args.threads
    from ddpm_gui.models.presets import check_image_size, get_preset

    check_image_size(get_preset(cfg.preset), cfg.image_size)
    with torch.random.fork_rng(devices=[]):
        res = run_bench(cfg)
    if args.json:
        _write_json(args.json, res)
        print(f"wrote {args.json}")
    return 0


def cmd_eval(args) -> int:
    from ddpm_gui.engine.evaluate import evaluate_run, format_report

    def progress(done: int, total: int, msg: str) -> None:
        if args.json != "-":
            print(f"  {msg}", file=sys.stderr, flush=True)

    res = evaluate_run(
        args.run or args.checkpoint,
        data=args.data,
        n=args.n,
        sampler=args.sampler,
        steps=args.steps,
        guidance=args.guidance,
        seed=args.seed,
        device=args.device,
        use_ema=not args.no_ema,
        sample_mode=args.sample_mode,
        retrain=args.retrain,
        grid=args.grid,
        progress=progress,
    )
    if args.json == "-":
        print(json.dumps(res, indent=2))
        return 0
    print(format_report(res))
    if args.grid:
        print(f"wrote {args.grid}")
    if args.json:
        _write_json(args.json, res)
        print(f"wrote {args.json}")
    return 0


COMMANDS = {
    "train": cmd_train,
    "sample": cmd_sample,
    "forward": cmd_forward,
    "denoise": cmd_denoise,
    "info": cmd_info,
    "bench": cmd_bench,
    "eval": cmd_eval,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(argv)
    if args.command is None:
        if args.self_test:
            from ddpm_gui.selftest import self_test

            return self_test()
        from ddpm_gui.qt.app import run_app

        return run_app([sys.argv[0]])
    from ddpm_gui.errors import DDPMError

    try:
        return COMMANDS[args.command](args)
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
