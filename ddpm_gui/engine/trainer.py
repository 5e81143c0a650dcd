"""The Trainer: the tutorial's training loop made live, resumable and safe. No Qt.

    trainer = Trainer(config, run_dir)
    for event in trainer.run(): ...          # events.py; the generator does all the work
    trainer.pause() / resume() / stop()      # from any thread: threading.Events, not signals

Speed (see docs/benchmarks.md): the dataset lives on the device as uint8 and each batch is one
indexing op (no per-image Python, no DataLoader); the loss is read from the device only every
`log_every` steps; bf16 autocast on CUDA only.

Safety (see docs/reliability.md): every file is written atomically and checkpoints carry digests; one
process at a time trains in a run folder (a lock the OS drops even on SIGKILL); a non-finite loss or
gradient never reaches the weights, the EMA or a checkpoint (on the CPU it is checked every step, where a
read costs nothing; on CUDA the fused AdamW skips the update on the device and the run stops at the next
read); CUDA out-of-memory in the forward/backward pass halves the batch and goes on; stop() ends with a
checkpoint; resume continues step, optimizer, EMA, RNG, batch size and loss curve exactly.
"""

from __future__ import annotations

import copy
import json
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ddpm_gui import __version__
from ddpm_gui.core.diffusion import from_uint8, q_sample, reverse_process, to_uint8, training_target
from ddpm_gui.core.schedule import NoiseSchedule
from ddpm_gui.engine import events as ev
from ddpm_gui.engine.checkpoint import (
    NewerVersionError,
    RunLock,
    atomic_write_bytes,
    atomic_write_json,
    checkpoint_path,
    list_checkpoints,
    load_latest_checkpoint,
    optimizer_from_tensors,
    optimizer_to_tensors,
    prefixed,
    prune_checkpoints,
    remove_temp_files,
    set_aside,
    unprefixed,
)
from ddpm_gui.engine.config import TrainConfig, load_run_config
from ddpm_gui.engine.device import device_label, pick_device
from ddpm_gui.engine.images import make_grid, png_bytes
from ddpm_gui.engine.sampler import ModelBundle, check_fit, make_denoiser
from ddpm_gui.errors import CheckpointError, ConfigError, DataError, DDPMError


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


# the settings a resumed run must share with the run it continues (they change what the weights mean)
FIXED_ON_RESUME = ("preset", "image_size", "conditional", "schedule", "prediction")


class NonFiniteStep(Exception):
    """Raised by _train_step (host guard) before a non-finite loss or gradient touched any state."""

    def __init__(self, step: int, what: str, value: float, loss: float):
        super().__init__(f"{what} became {value} at step {step}")
        self.step, self.what, self.value, self.loss = step, what, value, loss


class Trainer:
    def __init__(
        self,
        config: TrainConfig,
        run_dir: str | Path,
        resume: bool = False,
        data=None,
        data_progress: Callable[[int, int, str], None] | None = None,
    ):
        self.config = config.validate()
        self.run_dir = Path(run_dir).expanduser()
        self.resume_requested = resume
        self.data = data
        self.data_progress = data_progress
        self._stop = threading.Event()
        self._running = threading.Event()  # set = not paused
        self._running.set()
        self._lock = threading.Lock()  # guards the weights while a snapshot is taken
        self.step = 0
        self.model = None
        self.ema = None
        self.schedule: NoiseSchedule | None = None
        self.device: torch.device | None = None
        self.last_checkpoint: Path | None = None
        self.num_classes: int | None = None
        self.class_names: list[str] | None = None
        # fault injection for tests (reliability): called with the step number before each step
        self.fault_hook: Callable[[int], None] | None = None
        # how a non-finite loss is kept out of the weights: "auto" = "device" on CUDA (fused AdamW skips the
        # update on the device, no sync), "host" elsewhere (checked every step: a read is free on the CPU).
        # Tests set "device" to exercise the CUDA path on the CPU (CPU fused AdamW behaves the same).
        self.nan_guard = "auto"
        self._device_guard = False
        self._run_lock: RunLock | None = None
        self._smooth: float | None = None
        self.notes: list[str] = []  # what setup had to skip or repair, shown as Notices

    # ------------------------------------------------------------------ control (any thread)

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def stop(self) -> None:
        self._stop.set()
        self._running.set()  # wake a paused loop so it can stop

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def bundle(self) -> ModelBundle:
        """A snapshot of the model being trained (EMA weights when on), safe to sample from in
        another thread while training goes on."""
        if self.model is None:
            raise DDPMError("The model is not built yet: wait for training to start.")
        with self._lock:
            src = self.ema if self.ema is not None else self.model
            model = copy.deepcopy(src).eval()
        return ModelBundle(
            model=model,
            schedule=NoiseSchedule(self.config.schedule),
            prediction=self.config.prediction,
            image_size=self.config.image_size,
            num_classes=self.num_classes,
            class_names=self.class_names,
            step=self.step,
            preset=self.config.preset,
            source=f"training run {self.run_dir}",
            device=self.device,
            image_channels=getattr(model, "image_channels", 3),
        )

    # ------------------------------------------------------------------ setup

    def _load_data(self):
        if self.data is None:
            from ddpm_gui.data import load_data

            c = self.config
            try:
                self.data = load_data(
                    c.data, image_size=c.image_size, limit=c.data_limit, progress=self.data_progress
                )
            except OSError as exc:
                raise DataError(
                    f"The data '{c.data}' could not be read ({exc.strerror or exc}): check that it is still "
                    "there, or choose another source."
                ) from exc
        d = self.data
        if len(d) == 0:
            raise DataError("The dataset is empty: choose another source.")
        if d.images.shape[1] != self.config.image_size or d.images.shape[2] != self.config.image_size:
            raise ConfigError(
                f"The data is {d.images.shape[2]}x{d.images.shape[1]} but the run trains at "
                f"{self.config.image_size}x{self.config.image_size}: reload the data at that size."
            )
        if self.config.conditional:
            if d.labels is None or not d.num_classes:
                raise ConfigError(
                    "This dataset has no class labels: turn class-conditional training off (the Train tab's "
                    "checkbox; on the command line, --unconditional beside a recipe)."
                )
            self.num_classes = int(d.num_classes)
            self.class_names = list(d.class_names) if d.class_names else None
        return d

    def _build(self) -> None:
        from ddpm_gui.models.presets import build_model, count_parameters, get_preset

        c = self.config
        self.device = pick_device(c.device)
        torch.manual_seed(c.seed)
        self.model_config = get_preset(c.preset)
        self.model = build_model(self.model_config, num_classes=self.num_classes).to(self.device)
        self.n_params = count_parameters(self.model)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False) if c.ema_decay > 0 else None
        guard = (
            self.nan_guard
            if self.nan_guard != "auto"
            else ("device" if self.device.type == "cuda" else "host")
        )
        # fused AdamW wherever torch has it (CUDA, CPU; measured 4.5x faster than for-each on this CPU:
        # 28 vs 126 ms per step for the tutorial model); for-each elsewhere
        fused = self.device.type in ("cuda", "cpu")
        self._device_guard = guard == "device" and fused
        self.optim = torch.optim.AdamW(
            self.model.parameters(),
            lr=c.lr,
            weight_decay=c.weight_decay,
            **({"fused": True} if fused else {}),
        )
        self.schedule = NoiseSchedule(c.schedule)
        self.sched_dev = self.schedule.to(self.device)
        self.gen = torch.Generator(device=self.device)
        self.gen.manual_seed(c.seed)
        self.batch_size = c.batch_size
        # (T,) running sums of the loss per timestep, kept on the device (no sync per step)
        T = self.schedule.T
        self.t_loss_sum = torch.zeros(T, device=self.device)
        self.t_loss_cnt = torch.zeros(T, device=self.device)

    def _images_on_device(self) -> torch.Tensor:
        """The whole dataset as uint8 on the device: a batch is then one gather."""
        imgs = torch.from_numpy(np.ascontiguousarray(self.data.images))
        try:
            return imgs.to(self.device)
        except RuntimeError as exc:
            if is_oom(exc):  # too big for the GPU: keep it on the host, pinned
                return imgs.pin_memory() if self.device.type == "cuda" else imgs
            raise

    # ------------------------------------------------------------------ checkpoints

    def _meta(self) -> dict:
        return {
            "step": self.step,
            "config": self.config.to_dict(),
            "model_config": self.model_config.to_dict(),
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "optim_groups": self._optim_groups,
            "batch_size": self.batch_size,
            "app_version": __version__,
            "dataset": getattr(self.data, "name", ""),
            "loss_smooth": self._smooth,
        }

    def save_checkpoint(self) -> Path:
        with self._lock:
            tensors = prefixed("model", self.model.state_dict())
            if self.ema is not None:
                tensors.update(prefixed("ema", self.ema.state_dict()))
            opt_tensors, groups = optimizer_to_tensors(self.optim)
            tensors.update(opt_tensors)
        self._optim_groups = groups
        tensors["rng.torch"] = torch.get_rng_state()
        tensors["rng.gen"] = self.gen.get_state().cpu()
        if self.device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        tensors["stats.t_loss_sum"] = self.t_loss_sum.detach().cpu()
        tensors["stats.t_loss_cnt"] = self.t_loss_cnt.detach().cpu()
        from ddpm_gui.engine.checkpoint import save_checkpoint

        path = save_checkpoint(checkpoint_path(self.run_dir, self.step), tensors, self._meta())
        self.last_checkpoint = path
        prune_checkpoints(self.run_dir, self.config.keep_checkpoints, protect=[path])
        return path

    def _restore(self) -> list[str]:
        """Load the newest checkpoint of the run folder that fully loads (every byte verified); newer ones
        that do not are set aside (renamed `.unreadable`, so they are neither resumed nor pruned). Returns
        notes for the user. A run killed before its first checkpoint starts again from step 0."""
        notes: list[str] = []
        if not list_checkpoints(self.run_dir):
            notes.append(
                "This run has no checkpoint yet (it stopped before its first save): training starts again "
                "from step 0 with the run's settings."
            )
            return notes
        try:
            ckpt, tensors, meta, skipped = load_latest_checkpoint(self.run_dir)
        except NewerVersionError:
            raise
        except CheckpointError as exc:
            raise CheckpointError(
                f"Nothing to resume in {self.run_dir}: no checkpoint loads ({exc}). Start a new run folder."
            ) from None
        for p, why in skipped:
            moved = set_aside(p)
            where = f" It was renamed to {moved.name}." if moved else ""
            notes.append(f"Skipped {p.name}: {why}{where}")
        self._check_compatible(ckpt, meta)
        weights = unprefixed("model", tensors)
        check_fit(self.model, weights, str(ckpt))
        try:
            self.model.load_state_dict(weights)
            if self.ema is not None:
                ema_w = unprefixed("ema", tensors) or weights
                self.ema.load_state_dict(ema_w)
            if meta.get("optim_groups"):
                self.optim.load_state_dict(optimizer_from_tensors(tensors, meta["optim_groups"]))
            if "rng.torch" in tensors:
                torch.set_rng_state(tensors["rng.torch"])
            if "rng.gen" in tensors:
                own = self.gen.get_state()
                if tensors["rng.gen"].numel() == own.numel():
                    self.gen.set_state(tensors["rng.gen"].to(own.device))
                else:  # saved on another kind of device (CPU <-> CUDA generators keep different states)
                    self.gen.manual_seed((int(self.config.seed) * 1_000_003 + int(meta["step"])) % 2**63)
                    notes.append(
                        f"{ckpt.name} was saved on another kind of device: the noise and batch order go on "
                        "from a new random stream (seeded from the run's seed and step), so the result is not "
                        "bitwise the one an uninterrupted run would give."
                    )
            if "rng.cuda" in tensors and self.device.type == "cuda":
                torch.cuda.set_rng_state(tensors["rng.cuda"], self.device)
            if "stats.t_loss_sum" in tensors:
                self.t_loss_sum.copy_(tensors["stats.t_loss_sum"])
                self.t_loss_cnt.copy_(tensors["stats.t_loss_cnt"])
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as exc:
            msg = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise CheckpointError(
                f"{ckpt.name} could not be restored ({msg}): pick another checkpoint."
            ) from exc
        self.step = int(meta["step"])
        self.batch_size = int(meta.get("batch_size") or self.batch_size)
        smooth = meta.get("loss_smooth")
        self._smooth = float(smooth) if isinstance(smooth, int | float) and math.isfinite(smooth) else None
        self.last_checkpoint = ckpt
        self._optim_groups = meta.get("optim_groups")
        return notes

    def _check_compatible(self, ckpt: Path, meta: dict) -> None:
        """A message naming the mismatch when a checkpoint was trained with other fixed settings than the
        run resuming it (e.g. copied from another run folder, or config.json edited by hand)."""
        from ddpm_gui.models.presets import ModelConfig

        try:
            theirs = TrainConfig.from_dict(meta["config"])
            their_model = ModelConfig.from_dict(meta["model_config"])
        except (DDPMError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{ckpt.name} has a damaged settings header ({exc}).") from None
        diffs = []
        for k in FIXED_ON_RESUME:
            a, b = getattr(theirs, k), getattr(self.config, k)
            if a != b:
                a, b = (a.to_dict(), b.to_dict()) if k == "schedule" else (a, b)
                diffs.append(f"{k} is {a!r} in the checkpoint but {b!r} in this run")
        mine = self.model_config.to_dict()
        for k, v in their_model.to_dict().items():
            if mine.get(k) != v:
                what = "channel count" if k == "image_channels" else k
                diffs.append(f"the model's {what} is {v!r} in the checkpoint but {mine.get(k)!r} here")
        if (meta.get("num_classes") or None) != (self.num_classes or None):
            diffs.append(f"it has {meta.get('num_classes')} classes, this run {self.num_classes}")
        if diffs:
            raise CheckpointError(
                f"{ckpt.name} does not fit this run: {'; '.join(diffs[:3])}. Resume it with its own settings, "
                "or start a new run folder."
            )

    def _check_run_folder(self) -> None:
        """Lock the run folder, clean what a killed save left, check that it is the run we expect, and
        write config.json."""
        if self.resume_requested:
            saved = load_run_config(self.run_dir)  # a clear error: missing, damaged, newer version
            diffs = [
                f"{k}: {getattr(saved, k)!r} in the run, {getattr(self.config, k)!r} now"
                for k in FIXED_ON_RESUME
                if getattr(saved, k) != getattr(self.config, k)
            ]
            if diffs:
                raise ConfigError(
                    f"The run in {self.run_dir} was trained with other settings ({'; '.join(diffs)}): resume it "
                    "with its own settings (leave those unchanged) or start a new run folder."
                )
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "checkpoints").mkdir(exist_ok=True)
            (self.run_dir / "samples").mkdir(exist_ok=True)
        except OSError as exc:
            raise CheckpointError(
                f"Cannot create the run folder {self.run_dir} ({exc.strerror or exc}): choose a writable folder."
            ) from exc
        self._run_lock = RunLock(self.run_dir).acquire()
        removed = remove_temp_files(self.run_dir)
        if removed:
            self.notes.append(
                f"Removed {len(removed)} unfinished file(s) left by an interrupted save "
                f"({', '.join(p.name for p in removed[:3])}); the saved checkpoints are intact."
            )
        if not self.resume_requested and list_checkpoints(self.run_dir):
            raise ConfigError(
                f"{self.run_dir} already holds a run: resume it (--resume) or choose an empty run folder."
            )
        atomic_write_json(self.run_dir / "config.json", self.config.to_dict())

    def _release(self) -> None:
        if self._run_lock is not None:
            self._run_lock.release()
            self._run_lock = None

    # ------------------------------------------------------------------ metrics log

    def _metrics_history(self) -> tuple[np.ndarray, np.ndarray]:
        """Rewrite metrics.jsonl to end at the resumed step (dropping lines a crash cut, and whatever the
        interrupted run logged after its last checkpoint) and return its (steps, losses)."""
        path = self.run_dir / "metrics.jsonl"
        steps, losses, keep = [], [], []
        if path.exists():
            for line in path.read_text(errors="replace").splitlines():
                try:
                    rec = json.loads(line)
                except (ValueError, RecursionError):
                    continue  # a line cut by a crash
                step = rec.get("step") if isinstance(rec, dict) else None
                if not isinstance(step, int) or isinstance(step, bool) or step > self.step:
                    continue
                keep.append(line)
                loss = rec.get("loss")
                if isinstance(loss, int | float) and not isinstance(loss, bool):
                    steps.append(step)
                    losses.append(loss)
            atomic_write_bytes(path, ("\n".join(keep) + "\n").encode() if keep else b"")
        return np.asarray(steps, np.int64), np.asarray(losses, np.float32)

    def _log(self, rec: dict) -> None:
        try:
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")
        except OSError:
            pass  # the log is a convenience; checkpoints report write errors

    # ------------------------------------------------------------------ the loop

    def _lr(self, step: int) -> float:
        w = self.config.warmup_steps
        return self.config.lr * min(1.0, (step + 1) / w) if w > 0 else self.config.lr

    def _train_step(self, images: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """One optimisation step; returns the loss (on the device, not synced; NaN where the device guard
        skipped the update because the loss or the gradient was not finite). The host guard raises
        NonFiniteStep instead, before anything was updated."""
        loss, per, t, gnorm = self._forward_backward(images, labels)
        return self._update(loss, per, t, gnorm)

    def _forward_backward(self, images: torch.Tensor, labels: torch.Tensor | None):
        """Loss and gradients. Changes nothing but the RNG and .grad, so an out-of-memory here can be retried."""
        c = self.config
        dev = self.device
        B = self.batch_size
        T = self.schedule.T
        idx = torch.randint(0, images.shape[0], (B,), generator=self.gen, device=self.gen.device)
        x0 = from_uint8(images[idx.to(images.device)].to(dev, non_blocking=True))
        t = torch.randint(0, T, (B,), generator=self.gen, device=dev)
        noise = torch.randn(x0.shape, generator=self.gen, device=dev)
        xt, eps = q_sample(x0, t, self.sched_dev, noise=noise)
        target = training_target(x0, eps, t, self.sched_dev, c.prediction)
        y = None
        if self.num_classes is not None:
            y = labels[idx.to(labels.device)].to(dev)
            drop = torch.rand(B, generator=self.gen, device=dev) < c.cond_drop
            y = torch.where(drop, torch.full_like(y, self.num_classes), y)
        amp = c.amp and dev.type == "cuda"
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=amp):
            out = self.model(xt, t, y) if y is not None else self.model(xt, t)
        per = F.mse_loss(out.float(), target, reduction="none").mean(dim=(1, 2, 3))
        loss = per.mean()
        self.optim.zero_grad(set_to_none=True)
        loss.backward()
        if c.grad_clip > 0:
            gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
        else:  # the norm only to check it is finite (one fused reduction, no sync)
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            gnorm = (
                torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
                if grads
                else loss.new_zeros(())
            )
        return loss.detach(), per.detach(), t, gnorm.detach()

    def _update(
        self, loss: torch.Tensor, per: torch.Tensor, t: torch.Tensor, gnorm: torch.Tensor
    ) -> torch.Tensor:
        """AdamW step, EMA and per-timestep stats, guarded so that a non-finite loss or gradient never
        reaches them (see `nan_guard`)."""
        c = self.config
        ok = None
        if self._device_guard:
            ok = torch.isfinite(loss) & torch.isfinite(gnorm)
        else:
            lv, gv = float(loss), float(gnorm)
            if not math.isfinite(lv):
                raise NonFiniteStep(self.step + 1, "The loss", lv, lv)
            if not math.isfinite(gv):
                raise NonFiniteStep(self.step + 1, "The gradient norm", gv, lv)
        for g in self.optim.param_groups:
            g["lr"] = self._lr(self.step)
        try:
            with self._lock:
                if ok is not None:
                    # the mechanism GradScaler uses: fused AdamW skips the whole update (weights, moments,
                    # step count) on the device when found_inf is 1, so weights and EMA stay finite
                    self.optim.found_inf = (~ok).float()
                try:
                    self.optim.step()
                finally:
                    if ok is not None:
                        del self.optim.found_inf
                if self.ema is not None:
                    # EMA with warm-up: early on the average follows the weights closely. The weights are
                    # finite (every update was guarded), so the EMA is too.
                    d = min(c.ema_decay, (1 + self.step) / (10 + self.step))
                    ema_p = list(self.ema.parameters())
                    torch._foreach_lerp_(ema_p, [p.detach() for p in self.model.parameters()], 1 - d)
        except Exception as exc:
            if is_oom(exc):
                raise DDPMError(
                    f"Out of memory while updating the weights at step {self.step + 1}: the weights in memory may "
                    "be half-updated, so nothing was saved after the last checkpoint. Lower the batch size or "
                    "choose a smaller preset, and resume."
                ) from exc
            raise
        with torch.no_grad():
            if ok is None:
                self.t_loss_sum.index_add_(0, t, per.float())
                self.t_loss_cnt.index_add_(0, t, torch.ones_like(per, dtype=torch.float32))
                return loss
            fin = torch.isfinite(per) & ok
            self.t_loss_sum.index_add_(0, t, torch.where(fin, per.float(), 0.0))
            self.t_loss_cnt.index_add_(0, t, fin.float())
            return torch.where(ok, loss, torch.full_like(loss, float("nan")))

    def _nonfinite_message(self, step: int, what: str, value: float, loss: float | None) -> str:
        c = self.config
        lower = f"{c.lr / 3:.2g}"
        clip = (
            "turn on gradient clipping (grad_clip 1.0)"
            if c.grad_clip <= 0
            else f"lower grad_clip (now {c.grad_clip:g})"
        )
        extra = f" (the loss was {loss:.4g})" if what == "The gradient norm" and loss is not None else ""
        return (
            f"{what} became {value} at step {step}{extra}: training was stopped before that step could change "
            "the weights, the EMA or a checkpoint, and nothing was saved after the last good checkpoint. "
            f"Lower the learning rate (now {c.lr:g}, try {lower}) or {clip}, and resume."
        )

    def _preview(self) -> np.ndarray:
        """Samples from the same fixed noise every time, so a person sees the same images improve."""
        c = self.config
        gen = torch.Generator(device=self.device)
        gen.manual_seed(c.seed + 12345)
        s = c.image_size
        ch = getattr(self.model, "image_channels", 3)
        model = self.ema if self.ema is not None else self.model
        was_training = model.training
        model.eval()
        x = torch.randn((c.preview_n, ch, s, s), generator=gen, device=self.device)
        bundle = ModelBundle(
            model,
            self.schedule,
            c.prediction,
            s,
            self.num_classes,
            self.class_names,
            self.step,
            c.preset,
            "preview",
            self.device,
            ch,
        )
        denoiser = make_denoiser(bundle, c.preview_n, None, 1.0)
        if self.num_classes is not None:  # conditional: cycle through the classes
            ys = torch.arange(c.preview_n, device=self.device) % self.num_classes
            denoiser = lambda xx, tt: model(xx, tt, ys)  # noqa: E731
        sampler = "ddim" if c.preview_steps > 0 else "ddpm"
        try:
            with torch.inference_mode():
                chain = reverse_process(
                    denoiser,
                    x,
                    self.sched_dev,
                    sampler=sampler,
                    steps=c.preview_steps or None,
                    prediction=c.prediction,
                    clip_x0=True,
                    generator=gen,
                )
                last = deque(chain, maxlen=1)[0]
        finally:
            model.train(was_training)
        return to_uint8(last.x).numpy()

    def _estimate_note(self) -> str:
        if self.device.type != "cpu":
            return ""
        return "Training on the CPU: the estimated time appears after the first steps."

    def run(self) -> Iterator[ev.Event]:
        """Set up and train, yielding events. Every failure ends in a Failed event, never a traceback."""
        try:
            yield from self._run()
        except DDPMError as exc:
            yield ev.Failed(str(exc), self.step, str(self.last_checkpoint) if self.last_checkpoint else None)
        except Exception as exc:  # noqa: BLE001
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if is_oom(exc):
                msg = f"Out of memory ({msg}): lower the batch size or choose a smaller preset."
            elif isinstance(exc, MemoryError):
                msg = (
                    "Out of memory: lower the batch size or the number of images, or choose a smaller preset."
                )
            else:
                msg = f"Training failed: {type(exc).__name__}: {msg}"
            yield ev.Failed(msg, self.step, str(self.last_checkpoint) if self.last_checkpoint else None)
        finally:
            self._release()

    def _failed(self, message: str) -> ev.Failed:
        return ev.Failed(message, self.step, str(self.last_checkpoint) if self.last_checkpoint else None)

    def _run(self) -> Iterator[ev.Event]:
        c = self.config
        self._check_run_folder()
        yield ev.Notice("Loading data…")
        data = self._load_data()
        self._build()
        self._optim_groups = optimizer_to_tensors(self.optim)[1]
        resumed = False
        if self.resume_requested:
            self.notes += self._restore()
            resumed = True
        for note in self.notes:
            yield ev.Notice(note, "warning")
        self.notes = []
        from ddpm_gui.models.presets import flops_per_image

        try:
            flops = float(flops_per_image(self.model_config, c.image_size)["train"])
        except Exception:  # noqa: BLE001 - a figure for display only
            flops = None
        images = self._images_on_device()
        labels = torch.from_numpy(data.labels).to(self.device) if self.num_classes is not None else None
        hist_steps, hist_losses = self._metrics_history()
        yield ev.Started(
            step=self.step,
            total_steps=c.steps,
            device=device_label(self.device),
            n_params=self.n_params,
            flops_per_image=flops,
            dataset=data.name,
            n_images=len(data),
            run_dir=str(self.run_dir),
            resumed=resumed,
            batch_size=self.batch_size,
            estimate_note=self._estimate_note(),
        )
        if self.batch_size != c.batch_size:
            yield ev.Notice(
                f"Batch size is {self.batch_size} (halved earlier after running out of memory).", "warning"
            )
        if len(hist_steps):
            yield ev.Progress(
                self.step,
                c.steps,
                float(hist_losses[-1]),
                float(hist_losses[-1]),
                0.0,
                0.0,
                0.0,
                self.batch_size,
                self._lr(self.step),
                hist_steps,
                hist_losses,
            )
        self.model.train()
        if self._smooth is None and len(hist_losses):
            self._smooth = float(hist_losses[-1])
        pending: list[tuple[int, torch.Tensor]] = []
        t0 = time.monotonic()
        self._rate = 0.0
        self._last_read = (t0, self.step)
        last_ckpt_t = t0
        told_estimate = False
        while self.step < c.steps:
            if not self._running.is_set():
                yield ev.Paused(self.step)
                while not self._running.wait(0.1):
                    pass
                if not self._stop.is_set():
                    yield ev.Resumed(self.step)
                self._last_read = (time.monotonic(), self.step)
            if self._stop.is_set():
                break
            oom = False
            try:
                if self.fault_hook is not None:
                    self.fault_hook(self.step)
                loss = self._train_step(images, labels)
            except NonFiniteStep as bad:  # host guard: nothing was updated
                if pending:
                    yield from self._read(pending, t0)
                yield self._failed(self._nonfinite_message(bad.step, bad.what, bad.value, bad.loss))
                return
            except Exception as exc:
                if not is_oom(exc) or self.batch_size <= 1:
                    raise
                oom = True  # clean up outside the except block, so the traceback's tensors are freed first
            if oom:
                self.optim.zero_grad(set_to_none=True)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                self.batch_size = max(1, self.batch_size // 2)
                yield ev.Notice(
                    f"Out of memory: batch size halved to {self.batch_size}; training goes on.", "warning"
                )
                continue
            self.step += 1
            pending.append((self.step, loss))
            due_ckpt = (c.checkpoint_every and self.step % c.checkpoint_every == 0) or (
                c.checkpoint_minutes and time.monotonic() - last_ckpt_t > 60 * c.checkpoint_minutes
            )
            due_preview = c.preview_every and self.step % c.preview_every == 0
            last = self.step >= c.steps
            if not (self.step % c.log_every == 0 or due_ckpt or due_preview or last or self._stop.is_set()):
                continue
            # the one host-device sync: read the pending losses. Nothing is saved before this read says
            # that every step since the last one was finite.
            read = self._read(pending, t0)
            yield from read
            if isinstance(read[-1], ev.Failed):
                return
            progress = read[-1]
            if (
                not told_estimate
                and self.step - (hist_steps[-1] if len(hist_steps) else 0) >= 2 * c.log_every
                and self._rate > 0
                and self.device.type == "cpu"
            ):
                told_estimate = True
                yield ev.Notice(
                    f"On this CPU the run goes at about {self._rate:.0f} images/s: the remaining "
                    f"{c.steps - self.step} steps take about {_fmt_time(progress.eta_s)}."
                )
            if self.step % (c.log_every * 5) == 0 or last:
                cnt = self.t_loss_cnt.cpu().numpy()
                # a decayed count can be below 1: divide by the count itself (a weighted mean), never by max(cnt, 1)
                by_t = np.divide(
                    self.t_loss_sum.cpu().numpy(), cnt, out=np.full(cnt.shape, np.nan), where=cnt > 0
                )
                yield ev.TimestepLoss(self.step, by_t.astype(np.float32))
                # decay the sums so the plot follows the recent loss
                self.t_loss_sum.mul_(0.9)
                self.t_loss_cnt.mul_(0.9)
            if due_preview:
                grid = None
                try:
                    grid = self._preview()
                except Exception as exc:
                    if not is_oom(exc):
                        raise
                if grid is None:
                    if self.device.type == "cuda":
                        torch.cuda.empty_cache()
                    yield ev.Notice(
                        "Out of memory while drawing the preview: skipped; training goes on.", "warning"
                    )
                else:
                    self._save_preview(grid)
                    yield ev.Preview(self.step, grid)
            if due_ckpt and not last:
                path = self.save_checkpoint()
                last_ckpt_t = time.monotonic()
                yield ev.CheckpointSaved(self.step, str(path))
        # completed or stopped: always leave a checkpoint of the last good state
        if pending:  # not read yet (stopped between two reads)
            read = self._read(pending, t0)
            yield from read
            if isinstance(read[-1], ev.Failed):
                return
        if self.last_checkpoint is None or not self.last_checkpoint.name.endswith(
            f"{self.step:08d}.safetensors"
        ):
            path = self.save_checkpoint()
            yield ev.CheckpointSaved(self.step, str(path))
        reason = "completed" if self.step >= c.steps else "stopped"
        yield ev.Finished(self.step, str(self.run_dir), reason, str(self.last_checkpoint))

    def _read(self, pending: list[tuple[int, torch.Tensor]], t0: float) -> list[ev.Event]:
        """Read the pending losses (one sync), log them, and return [Progress]; when one is not finite
        (the device guard kept it out of the weights), [Progress of the good ones before it, if any, Failed]."""
        vals = torch.stack([loss for _, loss in pending]).float().cpu().numpy()
        steps = np.asarray([s for s, _ in pending], np.int64)
        pending.clear()
        bad = ~np.isfinite(vals)
        if bad.any():
            first = int(np.argmax(bad))
            good = [self._record(steps[:first], vals[:first], t0)] if first else []
            msg = self._nonfinite_message(
                int(steps[first]), "The loss or its gradient", float(vals[first]), None
            )
            return [*good, self._failed(msg)]
        return [self._record(steps, vals, t0)]

    def _record(self, steps: np.ndarray, vals: np.ndarray, t0: float) -> ev.Progress:
        c = self.config
        now = time.monotonic()
        last_t, last_step = self._last_read
        step = int(steps[-1])
        if now > last_t and step > last_step:
            inst = (step - last_step) * self.batch_size / (now - last_t)
            self._rate = inst if self._rate == 0 else 0.8 * self._rate + 0.2 * inst
        self._last_read = (now, step)
        for v in vals:
            self._smooth = float(v) if self._smooth is None else 0.98 * self._smooth + 0.02 * float(v)
        eta = (c.steps - step) * self.batch_size / self._rate if self._rate > 0 else float("nan")
        lr = self._lr(step - 1)
        self._log(
            {
                "step": step,
                "loss": float(vals[-1]),
                "loss_smooth": self._smooth,
                "img_per_s": self._rate,
                "lr": lr,
                "batch_size": self.batch_size,
                "time": time.time(),
            }
        )
        return ev.Progress(
            step,
            c.steps,
            float(vals[-1]),
            self._smooth,
            self._rate,
            eta,
            now - t0,
            self.batch_size,
            lr,
            steps,
            vals.astype(np.float32),
        )

    def _save_preview(self, grid: np.ndarray) -> None:
        try:
            atomic_write_bytes(
                self.run_dir / "samples" / f"step_{self.step:08d}.png", png_bytes(make_grid(grid))
            )
        except DDPMError:
            pass  # a preview image is not worth stopping for


def _fmt_time(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"
