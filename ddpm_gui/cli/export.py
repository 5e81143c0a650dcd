"""`ddpm-gui export`: a trained model as a diffusers pipeline folder."""

from __future__ import annotations

import sys

from ddpm_gui.cli.common import command

FORMATS = ("diffusers",)


def add_parsers(sub) -> None:
    e = command(
        sub,
        "export",
        "write a trained model as a diffusers pipeline (DDPMPipeline.from_pretrained loads it)",
        description="Write the newest checkpoint of a run as a diffusers DDPMPipeline folder: unet/ "
        "(UNet2DModel config and safetensors weights), scheduler/ (the DDPMScheduler that is the run's "
        "schedule), model_index.json and a model card (README.md). Only models of the diffusers-architecture "
        "presets (`ddpm-gui info` lists them) export; the folder must be new, empty, or an earlier export.",
    )
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="run folder (its newest checkpoint)")
    src.add_argument("--checkpoint", help="a .safetensors checkpoint")
    e.add_argument("--format", choices=FORMATS, default="diffusers", help="what to write")
    # dest out_dir: a folder, not an output file (the CLI's file checks are for files)
    e.add_argument("--out", dest="out_dir", required=True, metavar="DIR", help="a new or empty folder")
    e.add_argument("--no-ema", action="store_true", help="export the raw weights instead of their EMA")
    e.add_argument(
        "--variance",
        choices=["beta", "posterior"],
        default="beta",
        help="the DDPM sampler's sigma^2 in the scheduler: beta_t (fixed_large, DDPM Studio's default) or "
        "beta~_t (fixed_small)",
    )


def cmd_export(args) -> int:
    from ddpm_gui.engine.export import export_diffusers

    out = export_diffusers(args.run or args.checkpoint, args.out_dir, use_ema=not args.no_ema,
                           variance=args.variance)  # fmt: skip
    print(f"wrote {out} (load it with diffusers.DDPMPipeline.from_pretrained)", file=sys.stdout)
    return 0
