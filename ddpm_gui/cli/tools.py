"""`ddpm-gui info`, `bench` and `eval`."""

from __future__ import annotations

import argparse
import json
import sys

from ddpm_gui import __version__
from ddpm_gui.cli.common import (
    DEMO_MODEL,
    PhaseBars,
    add_model_source,
    add_sample_mode_arg,
    add_sampler_args,
    command,
    int_list,
    nonneg_int,
    pick,
    positive_int,
    write_json,
)


def add_parsers(sub) -> None:
    _add_bench_parser(sub)

    # --- eval
    e = command(
        sub,
        "eval",
        "sample quality without a network: a classifier trained on the real images",
        description="Draw samples from a run, classify them with a small CNN trained on the run's "
        "(labelled) dataset and cached, and print the classifier's held-out accuracy, the share of "
        "recognisable samples (conditional: accuracy on the requested class) and the Frechet distance "
        "of its features, real vs generated and real vs real.",
    )
    add_model_source(e, foreign=False)
    e.add_argument("--data", default=None, help="labelled dataset (default: the one the run trained on)")
    e.add_argument("--n", type=positive_int, default=500, help="number of samples")
    add_sampler_args(e)
    e.add_argument(
        "--guidance", type=float, default=1.0, help="classifier-free guidance scale (conditional models)"
    )
    e.add_argument("--seed", type=nonneg_int, default=0, help="random seed of the samples")
    e.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    e.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    add_sample_mode_arg(e)
    e.add_argument(
        "--retrain", action="store_true", help="train the classifier again instead of using the cache"
    )
    e.add_argument("--grid", default=None, metavar="PNG", help="also save the first 64 samples as a grid")
    e.add_argument(
        "--no-record",
        action="store_true",
        help="do not keep the results in the run folder (by default they go to RUN/evals/step_N.json, "
        "where the Runs tab shows them)",
    )
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
    i.add_argument("--image-size", type=positive_int, default=32, help="image size (NxN) for the FLOPs")


def _add_bench_parser(sub) -> None:
    # --- bench
    b = command(
        sub,
        "bench",
        "time DDPM Studio's training and sampling against the tutorial's own loop",
        description="In one process: the tutorial's training loop and DDPM Studio's trainer on the same "
        "model and batch (img/s, speedup, FLOPs, TFLOP/s, fraction of the measured matmul peak), "
        "sampling time for the full DDPM chain, peak memory (the compare section); with --sections busy, "
        "the app's CPU thread count against torch's default on a machine that other processes keep busy. "
        "Progress goes to stderr. See docs/benchmarks.md.",
    )
    b.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    b.add_argument("--preset", default="tutorial", help="model preset for both loops")
    b.add_argument("--batch-size", type=positive_int, default=128, help="training batch size of both loops")
    b.add_argument("--image-size", type=positive_int, default=32, help="image size (NxN) of both loops")
    b.add_argument("--iters", type=positive_int, default=5, help="timed steps of each loop (median)")
    b.add_argument("--warmup", type=nonneg_int, default=2, help="untimed steps of each loop first")
    b.add_argument("--data", default="builtin", help="dataset both loops read")
    b.add_argument(
        "--sample-batches", default="1,16,64", help="batch sizes for the sampling times, comma-separated"
    )
    b.add_argument(
        "--sample-repeats", type=positive_int, default=1, help="timed sampling runs per batch size (median)"
    )
    add_sample_mode_arg(b)
    b.add_argument("--skip-sampling", action="store_true", help="time training only")
    b.add_argument(
        "--variants", action="store_true", help="also time training with channels_last and torch.compile"
    )
    b.add_argument(
        "--threads",
        type=positive_int,
        default=argparse.SUPPRESS,  # absent unless given: torch's own choice
        help="torch CPU threads for the compare section (default: torch's choice)",
    )
    b.add_argument(
        "--quick", action="store_true", help="a smoke run: tiny preset, 16x16, batch 16, few steps"
    )
    b.add_argument(
        "--sections",
        default="compare",
        help="what to run, comma-separated: compare (the tutorial's loop against DDPM Studio's trainer, "
        "the matmul peak, sampling, memory; the options above), busy (the app's CPU thread count against "
        "torch's default with 0, 1 and 2 competing CPU-bound processes, on the CPU), scaling (the training "
        "step over batch and image size for each preset, cliffs flagged; --scaling-*, --cliff, --plot), "
        "profile (where a training step and a sampling step spend their time, by category, with "
        "torch.profiler, for --preset at --batch-size; --profile-*, --ab), samplers (the quality figure and "
        "time of every sampler at 10, 20, 50 and 100 steps; --samplers-*)",
    )
    b.add_argument(
        "--busy-reps",
        type=positive_int,
        default=argparse.SUPPRESS,  # absent unless given: --quick has its own count
        help="busy section: alternating timed runs of each thread count per load, for the medians "
        "(default: 5; with --quick 2)",
    )
    _add_section_options(b)
    b.add_argument(
        "--nproc",
        type=nonneg_int,
        default=0,
        metavar="N",
        help="instead: training on 1 and on N processes (DDP under torchrun) side by side, img/s and scaling "
        "efficiency (--preset, --image-size, --iters; --batch-size is per process here)",
    )
    b.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")


def _add_section_options(b) -> None:
    """Options of the scaling and profile sections: absent unless given, so that --quick keeps its own."""
    g = b.add_argument_group("scaling section (batch and image size; over processes: --nproc)")
    sup = argparse.SUPPRESS
    g.add_argument(
        "--scaling-presets",
        default=sup,
        metavar="LIST",
        help="presets, comma-separated (default: tiny,small,tutorial,diffusers-tiny)",
    )
    g.add_argument(
        "--scaling-batches", default=sup, metavar="LIST", help="batch sizes (default: 16,32,64,128)"
    )
    g.add_argument("--scaling-sizes", default=sup, metavar="LIST", help="image sizes (default: 32,64)")
    g.add_argument(
        "--scaling-steps",
        type=positive_int,
        default=sup,
        metavar="N",
        help="timed training steps per cell, after one warm-up (default: 2)",
    )
    g.add_argument(
        "--cliff",
        type=float,
        default=sup,
        metavar="X",
        help="flag a neighbour whose time per image (per image and pixel across sizes) is more than "
        "X times larger (default: 1.5)",
    )
    g.add_argument("--plot", default=None, metavar="PNG", help="write the scaling section's plot here")
    g = b.add_argument_group("profile section")
    g.add_argument(
        "--profile-steps",
        type=positive_int,
        default=sup,
        metavar="N",
        help="profiled training steps after one warm-up (default: 2)",
    )
    g.add_argument(
        "--profile-sample-batches",
        default=sup,
        metavar="LIST",
        help="batch sizes of the profiled sampling steps (default: 16,64)",
    )
    g.add_argument(
        "--ab",
        default=sup,
        metavar="LIST",
        help="A/B tests against the default trainer, comma-separated: channels_last, foreach_adamw, "
        "no_ema, threads=N, compile (interleaved one-step chunks, the peak probed between them)",
    )
    g.add_argument("--ab-rounds", type=positive_int, default=sup, metavar="N",
                   help="interleaved rounds of each A/B (default: 3)")  # fmt: skip
    g = b.add_argument_group("samplers section")
    g.add_argument(
        "--samplers-model",
        default=sup,
        metavar="PATH",
        help="a run folder, checkpoint or diffusers folder to judge (default: demo, the shipped model)",
    )
    g.add_argument(
        "--samplers-steps", default=sup, metavar="LIST", help="step counts (default: 10,20,50,100)"
    )
    g.add_argument(
        "--samplers-n",
        type=positive_int,
        default=sup,
        metavar="N",
        help="samples per sampler and step count (default: 100)",
    )
    g.add_argument("--samplers-guidance", type=float, default=sup, metavar="W",
                   help="guidance scale for conditional models (default: 3)")  # fmt: skip


def _section_config(cfg, args) -> None:
    """The scaling and profile sections' options into `cfg` (a BenchConfig), checked before anything runs."""
    import os

    from ddpm_gui.bench_profile import check_ab
    from ddpm_gui.errors import ConfigError
    from ddpm_gui.models.presets import check_image_size, get_preset

    s, p = cfg.size, cfg.profile
    if "scaling_presets" in args:
        s.presets = tuple(n.strip() for n in args.scaling_presets.split(",") if n.strip())
    if "scaling_batches" in args:
        s.batches = int_list(args.scaling_batches, "--scaling-batches")
    if "scaling_sizes" in args:
        s.sizes = int_list(args.scaling_sizes, "--scaling-sizes")
    for name in s.presets:
        get_preset(name)  # an unknown name fails now, not after an hour of other cells
    if "scaling_steps" in args:
        s.steps = args.scaling_steps
    if "cliff" in args:
        if not args.cliff > 1:
            raise ConfigError(f"--cliff is a factor above 1, like 1.5; got {args.cliff:g}.")
        s.cliff = args.cliff
    if args.plot:
        folder = os.path.dirname(os.path.abspath(args.plot))
        if not os.path.isdir(folder):
            raise ConfigError(
                f"--plot: the folder {folder} does not exist; create it or choose another path."
            )
        s.plot = args.plot
    if not args.quick:
        p.preset, p.batch_size, p.image_size = cfg.preset, cfg.batch_size, cfg.image_size
    check_image_size(get_preset(p.preset), p.image_size)
    if "profile_steps" in args:
        p.steps = args.profile_steps
    if "profile_sample_batches" in args:
        p.sample_batches = int_list(args.profile_sample_batches, "--profile-sample-batches")
    if "ab" in args:
        p.ab = tuple(n.strip() for n in args.ab.split(",") if n.strip())
        check_ab(p.ab)
    if "ab_rounds" in args:
        p.ab_rounds = args.ab_rounds
    s.device = p.device = cfg.device
    _samplers_config(cfg.samplers, args, cfg.device)


def _samplers_config(sb, args, device: str) -> None:
    """The samplers section's options into `sb` (a SamplersBench)."""
    sb.device = device
    if "samplers_model" in args:
        sb.model = args.samplers_model
    if "samplers_steps" in args:
        sb.steps = int_list(args.samplers_steps, "--samplers-steps")
    if "samplers_n" in args:
        sb.n = args.samplers_n
    if "samplers_guidance" in args:
        sb.guidance = args.samplers_guidance


def cmd_info(args) -> int:
    import platform

    import torch

    from ddpm_gui.engine.device import describe_devices
    from ddpm_gui.errors import ConfigError
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
        try:
            n = count_parameters(build_model(cfg))
        except ConfigError as exc:  # a preset of an optional extra that is not installed
            info["presets"][name] = {"unavailable": str(exc)}
            continue
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
    print(f"  {'preset':14s} {'parameters':>12s} {'GFLOP fwd':>10s} {'GFLOP train':>12s}")
    for name, d in info["presets"].items():
        if "unavailable" in d:
            print(f"  {name:14s} needs an optional extra: {d['unavailable']}")
            continue
        print(f"  {name:14s} {d['parameters']:>12,d} {d['gflop_forward']:>10.3f} {d['gflop_train']:>12.3f}")
    return 0


def _bench_scaling(args) -> int:
    from ddpm_gui.bench_scaling import scaling, summary

    print(f"training on 1 and on {args.nproc} processes, one after the other…", file=sys.stderr)
    result = scaling(
        args.nproc, args.preset, steps=args.iters, batch=args.batch_size, image_size=args.image_size,
        device=args.device, warmup=args.warmup,
    )  # fmt: skip
    print(summary(result))
    if args.json:
        write_json(args.json, {"scaling": result})
    return 0


def cmd_bench(args) -> int:
    import torch

    from ddpm_gui.bench import BenchConfig, run_bench

    if args.nproc:
        return _bench_scaling(args)
    if args.quick:
        cfg = BenchConfig.quick_config(args.device)
    else:
        cfg = BenchConfig(
            **pick(args, "preset", "batch_size", "image_size", "iters", "warmup", "device", "data"),
            sample_batches=int_list(args.sample_batches, "--sample-batches"),
            sample_repeats=args.sample_repeats,
        )
    cfg.sample_mode = args.sample_mode
    cfg.skip_sampling = args.skip_sampling
    cfg.variants = args.variants
    if "threads" in args:
        cfg.threads = args.threads
    cfg.sections = tuple(s.strip() for s in args.sections.split(",") if s.strip())
    if "busy_reps" in args:
        cfg.busy.reps = args.busy_reps
    _section_config(cfg, args)
    from ddpm_gui.models.presets import check_image_size, get_preset

    check_image_size(get_preset(cfg.preset), cfg.image_size)
    progress = PhaseBars()  # on stderr; the report's lines go to stdout between the bars
    try:
        with torch.random.fork_rng(devices=[]):
            res = run_bench(cfg, log=_write_line, progress=progress)
    finally:
        progress.close()
    if args.json:
        write_json(args.json, res)
        print(f"wrote {args.json}")
    return 0


def _write_line(text: str) -> None:
    """A report line on stdout that does not tear the progress bar on stderr."""
    from tqdm import tqdm

    tqdm.write(text, file=sys.stdout)


def cmd_eval(args) -> int:
    from ddpm_gui.engine.evaluate import evaluate_run, format_report, record_eval
    from ddpm_gui.engine.runs import run_of_checkpoint
    from ddpm_gui.errors import DDPMError

    source = args.run or args.checkpoint or args.model
    if source == DEMO_MODEL:
        from ddpm_gui.engine.demo import demo_path

        source = str(demo_path())
    progress = PhaseBars()
    res = evaluate_run(
        source,
        **pick(args, "data", "n", "sampler", "steps", "guidance", "seed", "device", "sample_mode", "retrain"),
        use_ema=not args.no_ema,
        grid=args.grid,
        progress=progress,
    )
    progress.close()
    for note in res.notes:
        print(f"warning: {note}", file=sys.stderr)
    to_stdout = args.json == "-"
    if to_stdout:
        print(json.dumps(res.to_dict(), indent=2))
    else:
        print(format_report(res))
    said = sys.stderr if to_stdout else sys.stdout  # stdout holds only the JSON then
    if args.grid:
        print(f"wrote {args.grid}", file=said)
    if args.json and not to_stdout:
        write_json(args.json, res.to_dict())
        print(f"wrote {args.json}")
    if not args.no_record:
        try:  # the run of the checkpoint scored (None: a checkpoint outside a run folder)
            kept = record_eval(run_of_checkpoint(res.model_source), res)
        except DDPMError as exc:
            print(f"warning: the results were not kept in the run folder: {exc}", file=sys.stderr)
        else:
            if kept is not None:
                print(f"kept in {kept}", file=said)
    return 0
