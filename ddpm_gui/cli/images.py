"""`ddpm-gui sample`, `forward` and `denoise`: images from a model or a schedule."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ddpm_gui.cli.common import (
    add_model_source,
    add_sample_mode_arg,
    add_sampler_args,
    add_schedule_args,
    command,
    load_bundle,
    nonneg_int,
    note_fallback,
    pick,
    positive_int,
    schedule_from_args,
)


def add_parsers(sub) -> None:
    # --- sample
    s = command(sub, "sample", "sample images from a trained model")
    add_model_source(s)
    s.add_argument("--n", type=positive_int, default=16, help="number of images")
    add_sampler_args(s)
    s.add_argument("--eta", type=float, default=0.0, help="DDIM eta")
    s.add_argument(
        "--variance",
        choices=["beta", "posterior"],
        default=None,
        help="DDPM: sigma^2 = beta_t or beta~_t; None: the model's own (beta for DDPM Studio models; "
        "a diffusers model's variance_type: fixed_small = posterior, fixed_large = beta)",
    )
    s.add_argument("--seed", type=nonneg_int, default=0, help="random seed of the noise")
    s.add_argument(
        "--class", dest="class_label", default=None, help="class index or name (conditional models)"
    )
    s.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale")
    s.add_argument(
        "--clip",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="clip the predicted x0 at every step; None: the model's own (on for DDPM Studio models)",
    )
    s.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    s.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    add_sample_mode_arg(s)
    s.add_argument("--out", default="samples.png", help="PNG grid of the final samples")
    s.add_argument("--gif", default=None, help="animated GIF of the reverse process")
    s.add_argument("--scale", type=positive_int, default=2, help="pixel scale of the outputs")

    # --- forward
    f = command(sub, "forward", "show the forward (noising) process of one image")
    fsrc = f.add_mutually_exclusive_group()
    fsrc.add_argument("--data", default="builtin", help="dataset to take the image from")
    fsrc.add_argument("--image", help="an image file instead")
    f.add_argument("--index", type=nonneg_int, default=3, help="image index in the dataset")
    f.add_argument("--image-size", type=positive_int, default=32, help="resize the image to NxN pixels")
    f.add_argument("--frames", type=positive_int, default=6, help="frames in the strip")
    f.add_argument(
        "--closed-form", action="store_true", help="use q(x_t|x_0) instead of iterating q(x_t|x_(t-1))"
    )
    f.add_argument("--seed", type=nonneg_int, default=0, help="random seed of the noise")
    f.add_argument("--out", default="forward.png", help="PNG strip of --frames steps")
    f.add_argument("--gif", default=None, help="animated GIF of every step, x_0 to x_T")
    f.add_argument("--scale", type=positive_int, default=4, help="pixel scale of the outputs")
    add_schedule_args(f)

    # --- denoise
    d = command(sub, "denoise", "the tutorial's experiment: noise an image to t and denoise it K ways")
    add_model_source(d)
    d.add_argument("--data", default="builtin", help="dataset to take the image from")
    d.add_argument("--image", default=None, help="an image file instead of --data/--index")
    d.add_argument("--index", type=nonneg_int, default=4, help="image index in the dataset")
    d.add_argument("--t", type=nonneg_int, default=50, help="timestep to noise the image to")
    d.add_argument("--k", type=positive_int, default=10, help="number of independent denoisings")
    d.add_argument("--seed", type=nonneg_int, default=0, help="random seed of the noise")
    d.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    add_sample_mode_arg(d)
    d.add_argument(
        "--mask",
        default=None,
        help="inpaint instead: a mask image, white where the image is regenerated (RePaint, from t = T-1)",
    )
    d.add_argument("--jump-length", type=nonneg_int, default=None, help="--mask: RePaint's jump length")
    d.add_argument("--resamples", type=nonneg_int, default=None, help="--mask: RePaint's resamples")
    d.add_argument("--out", default="denoise.png", help="PNG row: original, noised, denoised")
    d.add_argument("--scale", type=positive_int, default=3, help="pixel scale of the output")


def cmd_sample(args) -> int:
    from tqdm import tqdm

    from ddpm_gui.engine.images import make_grid, save_gif, save_png
    from ddpm_gui.engine.sampler import SampleConfig, accelerated, sample_frames
    from ddpm_gui.errors import ConfigError

    bundle = accelerated(load_bundle(args), args.sample_mode)
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
        **pick(args, "n", "sampler", "steps", "eta", "variance", "seed", "guidance"),
        class_label=label,
        clip_x0=args.clip,
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
            frames.append(fr.xt)  # each made a mosaic as the GIF is encoded
        last = fr
    bar.close()
    save_png(args.out, make_grid(last.xt, scale=args.scale))
    print(f"wrote {args.out} ({args.n} samples, model step {bundle.step}, {total} steps)")
    if args.gif:
        save_gif(args.gif, frames, render=lambda xt: make_grid(xt, scale=args.scale))
        print(f"wrote {args.gif} ({len(frames)} frames)")
    note_fallback(bundle)
    return 0


def _one_image(args) -> tuple:
    """(uint8 HxWx3 image, caption) from --image (the app's one image loader) or --data/--index."""
    from ddpm_gui.errors import DataError

    size = getattr(args, "image_size", 32)
    if args.image:
        from ddpm_gui.data.imageio import load_image

        return load_image(args.image, size), Path(args.image).name
    from ddpm_gui.data import load_data

    data = load_data(
        args.data, image_size=size, limit=max(args.index + 1, 16) if args.data == "builtin" else None
    )
    if args.index >= len(data):
        raise DataError(f"Index {args.index} is out of range: {data.name} has {len(data)} images.")
    return data.images[args.index], data.name


def cmd_forward(args) -> int:
    import numpy as np

    from ddpm_gui.core.schedule import NoiseSchedule
    from ddpm_gui.engine.forward import forward_frames, kept_steps
    from ddpm_gui.engine.images import make_grid, save_gif, save_png, upscale

    sched = NoiseSchedule(schedule_from_args(args))
    img, _ = _one_image(args)
    process = "closed" if args.closed_form else "iterative"
    idx = np.linspace(0, sched.T, args.frames).round().astype(int)
    steps = np.union1d(kept_steps(sched.T, img.nbytes), idx) if args.gif else idx
    fr = forward_frames(img, sched, args.seed, steps=steps, processes=(process,))
    frames = getattr(fr, process)
    strip = make_grid(frames[np.searchsorted(fr.ts, idx)], columns=len(idx), scale=args.scale)
    save_png(args.out, strip)
    s = sched.summary()
    print(
        f"wrote {args.out}: steps {idx.tolist()} of T={sched.T}; alpha_bar_T = {s['alpha_bar_T']:.3f} "
        f"(x_T keeps {100 * s['signal_left_at_T']:.0f}% of the image)"
    )
    if args.gif:
        save_gif(args.gif, frames, render=lambda f: upscale(f, args.scale))
        print(f"wrote {args.gif} ({len(frames)} frames)")
    return 0


def cmd_denoise(args) -> int:
    import numpy as np

    from ddpm_gui.engine.images import make_grid, save_png
    from ddpm_gui.engine.sampler import accelerated, denoise_frames
    from ddpm_gui.errors import ConfigError

    if args.mask is None and (args.jump_length is not None or args.resamples is not None):
        raise ConfigError("--jump-length and --resamples are inpainting's: give a --mask too.")
    bundle = accelerated(load_bundle(args), args.sample_mode)
    args.image_size = bundle.image_size
    img, name = _one_image(args)
    from tqdm import tqdm

    if args.mask is not None:
        frames, what = _inpaint(args, bundle, img), f"inpainting {args.k} ways"
    else:
        frames = denoise_frames(bundle, img, t=args.t, k=args.k, seed=args.seed)
        what = f"denoising {args.k} ways from t={args.t}"
    start = last = None
    bar = None
    for fr in frames:
        if fr.index == -1:
            start = fr.xt
        elif bar is None:
            bar = tqdm(total=fr.total, desc=what, unit="step", file=sys.stderr)
        if bar is not None:
            bar.update(1)
        last = fr
    if bar is not None:
        bar.close()
    row = np.concatenate([img[None], start[:1], last.xt])
    save_png(args.out, make_grid(row, columns=len(row), scale=args.scale))
    if args.mask is not None:
        print(f"wrote {args.out}: original, the start (pure noise where masked), then {args.k} inpaintings")
    else:
        print(f"wrote {args.out}: original, noised to t={args.t}, then {args.k} denoised continuations")
    note_fallback(bundle)
    return 0


def _inpaint(args, bundle, img):
    """`denoise --mask`: RePaint's frames (engine/inpaint.py); the mask read by the app's image loader, with
    the image's crop, white meaning regenerate."""
    from ddpm_gui.data.imageio import load_image
    from ddpm_gui.engine import inpaint

    mask = inpaint.fit_mask(load_image(args.mask, bundle.image_size), bundle.image_size)
    jump = inpaint.DEFAULT_JUMP_LENGTH if args.jump_length is None else args.jump_length
    resamples = inpaint.DEFAULT_RESAMPLES if args.resamples is None else args.resamples
    return inpaint.inpaint_frames(
        bundle, img, mask, k=args.k, seed=args.seed, jump_length=jump, resamples=resamples
    )
