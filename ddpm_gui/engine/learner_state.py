"""The Learner's whole training state as a checkpoint holds it, and restoring it (exact resume): weights,
EMA, optimizer, gradient scaler, random streams, per-timestep loss statistics and the validation split.
A mixin of engine/learner.py's Learner, whose attributes it reads."""

from __future__ import annotations

import math
import threading
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ddpm_gui import __version__
from ddpm_gui.engine.checkpoint import optimizer_from_tensors, optimizer_to_tensors, prefixed, unprefixed
from ddpm_gui.engine.sampler import check_fit
from ddpm_gui.errors import CheckpointError

if TYPE_CHECKING:
    from ddpm_gui.engine.config import TrainConfig
    from ddpm_gui.engine.validation import Validator
    from ddpm_gui.models.presets import ModelConfig


class LearnerState:
    if TYPE_CHECKING:  # the Learner's, which mixes this in
        config: TrainConfig
        data: Any
        step: int
        model: nn.Module
        model_config: ModelConfig
        ema: nn.Module | None
        optim: torch.optim.AdamW
        precision: str
        scaler: torch.amp.GradScaler | None
        gen: torch.Generator
        index_gen: torch.Generator
        device: torch.device
        batch_size: int
        t_loss_sum: torch.Tensor
        t_loss_cnt: torch.Tensor
        validator: Validator | None
        num_classes: int | None
        class_names: list[str] | None
        val_best: dict | None
        _smooth: float | None
        _lock: threading.Lock

        def data_fingerprint(self) -> dict: ...
        def set_holdout(self, on: bool) -> str | None: ...

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict]:
        """The whole training state as a checkpoint holds it: (tensors, JSON-able meta)."""
        with self._lock:
            tensors = prefixed("model", self.model.state_dict())
            if self.ema is not None:
                tensors.update(prefixed("ema", self.ema.state_dict()))
            opt_tensors, groups = optimizer_to_tensors(self.optim)
            tensors.update(opt_tensors)
        tensors["rng.torch"] = torch.get_rng_state()
        tensors["rng.gen"] = self.gen.get_state().cpu()
        if self.index_gen is not self.gen:
            tensors["rng.index_gen"] = self.index_gen.get_state()
        if self.device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        tensors["stats.t_loss_sum"] = self.t_loss_sum.detach().cpu()
        tensors["stats.t_loss_cnt"] = self.t_loss_cnt.detach().cpu()
        meta = {
            "step": self.step,
            "config": self.config.to_dict(),
            "model_config": self.model_config.to_dict(),
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "optim_groups": groups,
            "batch_size": self.batch_size,
            "app_version": __version__,
            "dataset": getattr(self.data, "name", ""),
            "data_fingerprint": self.data_fingerprint(),
            "loss_smooth": self._smooth,
            "val_holdout": self.validator.n_images if self.validator is not None else 0,
            "val_best": self.val_best,
            "precision": self.precision,
        }
        if self.scaler is not None:
            meta["grad_scaler"] = self.scaler.state_dict()  # numbers only: the scale and its growth count
        return tensors, meta

    def load_state_dict(
        self, tensors: dict[str, torch.Tensor], meta: dict, source: str = "the checkpoint"
    ) -> list[str]:
        """Restore a state_dict(); returns notes for the user. CheckpointError when it does not fit."""
        notes: list[str] = []
        weights = unprefixed("model", tensors)
        check_fit(self.model, weights, source)
        try:
            self.model.load_state_dict(weights)
            if self.ema is not None:
                self.ema.load_state_dict(unprefixed("ema", tensors) or weights)
            if meta.get("optim_groups"):
                self.optim.load_state_dict(optimizer_from_tensors(tensors, meta["optim_groups"]))
            for g in self.optim.param_groups:  # a resumed run may have changed it
                g["weight_decay"] = self.config.weight_decay
            self._load_scaler(meta.get("grad_scaler"))
            notes += self._load_rng(tensors, meta, source)
            if "stats.t_loss_sum" in tensors:
                self.t_loss_sum.copy_(tensors["stats.t_loss_sum"])
                self.t_loss_cnt.copy_(tensors["stats.t_loss_cnt"])
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as exc:
            msg = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise CheckpointError(
                f"{source} could not be restored ({msg}): pick another checkpoint."
            ) from exc
        self.step = int(meta["step"])
        self.batch_size = int(meta.get("batch_size") or self.batch_size)
        smooth = meta.get("loss_smooth")
        self._smooth = float(smooth) if isinstance(smooth, int | float) and math.isfinite(smooth) else None
        return notes + self._restore_holdout(meta)

    def _restore_holdout(self, meta: dict) -> list[str]:
        """Hold out what the run held out when it started, whatever val_every says now: the training pool
        stays the same, and images already trained on are never scored as held out."""
        held = meta.get("val_holdout") or 0
        best = meta.get("val_best")
        self.val_best = None
        if isinstance(best, dict) and type(best.get("step")) is int and isinstance(best.get("val"), float):
            self.val_best = {"step": best["step"], "val": best["val"]}
        if (self.validator is not None) == bool(held):
            return []
        note = self.set_holdout(bool(held))
        if held or note:
            return [note] if note else []
        return [
            "Validation is off: this run started without validation, so no images were held out (they "
            "have all been trained on). Start a new run with validation on to measure it."
        ]

    def _load_scaler(self, state) -> None:
        """An fp16 run's scaler state (none from another precision: the scaler finds its scale afresh)."""
        if self.scaler is None or state is None:
            return
        st = state if isinstance(state, dict) else {}
        scale, tracker = st.get("scale"), st.get("_growth_tracker")
        if not (isinstance(scale, float) and math.isfinite(scale) and scale > 0 and type(tracker) is int):
            raise ValueError("damaged grad_scaler state")
        self.scaler.load_state_dict(state)

    def _load_rng(self, tensors: dict[str, torch.Tensor], meta: dict, source: str) -> list[str]:
        if "rng.torch" in tensors:
            torch.set_rng_state(tensors["rng.torch"])
        if "rng.cuda" in tensors and self.device.type == "cuda":
            torch.cuda.set_rng_state(tensors["rng.cuda"], self.device)
        if "rng.index_gen" in tensors and self.index_gen is not self.gen:
            self.index_gen.set_state(tensors["rng.index_gen"])
        if "rng.gen" not in tensors:
            return []
        own = self.gen.get_state()
        if tensors["rng.gen"].numel() == own.numel():
            self.gen.set_state(tensors["rng.gen"].to(own.device))
            return []
        # saved on another kind of device (CPU <-> CUDA generators keep different states)
        self.gen.manual_seed((int(self.config.seed) * 1_000_003 + int(meta["step"])) % 2**63)
        return [
            f"{source} was saved on another kind of device: the noise and batch order go on from a new "
            "random stream (seeded from the run's seed and step), so the result is not bitwise the one an "
            "uninterrupted run would give."
        ]
