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

On CUDA the forward pass runs under autocast in the precision training would use on that card (bf16 from
sm 8.0, fp16 below; `precision="fp32"` turns it off); the sampler's own arithmetic stays in float32.
A model's wrapper is made once and kept with the model, so its captured graphs serve every later Generate
(and they are captured with thread-local error checking: training may sync or allocate in its own thread
while the GUI captures a graph of the current weights).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn

MODES = ("eager", "auto", "cuda-graph", "compile")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # the forward pass's autocast dtype while sampling
MAX_GRAPHS = 4  # captured input shapes kept per model (each holds its own memory pool on the GPU)


def sampling_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype of the forward pass while sampling (None: fp32, no autocast). auto: what training
    would use on this device (device.training_precision with mixed precision on): bf16 or fp16 on CUDA,
    none on the CPU and MPS, where autocast is slower than fp32."""
    from ddpm_gui.engine.device import AUTOCAST_DTYPES, training_precision

    if precision not in PRECISIONS:
        from ddpm_gui.errors import ConfigError

        raise ConfigError(f"Unknown sampling precision '{precision}': use one of {', '.join(PRECISIONS)}.")
    if precision != "auto":
        return AUTOCAST_DTYPES.get(precision)
    if device.type != "cuda":
        return None
    return AUTOCAST_DTYPES.get(training_precision(device, True))


def _forward(model: Callable[..., torch.Tensor], args: tuple, dtype: torch.dtype | None) -> torch.Tensor:
    """model(*args), under autocast to `dtype` when one is given; the output in float32 either way."""
    if dtype is None:
        return model(*args)
    with torch.autocast(args[0].device.type, dtype=dtype):
        return model(*args).float()


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
    wrapped model eagerly. The output is a fresh tensor (a clone of the static output). `dtype`: the
    forward pass's autocast dtype (None: fp32). Safe to call from several threads: a replay and the copies
    around it hold a lock, since they share the static buffers."""

    def __init__(self, model: nn.Module, warmup: int = 2, dtype: torch.dtype | None = None):
        super().__init__()
        self.model = model
        self.warmup = warmup
        self.dtype = dtype
        self._graphs: OrderedDict[tuple, tuple] = OrderedDict()  # least recently used first
        self._failed: set[tuple] = set()
        self._lock = threading.Lock()
        self.captures = 0  # graphs captured so far (a repeated Generate captures none)
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
                _forward(self.model, args, self.dtype)
        torch.cuda.current_stream(x.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: a sync or allocation by another thread (training, while the GUI samples its
        # weights) does not invalidate this capture, as the default global mode would make it
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            out = _forward(self.model, args, self.dtype)
        self.captures += 1
        return graph, sx, st, sy, out

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        def eager():
            return _forward(self.model, (x, t) if y is None else (x, t, y), self.dtype)

        if x.device.type != "cuda" or torch.is_grad_enabled() or not torch.is_tensor(t):
            return eager()
        with self._lock:
            return self._replay(x, t, y, eager)

    def _replay(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None, eager) -> torch.Tensor:
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
            while len(self._graphs) > MAX_GRAPHS:
                self._graphs.popitem(last=False)
        self._graphs.move_to_end(key)
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

    def __init__(self, model: nn.Module, mode: str | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        self.model = model
        self.dtype = dtype
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
                return _forward(self._compiled, args, self.dtype)
            except Exception as exc:
                self._compiled = None
                self.fallback_reason = f"torch.compile failed ({type(exc).__name__}: {exc}); running eagerly"
        return _forward(self.model, args, self.dtype)


class _Wrappers(dict):
    """A model's wrappers by (mode, dtype), kept on the model itself so that they live exactly as long as it
    does. A copy of the model (Learner.bundle's snapshot) starts with none: captured graphs belong to the
    weights they were captured from."""

    def __deepcopy__(self, memo):
        return _Wrappers()

    def __reduce__(self):
        return (_Wrappers, ())


_CACHE_ATTR = "_ddpm_gui_accel"


def accelerate(model: nn.Module, mode: str = "auto", precision: str = "auto") -> nn.Module:
    """An inference wrapper of `model` for sampling. mode: eager (the model itself), auto (cuda-graph when
    the model is on CUDA, else eager), cuda-graph, compile. precision: the forward pass's autocast
    (sampling_dtype). The same model, mode and precision give the same wrapper, captured graphs and all."""
    if mode not in MODES:
        from ddpm_gui.errors import ConfigError

        raise ConfigError(f"Unknown acceleration mode '{mode}': use one of {', '.join(MODES)}.")
    if isinstance(model, GraphedDenoiser | CompiledDenoiser):
        return model
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    dtype = sampling_dtype(device, precision)
    if mode == "eager" or (mode == "auto" and device.type != "cuda"):
        return model
    cache = model.__dict__.get(_CACHE_ATTR)
    if cache is None:
        cache = _Wrappers()
        object.__setattr__(model, _CACHE_ATTR, cache)
    key = (mode, dtype)
    if key not in cache:
        graphs = mode in ("auto", "cuda-graph")
        cache[key] = GraphedDenoiser(model, dtype=dtype) if graphs else CompiledDenoiser(model, dtype=dtype)
    return cache[key]
