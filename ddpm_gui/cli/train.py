"""`ddpm-gui train`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ddpm_gui.cli.common import add_schedule_args, nonneg_int, positive_int, schedule_from_args


def add_parsers(sub) -> None:
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
        "--image-size", type=positive_int, default=32, help="train at NxN pixels (images are resized)"
    )
    t.add_argument("--limit", type=positive_int, default=None, help="use only the first N images")
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
    t.add_argument("--steps", type=positive_int, default=2000, help="total training steps")
    t.add_argument("--batch-size", type=positive_int, default=128, help="images per training step")
    t.add_argument("--lr", type=float, default=3e-4, help="peak learning rate (AdamW)")
    t.add_argument("--ema", type=float, default=0.999, help="EMA decay (0 = off)")
    t.add_argument("--grad-clip", type=float, default=1.0, help="clip the gradient norm to this (0 = off)")
    t.add_argument("--warmup", type=nonneg_int, default=100, help="lr warm-up steps")
    t.add_argument("--no-amp", action="store_true", help="no bf16 autocast on CUDA")
    t.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    t.add_argument("--seed", type=nonneg_int, default=0, help="random seed (weights, batches, noise)")
    t.add_argument(
        "--preview-every", type=nonneg_int, default=0, help="save a sample grid every N steps (0 = off)"
    )
    t.add_argument(
        "--checkpoint-every", type=nonneg_int, default=500, help="save a checkpoint every N steps (0 = off)"
    )
    t.add_argument(
        "--checkpoint-minutes", type=float, default=5.0, help="also save one every M minutes (0 = off)"
    )
    t.add_argument("--keep", type=positive_int, default=3, help="rolling number of checkpoints kept")
    t.add_argument(
        "--log-every",
        type=positive_int,
        default=10,
        help="read the loss and log it to metrics.jsonl every N steps",
    )
    t.add_argument("--out", required=True, help="run folder")
    t.add_argument(
        "--resume", action="store_true", help="continue the run in --out (steps, optimizer, EMA, RNG)"
    )
    add_schedule_args(t)


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
            schedule=schedule_from_args(args),
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
