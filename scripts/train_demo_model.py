"""Rebuild the demo model that ships with the app (ddpm_gui/demo/demo.safetensors) and its manifest
(ddpm_gui/demo/demo.json).

    python scripts/train_demo_model.py --run runs/demo-model

What it does, with the app's own tools only:
1. trains with the normal trainer (`ddpm-gui train`): the `quick-cpu` recipe (the tiny UNet, class-conditional
   with the "null" class dropped in 10% of the steps, so classifier-free guidance works; cosine schedule,
   v-prediction, batch 64, lr 1e-3, EMA 0.995) on the built-in shapes at 16x16, seed 0, in the STAGES below:
   a first run, then `--resume` up to the next step count (the learning rate is constant after its
   warm-up, so a resumed run is the same run);
2. copies the final checkpoint through the app's save_checkpoint, keeping the EMA weights and the header
   only (no optimizer, RNG or raw weights): about 3 MB instead of 10;
3. scores it with `ddpm-gui eval` (500 samples, the full DDPM chain, guidance 3 as the Sample tab's
   default): the share of samples a classifier trained on the real shapes puts in the class asked for;
4. writes the manifest: the commands, seed, settings, steps, training time and the machine it ran on, the
   eval figure and the sha256 of the weights file.

16x16 rather than the usual 32x32: a quarter of the arithmetic per step, which a 2-core CPU shared with other
work needs; the shapes stay recognisable (the built-in data is drawn at any size from 8 up).
Bitwise the same weights need the same torch version and the same torch thread counts: the trainer's
automatic thread count follows the machine's load, and another count sums floats in another order.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ddpm_gui.engine.checkpoint import (  # noqa: E402
    checkpoint_path,
    load_checkpoint,
    save_checkpoint,
    unprefixed,
)
from ddpm_gui.engine.demo import demo_path, manifest_path  # noqa: E402

SEED = 0
IMAGE_SIZE = 16
RECIPE = "quick-cpu"
# the step count of the first run, then of each resume
STAGES = (1000, 1500, 3000)  # what the shipped file was trained with (resume is exact)
# every setting given on the command line besides the recipe's (keep 20 checkpoints: any stage can be scored)
TRAIN_OPTIONS = [
    "--recipe", RECIPE, "--image-size", str(IMAGE_SIZE), "--seed", str(SEED),
    "--checkpoint-every", "250", "--keep", "20",
]  # fmt: skip
EVAL_GUIDANCE = 3.0  # the Sample tab's default
EVAL_N = 500
# header fields of a training checkpoint that only resuming needs
TRAINING_ONLY = ("optim_groups", "val_best", "loss_smooth")
# what the manifest keeps of `ddpm-gui eval --json` (sample_accuracy: the share drawn as the class asked for)
EVAL_KEYS = ("sample_accuracy", "accuracy_confident", "per_class_accuracy", "guidance", "n", "sampler",
             "sampling_steps", "recognisable", "frechet_distance", "frechet_distance_real",
             "classifier_accuracy", "sample_seconds", "model_step")  # fmt: skip


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "ddpm_gui", *args]


def _shown(cmd: list[str]) -> str:
    """The command as a user types it; the run folder (wherever it was) as RUN_FOLDER."""
    return " ".join(["ddpm-gui", *("RUN_FOLDER" if a == _RUN[0] else a for a in cmd[3:])])


_RUN = [""]  # the run folder of this invocation, shown as RUN_FOLDER


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def train(run: Path, stages: tuple[int, ...]) -> tuple[list[str], float]:
    """Train (or resume) through every stage; the commands shown and the seconds they took."""
    shown, seconds = [], 0.0
    for i, steps in enumerate(stages):
        if i == 0:
            cmd = _cli("train", *TRAIN_OPTIONS, "--steps", str(steps), "--out", str(run))
        else:
            cmd = _cli("train", "--resume", "--steps", str(steps), "--out", str(run))
        print(f"$ {_shown(cmd)}", flush=True)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=ROOT)
        seconds += time.perf_counter() - t0
        shown.append(_shown(cmd))
    return shown, seconds


def slim_copy(run: Path, step: int, out: Path) -> dict:
    """The run's checkpoint of `step`, EMA weights and header only, written with the app's save_checkpoint."""
    ckpt = checkpoint_path(run, step)
    tensors, meta = load_checkpoint(ckpt)
    ema = unprefixed("ema", tensors)
    if not ema:
        raise SystemExit(f"{ckpt.name} holds no EMA weights: train with an EMA decay above 0.")
    slim = {f"ema.{k}": v.contiguous() for k, v in ema.items()}
    header = {
        k: v for k, v in meta.items() if k not in TRAINING_ONLY and k not in ("format", "format_version")
    }
    save_checkpoint(out, slim, header)
    return meta


def evaluate(path: Path, extra: list[str]) -> tuple[str, dict]:
    """`ddpm-gui eval` on the demo file (`extra`: option/value pairs that replace or add to the defaults):
    the command shown and its JSON result."""
    options = {"--n": str(EVAL_N), "--guidance": str(EVAL_GUIDANCE), "--seed": "0"}
    if len(extra) % 2:
        raise SystemExit(f"--eval-options takes option/value pairs, got {' '.join(extra)!r}.")
    options.update(zip(extra[::2], extra[1::2], strict=True))
    cmd = _cli("eval", "--checkpoint", str(path), *(x for kv in options.items() for x in kv), "--json", "-")
    print(f"$ {_shown(cmd)}", flush=True)
    done = subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    return _shown(cmd).replace(str(ROOT) + os.sep, ""), json.loads(done.stdout)


def run_seconds(run: Path, step: int) -> float | None:
    """Training time of a run already trained, up to `step` (for --no-train): the time between its logged
    losses, leaving out gaps of more than IDLE_GAP seconds (the run was stopped, then resumed later)."""
    times = []
    for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        if "loss" in rec and "time" in rec and rec.get("step", step + 1) <= step:
            times.append(float(rec["time"]))
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    return sum(g for g in gaps if 0 < g <= IDLE_GAP) if gaps else None


IDLE_GAP = 120.0  # seconds between two logged losses beyond which the run is taken to have been stopped


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def machine() -> dict:
    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="the training run folder (new, or one to resume or package)")
    p.add_argument("--stages", default=",".join(map(str, STAGES)),
                   help="step counts: the first run's, then each resume's (default: %(default)s)")  # fmt: skip
    p.add_argument(
        "--no-train",
        action="store_true",
        help="package the checkpoint of the last stage of a run trained already",
    )
    p.add_argument("--train-seconds", type=float, default=None,
                   help="with --no-train: the time it took (default: from the run's own records)")  # fmt: skip
    p.add_argument("--conditions", default="", help="how busy the machine was, in words, for the manifest")
    p.add_argument("--eval-options", default="", metavar="OPTIONS",
                   help="`ddpm-gui eval` option/value pairs replacing or adding to the defaults (e.g. "
                   "'--n 100 --sampler ddim --steps 20' where the full check takes too long)")  # fmt: skip
    args = p.parse_args(argv)
    run = Path(args.run)
    _RUN[0] = str(run)
    stages = tuple(int(s) for s in args.stages.split(","))
    load_before = _loadavg()
    if args.no_train:
        commands = [_shown(_cli("train", *TRAIN_OPTIONS, "--steps", str(stages[0]), "--out", str(run)))]
        commands += [
            _shown(_cli("train", "--resume", "--steps", str(s), "--out", str(run))) for s in stages[1:]
        ]
        seconds = args.train_seconds
    else:
        commands, seconds = train(run, stages)
    out = demo_path()
    meta = slim_copy(run, stages[-1], out)
    if seconds is None:
        seconds = run_seconds(run, meta["step"])
    eval_cmd, res = evaluate(out, args.eval_options.split())
    manifest = {
        "file": out.name,
        "sha256": sha256(out),
        "bytes": out.stat().st_size,
        "rebuild": f"python scripts/train_demo_model.py --run RUN_FOLDER --stages {','.join(map(str, stages))}",
        "train_commands": commands,
        "seed": SEED,
        "steps": meta["step"],
        "app_version": meta.get("app_version"),
        "settings": meta["config"],
        "model_config": meta["model_config"],
        "class_names": meta.get("class_names"),
        "train_seconds": None if seconds is None else round(seconds, 1),
        "machine": machine(),
        "conditions": args.conditions or f"load average before {load_before}, after {_loadavg()}",
        "eval": {"command": eval_cmd, **{k: res.get(k) for k in EVAL_KEYS}},
    }
    manifest_path().write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out} ({manifest['bytes']:,} bytes) and {manifest_path()}")
    print(
        f"eval: {res['sample_accuracy']:.1%} of samples are the class asked for (guidance {res['guidance']:g})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
