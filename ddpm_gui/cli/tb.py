"""`ddpm-gui export-tb`: the TensorBoard log of a run trained without one."""

from __future__ import annotations

from ddpm_gui.cli.common import command


def add_parsers(sub) -> None:
    p = command(
        sub,
        "export-tb",
        "write a run's TensorBoard log from its metrics.jsonl and preview grids",
        description="Write the TensorBoard log a run trained with --tensorboard would have: the training "
        "loss, smoothed loss, learning rate, img/s and batch size, the validation loss by band of t, the "
        "quality-check figures the run keeps, and the preview grids, from RUN/metrics.jsonl, RUN/evals/ and "
        "RUN/samples/. Then: tensorboard --logdir RUN/tb. "
        "Needs the tensorboard package (pip install 'ddpm-gui[tensorboard]').",
    )
    p.add_argument("run", metavar="RUN", help="the run folder")
    p.add_argument(
        "--logdir",
        default=None,
        metavar="DIR",
        help="where to write the log (default: RUN/tb); it must not hold a TensorBoard log already",
    )


def cmd_export_tb(args) -> int:
    from ddpm_gui.engine.tb import export_tb

    log_dir, scalars, images = export_tb(args.run, args.logdir)
    print(f"wrote {scalars} scalars and {images} preview images to {log_dir}")
    print(f"view it with: tensorboard --logdir {log_dir}")
    return 0
