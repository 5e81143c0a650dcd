"""The Learner: the model, its EMA, optimizer, noise schedule and random streams, and one training step of
the tutorial's loop. No files, no events: the Trainer (trainer.py) adds the run folder and the loop; a
benchmark uses a Learner alone.

    learner.setup()                        # data on the device, model, EMA, optimizer
    loss = learner.train_step()            # one step; the loss stays on the device until read
    tensors, meta = learner.state_dict()   # what a checkpoint holds; load_state_dict() restores it

Speed (see docs/benchmarks.md): the dataset lives on the device as uint8 and each batch is one indexing op
(no per-image Python, no DataLoader); fused AdamW on CUDA and the CPU. Mixed precision follows the GPU
(device.choose_precision): bf16 autocast from sm 8.0, fp16 autocast with a gradient scaler below, fp32 on
the CPU. A step's batch may run as `accumulate` micro-batches whose gradients add up (less memory, the
same step).

A non-finite loss or gradient never reaches the weights or the EMA (see `nan_guard`); out of memory in the
forward/backward pass changes nothing but the gradients, so the caller may retry with a smaller batch.
"""

from __future__ import annotations

import contextlib
import copy
import math
import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ddpm_gui.core.diffusion import from_uint8, q_sample, reverse_process, to_uint8, training_target
from ddpm_gui.core.schedule import NoiseSchedule
from ddpm_gui.core.weighting import loss_weight
from ddpm_gui.engine import distributed
from ddpm_gui.engine.config import TrainConfig, lr_at
from ddpm_gui.engine.control import grad_norms
from ddpm_gui.engine.device import (
    AUTOCAST_DTYPES,
    configure_cuda,
    is_oom,
    memory_format,
    micro_batches,
    pick_device,
    training_precision,
)
from ddpm_gui.engine.device import free_cached_memory as free_cached_memory  # the trainer's, from here
from ddpm_gui.engine.learner_state import LearnerState
from ddpm_gui.engine.runfolder import data_fingerprint
from ddpm_gui.engine.sampler import ModelBundle, make_denoiser
from ddpm_gui.engine.staging import HostBatches
from ddpm_gui.engine.validation import VAL_FRACTION, Validator, ValResult, holdout_count, split_indices
from ddpm_gui.errors import ConfigError, DataError, DDPMError

if TYPE_CHECKING:
    from ddpm_gui.models.presets import ModelConfig


class NonFiniteStep(Exception):
    """Raised by train_step (host guard) before a non-finite loss or gradient touched any state."""

    def __init__(self, step: int, what: str, value: float, loss: float):
        super().__init__(f"{what} became {value} at step {step}")
        self.step, self.what, self.value, self.loss = step, what, value, loss


class Learner(LearnerState):
    # built by setup() (an AttributeError before it)
    model: nn.Module
    model_config: ModelConfig
    n_params: int
    ema: nn.Module | None  # the EMA of the weights (None when ema_decay is 0)
    optim: torch.optim.AdamW
    precision: str  # "bf16", "fp16" or "fp32" (device.PRECISIONS): what the forward pass runs in
    scaler: torch.amp.GradScaler | None  # fp16 only: scales the loss so that small gradients survive
    schedule: NoiseSchedule  # float64 master copy on the CPU
    sched_dev: NoiseSchedule  # on the device
    gen: torch.Generator  # batches and noise
    device: torch.device
    batch_size: int  # may be halved after running out of memory
    t_loss_sum: torch.Tensor  # (T,) running sums of the loss per timestep, kept on the device
    t_loss_cnt: torch.Tensor
    images: torch.Tensor  # the dataset on the device (uint8)
    host_batches: HostBatches | None = None  # gathers batches when the dataset is kept on the host
    labels: torch.Tensor | None
    # the indices of `images` that batches are drawn from (None: all); the rest are held out for validation
    train_index: torch.Tensor | None = None
    validator: Validator | None = None  # the held-out images (None: none are held out)
    # one of several processes (distributed.py): its rank, and the DDP wrapper the forward pass goes through
    dist: distributed.Dist = distributed.SINGLE
    ddp: nn.parallel.DistributedDataParallel | None = None
    compile_fallback: str | None = None  # why compile_model could not be used (then the model runs as it is)
    _compiled: tuple | None = None  # (the module compiled, its compiled callable)
    inspect: dict | None = None  # {} for one step: it keeps what that step drew and computed (control.py)

    def __init__(
        self,
        config: TrainConfig,
        data=None,
        data_progress: Callable[[int, int, str], None] | None = None,
    ):
        """`data`: the decoded training data (an ImageData); loaded from config.data by setup() when None."""
        self.config = config.validate()
        self.data = data
        self.data_progress = data_progress
        self._lock = threading.Lock()  # guards the weights while a snapshot is taken
        self.step = 0
        self.num_classes: int | None = None
        self.class_names: list[str] | None = None
        # how a non-finite loss is kept out of the weights: "auto" = "device" on CUDA (fused AdamW skips the
        # update on the device, no sync), "host" elsewhere (checked every step: a read is free on the CPU).
        # Tests set "device" to exercise the CUDA path on the CPU (CPU fused AdamW behaves the same).
        self.nan_guard = "auto"
        self._device_guard = False
        # "auto": by the device and config.amp (device.training_precision). Tests set "fp16" to exercise the
        # gradient scaler on the CPU (torch's GradScaler and fused AdamW run there as on CUDA).
        self.precision_request = "auto"
        # the weights' and batches' layout: None = device.memory_format (channels_last on CUDA). Tests set
        # torch.channels_last to run the CUDA layout on the CPU.
        self.memory_format_request: torch.memory_format | None = None
        self._smooth: float | None = None  # exponential moving average of the loss (kept in checkpoints)
        self._fingerprint: dict | None = None
        self.source = "training"  # where bundle() says its model comes from
        self.val_best: dict | None = None  # {"step", "val"} of the checkpoint with the lowest validation loss
        self.setup_notes: list[str] = []  # what setup() had to leave out, for the user

    def bundle(self) -> ModelBundle:
        """A snapshot of the model being trained (EMA weights when on), safe to sample from in
        another thread while training goes on."""
        if getattr(self, "model", None) is None:
            raise DDPMError("The model is not built yet: wait for training to start.")
        with self._lock:
            src = self.ema if self.ema is not None else self.model
            # NCHW whatever training runs in: samplers, exports and checkpoints expect plain tensors
            model = copy.deepcopy(src).eval().to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
        return ModelBundle(
            model=model,
            schedule=NoiseSchedule(self.config.schedule),
            prediction=self.config.prediction,
            image_size=self.config.image_size,
            num_classes=self.num_classes,
            class_names=self.class_names,
            step=self.step,
            preset=self.config.preset,
            source=self.source,
            device=self.device,
            image_channels=getattr(model, "image_channels", 3),
        )

    # ------------------------------------------------------------------ setup

    def setup(self) -> None:
        """Load the data and build the model, EMA, optimizer and noise schedule, with the dataset on the
        device: after it, train_step() trains. The run folder is not touched."""
        data = self._load_data()
        self._build()
        self.images = self._images_on_device()
        # a dataset too big for the GPU stays on the host: its batch indices are drawn there (a device index
        # would have to come back to the host, a sync per step) from a stream of their own
        self.host_batches = (
            HostBatches(self.images, self.device) if self.images.device != self.device else None
        )
        self.index_gen = self.gen
        if self.host_batches is not None:
            self.index_gen = torch.Generator()
            self.index_gen.manual_seed(self.dist.seed(self.config.seed) + 1)
        self.labels = torch.from_numpy(data.labels).to(self.device) if self.num_classes is not None else None
        note = self.set_holdout(self.config.val_every > 0)
        self.setup_notes = [note] if note else []

    def set_holdout(self, on: bool) -> str | None:
        """Hold out the validation images (split by the seed) or train on all of them; returns why
        validation is off although asked for (a dataset too small to spare images), else None."""
        c = self.config
        n = int(self.images.shape[0])
        self.train_index, self.validator = None, None
        if not on:
            return None
        if holdout_count(n, c.val_size) == 0:
            return (
                f"Validation is off: {n} images are too few to hold any out (it takes at least "
                f"{math.ceil(1 / VAL_FRACTION)})."
            )
        train_idx, val_idx = split_indices(n, c.val_size, c.seed)
        self.train_index = torch.from_numpy(train_idx).to(self.index_gen.device)
        self.validator = Validator(self.images, self.labels, val_idx, self.sched_dev, c.prediction, c.seed,
                                   self.device, amp=self.precision == "bf16")  # fmt: skip
        return None

    def validate(self) -> ValResult:
        """The validation loss of the weights samples use (the EMA when on) at this step; the training's
        random streams are not touched."""
        if self.validator is None:
            raise DDPMError("This run holds no images out for validation.")
        model = self.ema if self.ema is not None else self.model
        return self.validator.evaluate(model, self.step)

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
        self.device = self.dist.device(pick_device(c.device))  # its own GPU, for one of several processes
        self.precision = training_precision(self.device, c.amp, self.precision_request)
        configure_cuda(self.device)
        self.memory_format = self.memory_format_request or memory_format(self.device)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
        torch.manual_seed(c.seed)
        self.model_config = get_preset(c.preset)
        self.model = build_model(self.model_config, num_classes=self.num_classes).to(
            self.device,
            memory_format=self.memory_format,  # type: ignore[call-overload]
        )
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
            self.model.parameters(), lr=c.lr, weight_decay=c.weight_decay, fused=True if fused else None
        )
        self.schedule = NoiseSchedule(c.schedule)
        self.sched_dev = self.schedule.to(self.device)
        self.gen = torch.Generator(device=self.device)
        self.gen.manual_seed(self.dist.seed(c.seed))  # each process its own stream
        self.index_gen = self.gen  # batch indices (setup gives host-kept data a host stream of its own)
        self.batch_size = c.batch_size
        # summed on the device: no sync per step
        self.t_loss_sum = torch.zeros(self.schedule.T, device=self.device)
        self.t_loss_cnt = torch.zeros(self.schedule.T, device=self.device)

    def _images_on_device(self) -> torch.Tensor:
        """The whole dataset as uint8 on the device: a batch is then one gather."""
        imgs = torch.from_numpy(np.ascontiguousarray(self.data.images))
        try:
            return imgs.to(self.device)
        except RuntimeError as exc:
            if is_oom(exc):  # too big for the GPU: keep it on the host, pinned
                return imgs.pin_memory() if self.device.type == "cuda" else imgs
            raise

    def data_fingerprint(self) -> dict:
        """What identifies the training data (runfolder.data_fingerprint), computed once."""
        if self._fingerprint is None:
            self._fingerprint = data_fingerprint(self.data)
        return self._fingerprint

    def loss_by_t(self, decay: bool = True) -> np.ndarray:
        """(T,) float32: the running mean of the training loss per timestep (NaN where unseen); `decay`
        then fades the statistics, so that the next look follows the recent loss."""
        cnt = self.t_loss_cnt.cpu().numpy()
        # a decayed count can be below 1: divide by the count itself (a weighted mean), never by max(cnt, 1)
        by_t = np.divide(self.t_loss_sum.cpu().numpy(), cnt, out=np.full(cnt.shape, np.nan), where=cnt > 0)
        if decay:
            self.t_loss_sum.mul_(0.9)
            self.t_loss_cnt.mul_(0.9)
        return by_t.astype(np.float32)

    # ------------------------------------------------------------------ one step

    def _lr(self, step: int) -> float:
        return lr_at(self.config, step)

    def train_step(
        self, images: torch.Tensor | None = None, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One optimisation step on a batch drawn from `images` (default: the dataset setup() put on the
        device, less the images held out for validation); returns the loss (on the device, not synced; NaN
        where the device guard skipped the update because the loss or the gradient was not finite) and
        counts the step. The host guard raises NonFiniteStep instead, before anything was updated; out of
        memory in the forward or backward pass changes nothing but the gradients and may be retried."""
        if images is None:
            images, labels = self.images, self.labels
        loss, per, t, gnorm = self._forward_backward(images, labels)
        loss = self._update(loss, per, t, gnorm)
        self.step += 1
        return loss

    def _forward_backward(self, images: torch.Tensor, labels: torch.Tensor | None):
        """Loss and gradients on a batch of `images` (of the run's own dataset: never one held out for
        validation). The batch is drawn whole (the same images, t and noise whatever config.accumulate is)
        and run as micro-batches whose gradients add up to the whole batch's. Changes nothing but the RNG
        and .grad (and unscales them, with a scaler), so out of memory here can be retried."""
        c = self.config
        B = self.dist.local_batch(self.batch_size)  # this process's share of the (global) batch
        x0, t, noise, y = self._draw_batch(images, labels, B)
        xt, eps = q_sample(x0, t, self.sched_dev, noise=noise)
        target = training_target(x0, eps, t, self.sched_dev, c.prediction)
        self.optim.zero_grad(set_to_none=True)
        parts = micro_batches(B, c.accumulate)
        pers = []
        for i, (a, b) in enumerate(parts):
            with self._sync_context(i == len(parts) - 1):
                ys = None if y is None else y[a:b]
                pers.append(self._micro_backward(xt[a:b], t[a:b], target[a:b], ys, (b - a) / B))
        per = pers[0] if len(pers) == 1 else torch.cat(pers)
        loss = per.mean()
        if self.scaler is not None:
            self.scaler.unscale_(self.optim)  # clipping and the guard see the true gradients
        if self.inspect is not None:
            self.inspect.update(x0=x0, t=t, noise=noise, xt=xt, target=target, per=per)
            self.inspect["grads"] = grad_norms(self.model)  # before clipping
        if c.grad_clip > 0:
            gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
        else:  # the norm only to check it is finite (one fused reduction, no sync)
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            norms = torch._foreach_norm(grads) if grads else [loss.new_zeros(())]
            gnorm = torch.linalg.vector_norm(torch.stack(norms))
        return loss, per, t, gnorm.detach()

    def _draw_batch(self, images: torch.Tensor, labels: torch.Tensor | None, B: int):
        """(x0, t, noise, y) of a batch of B: images from the training pool (this process's shard of it,
        see distributed.Dist.draw), timesteps, noise and (conditional) labels with the null class for
        cond_drop of them, all from self.gen."""
        c = self.config
        dev = self.device
        pool = self.train_index if images is self.images else None
        n = images.shape[0] if pool is None else pool.numel()
        staged = self.host_batches if images is self.images else None
        idx = self.dist.draw(n, B, self.index_gen if staged is not None else self.gen)
        if pool is not None:
            idx = pool[idx]
        if staged is not None:
            raw, idx = staged.gather(idx), staged.to_device(idx)
        else:
            raw = images[idx.to(images.device)].to(dev, non_blocking=True)
        x0 = from_uint8(raw).contiguous(memory_format=self.memory_format)
        t = torch.randint(0, self.schedule.T, (B,), generator=self.gen, device=dev)
        noise = torch.randn(x0.shape, generator=self.gen, device=dev)
        y = None
        if self.num_classes is not None and labels is not None:
            y = labels[idx.to(labels.device)].to(dev)
            drop = torch.rand(B, generator=self.gen, device=dev) < c.cond_drop
            y = torch.where(drop, torch.full_like(y, self.num_classes), y)
        return x0, t, noise, y

    def _forward(self, xt: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """The model's output through the DDP wrapper (it averages the gradients over the processes) and,
        with compile_model, torch.compile; a model that cannot compile trains as it is, and says why in
        `compile_fallback`."""
        net = self.model if self.ddp is None else self.ddp
        args = (xt, t) if y is None else (xt, t, y)
        if not self.config.compile_model or self.compile_fallback is not None:
            return net(*args)
        if self._compiled is None or self._compiled[0] is not net:
            self._compiled = (net, torch.compile(net))
        try:
            return self._compiled[1](*args)
        except Exception as exc:
            if is_oom(exc):
                raise
            msg = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            self.compile_fallback = f"The model could not be compiled ({msg}): it trains uncompiled."
            self._compiled = None
            return net(*args)

    def _micro_backward(
        self, xt: torch.Tensor, t: torch.Tensor, target: torch.Tensor, y: torch.Tensor | None, share: float
    ) -> torch.Tensor:
        """Forward and backward of one micro-batch, its loss weighted by its `share` of the batch so that
        the gradients add up to the whole batch's mean loss; returns its per-example losses (detached)."""
        dtype = AUTOCAST_DTYPES.get(self.precision)
        with torch.autocast(self.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            out = self._forward(xt, t, y)
        if self.inspect is not None:
            self.inspect.setdefault("out", []).append(out.detach().float())
        per = F.mse_loss(out.float(), target, reduction="none").mean(dim=(1, 2, 3))
        w = loss_weight(self.sched_dev.snr[t], self.config.min_snr_gamma, self.config.prediction)
        part = (per * w).mean() * share  # `per`, the loss logged and shown per timestep, stays the plain MSE
        (part if self.scaler is None else self.scaler.scale(part)).backward()
        return per.detach()

    def _sync_context(self, last: bool) -> contextlib.AbstractContextManager:
        """What each micro-batch's forward and backward run inside; `last`: the step's last micro-batch. A
        data-parallel model returns its no_sync() for all but the last, so that gradients are all-reduced
        once per optimizer step."""
        return self.ddp.no_sync() if self.ddp is not None and not last else contextlib.nullcontext()

    def _update(
        self, loss: torch.Tensor, per: torch.Tensor, t: torch.Tensor, gnorm: torch.Tensor
    ) -> torch.Tensor:
        """AdamW step, EMA and per-timestep stats, guarded so that a non-finite loss or gradient never
        reaches them (see `nan_guard`)."""
        ok = None
        if self.scaler is not None:
            ok = self._scaler_guard(self.scaler, loss, gnorm)
        elif self._device_guard:
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
            self._apply_update(ok)
        except Exception as exc:
            if is_oom(exc):
                raise DDPMError(
                    f"Out of memory while updating the weights at step {self.step + 1}: the weights in "
                    "memory may be half-updated, so nothing was saved after the last checkpoint. Lower the "
                    "batch size or choose a smaller preset, and resume."
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

    def _scaler_guard(
        self, scaler: torch.amp.GradScaler, loss: torch.Tensor, gnorm: torch.Tensor
    ) -> torch.Tensor | None:
        """fp16: an overflowed gradient is the scaler's to skip (it lowers its scale), not a failure. A failure
        is a non-finite loss (its gradient is too: the scaler skips it as well) or a gradient that overflows
        at a scale below 1. Returns the device guard's `ok`, or None after the host checks."""
        scale = scaler._get_scale_async()  # the scale this step's backward used, on the device (no sync)
        assert scale is not None  # set by scaler.scale() in the backward
        collapsed = ~torch.isfinite(gnorm) & (scale < 1)
        if self._device_guard:
            return torch.isfinite(loss) & ~collapsed
        lv = float(loss)
        if not math.isfinite(lv):
            raise NonFiniteStep(self.step + 1, "The loss", lv, lv)
        if bool(collapsed):
            raise NonFiniteStep(self.step + 1, "The gradient norm", float(gnorm), lv)
        return None

    def _apply_update(self, ok: torch.Tensor | None) -> None:
        with self._lock:
            if self.scaler is not None:
                self.scaler.step(self.optim)  # skipped on the device when a gradient is not finite
                self.scaler.update()
            else:
                if ok is not None:
                    # the mechanism GradScaler uses: fused AdamW skips the whole update (weights, moments,
                    # step count) on the device when found_inf is 1, so weights and EMA stay finite
                    self.optim.found_inf = (~ok).float()  # type: ignore[attr-defined]
                try:
                    self.optim.step()
                finally:
                    if ok is not None:
                        del self.optim.found_inf  # type: ignore[attr-defined]
            if self.ema is not None:
                # EMA with warm-up: early on the average follows the weights closely. The weights are
                # finite (every update was guarded), so the EMA is too.
                d = min(self.config.ema_decay, (1 + self.step) / (10 + self.step))
                ema_p: list[torch.Tensor] = list(self.ema.parameters())
                torch._foreach_lerp_(ema_p, [p.detach() for p in self.model.parameters()], 1 - d)

    def _nonfinite_message(self, step: int, what: str, value: float, loss: float | None) -> str:
        c = self.config
        on = "turn on gradient clipping (grad_clip 1.0)"
        clip = f"lower grad_clip (now {c.grad_clip:g})" if c.grad_clip > 0 else on
        extra = f" (the loss was {loss:.4g})" if what == "The gradient norm" and loss is not None else ""
        return (
            f"{what} became {value} at step {step}{extra}: training was stopped before that step could "
            "change the weights, the EMA or a checkpoint, and nothing was saved after the last good "
            f"checkpoint. Lower the learning rate (now {c.lr:g}, try {c.lr / 3:.2g}) or {clip}, and resume."
        )

    def preview(self) -> np.ndarray:
        """(preview_n, H, W, 3) uint8 samples of the model being trained (its EMA when on), from the same
        fixed noise every time, so a person sees the same images improve; DDIM with preview_steps steps."""
        c = self.config
        gen = torch.Generator(device=self.device)
        gen.manual_seed(c.seed + 12345)
        s = c.image_size
        ch = getattr(self.model, "image_channels", 3)
        model = self.ema if self.ema is not None else self.model
        was_training = model.training
        model.eval()
        x = torch.randn((c.preview_n, ch, s, s), generator=gen, device=self.device)
        bundle = ModelBundle(model, self.schedule, c.prediction, s, self.num_classes, self.class_names,
                             self.step, c.preset, "preview", self.device, ch)  # fmt: skip
        denoiser = make_denoiser(bundle, c.preview_n, None, 1.0)
        if self.num_classes is not None:  # conditional: cycle through the classes
            ys = torch.arange(c.preview_n, device=self.device) % self.num_classes

            def denoiser(xx, tt):
                return model(xx, tt, ys)

        sampler = "ddim" if c.preview_steps > 0 else "ddpm"
        try:
            with torch.inference_mode():
                steps = c.preview_steps or None
                chain = reverse_process(denoiser, x, self.sched_dev, sampler=sampler, steps=steps,
                                        prediction=c.prediction, clip_x0=True, generator=gen)  # fmt: skip
                last = deque(chain, maxlen=1)[0]
        finally:
            model.train(was_training)
        return to_uint8(last.x).numpy()
