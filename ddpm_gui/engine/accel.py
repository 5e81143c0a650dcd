"""Faster inference for sampling: CUDA graphs or torch.compile, each with a clean fallback to eager.

    model = accelerate(bundle.model, "auto")          # cuda-graph on CUDA, eager elsewhere
    bundle = dataclasses.replace(bundle, model=model)  # sample_frames works unchanged

Why: at 32x32 the UNet's kernels are tiny, so on a GPU a sampling step is bound by the ~200 kernel
launches per forward pass, not by arithmetic. A CUDA graph replays the whole forward as one launch.
The sampler itself (core/diffusion.py) makes no host-device sync per step, so replays queue back to back
and the host waits only for the frames a viewer asks for.

`accelerate` never makes sampling fail: a capture or compile error is remembered (`.fallback_reason`)
and that input shape runs eagerly from then on. On the CPU every mode is plain eager: measured on the
project's 2-core CPU, torch.compile made the tutorial UNet slower (see docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

MODES = ("eager", "auto", "cuda-graph", "compile")


def _inner_attr(wrapper: nn.Module, name: str):
    """nn.Module's attribute lookup, then the wrapped model's (so a wrapper reads like the model)."""
    try:
        return nn.Module.__getattr__(wrapper, name)
    except AttributeError:
        inner = wrapper.__dict__.get("_modules", {}).get("model")
        if inner is None or name.startswith("_"):
            raise
        return getattr(inner, name)


class GraphedDenoiser(nn.Module):
    """Wraps a denoiser `model(x, t[, y])` for inference. On CUDA, the first call with a new input
    signature (shapes, dtypes, whether y is given) captures a CUDA graph; later calls copy the inputs into
    the graph's static buffers and replay it. Anything else (CPU, autograd on, a failed capture) runs the
    wrapped model eagerly. The output is a fresh tensor (a clone of the static output)."""

    def __init__(self, model: nn.Module, warmup: int = 2):
        super().__init__()
        self.model = model
        self.warmup = warmup
        self._graphs: dict[tuple, tuple] = {}
        self._failed: set[tuple] = set()
        self.fallback_reason: str | None = None

    def __getattr__(self, name: str):
        return _inner_attr(self, name)  # image_channels, num_classes, ... of the wrapped model

    @staticmethod
    def _key(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> tuple:
        return (
            tuple(x.shape),
            x.dtype,
            str(x.device),
            tuple(t.shape),
            t.dtype,
            None if y is None else (tuple(y.shape), y.dtype),
        )

    def _capture(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> tuple:
        sx, st = x.clone(), t.clone()
        sy = None if y is None else y.clone()
        args = (sx, st) if sy is None else (sx, st, sy)
        # warm up on a side stream (cuDNN/cuBLAS pick their algorithms and allocate workspaces), then capture
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.model(*args)
        torch.cuda.current_stream(x.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self.model(*args)
        return graph, sx, st, sy, out

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        eager = (lambda: self.model(x, t)) if y is None else (lambda: self.model(x, t, y))
        if x.device.type != "cuda" or torch.is_grad_enabled() or not torch.is_tensor(t):
            return eager()
        t = t.to(x.device).reshape(-1).expand(x.shape[0]) if t.numel() == 1 else t
        if y is not None:
            y = torch.as_tensor(y, device=x.device)
            y = y.reshape(-1).expand(x.shape[0]) if y.numel() == 1 else y
        key = self._key(x, t, y)
        if key in self._failed:
            return eager()
        entry = self._graphs.get(key)
        if entry is None:
            try:
                entry = self._capture(x, t, y)
            except Exception as exc:
                self._failed.add(key)
                self.fallback_reason = (
                    f"CUDA graph capture failed ({type(exc).__name__}: {exc}); running eagerly"
                )
                torch.cuda.synchronize(x.device)
                return eager()
            self._graphs[key] = entry
        graph, sx, st, sy, out = entry
        sx.copy_(x)
        st.copy_(t)
        if sy is not None:
            sy.copy_(y)
        graph.replay()
        return out.clone()


class CompiledDenoiser(nn.Module):
    """torch.compile'd forward; if compiling or running the compiled code raises, falls back to eager
    for good and records why in `fallback_reason`."""

    def __init__(self, model: nn.Module, mode: str | None = None):
        super().__init__()
        self.model = model
        self.fallback_reason: str | None = None
        self._compiled: Callable[..., torch.Tensor] | None
        try:
            self._compiled = torch.compile(model, mode=mode, dynamic=False)
        except Exception as exc:
            self._compiled = None
            self.fallback_reason = f"torch.compile unavailable ({type(exc).__name__}: {exc}); running eagerly"

    def __getattr__(self, name: str):
        return _inner_attr(self, name)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        args = (x, t) if y is None else (x, t, y)
        if self._compiled is not None:
            try:
                return self._compiled(*args)
            except Exception as exc:
                self._compiled = None
                self.fallback_reason = f"torch.compile failed ({type(exc).__name__}: {exc}); running eagerly"
        return self.model(*args)


def accelerate(model: nn.Module, mode: str = "auto") -> nn.Module:
    """An inference wrapper of `model` for sampling. mode: eager (the model itself), auto (cuda-graph when
    the model is on CUDA, else eager), cuda-graph, compile."""
    if mode not in MODES:
        from ddpm_gui.errors import ConfigError

        raise ConfigError(f"Unknown acceleration mode '{mode}': use one of {', '.join(MODES)}.")
    try:
        on_cuda = next(model.parameters()).device.type == "cuda"
    except StopIteration:
        on_cuda = False
    if mode == "eager" or (mode == "auto" and not on_cuda):
        return model
    if mode in ("auto", "cuda-graph"):
        return GraphedDenoiser(model)
    return CompiledDenoiser(model)
