"""The CUDA code paths, checked on the CPU: graph capture mode and reuse, sampling autocast, kernel settings,
the weights' layout, and host-kept datasets. Where a path needs CUDA, the CUDA calls are replaced by test
doubles that record what the code asked for."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch

from ddpm_gui.engine import accel
from ddpm_gui.engine import device as dv
from ddpm_gui.engine.learner import Learner
from ddpm_gui.engine.staging import HostBatches
from ddpm_gui.errors import ConfigError
from tests.conftest import small_config

pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny():
    from ddpm_gui.models.presets import build_model

    torch.manual_seed(0)
    return build_model("tiny").eval()


# ----------------------------------------------------------------------------- sampling wrappers


def test_a_model_keeps_its_wrapper_and_a_copy_does_not():
    """A repeated Generate gets the wrapper (and so the graphs) it had; a snapshot of new weights does not."""
    model = _tiny()
    first = accel.accelerate(model, "cuda-graph")
    assert isinstance(first, accel.GraphedDenoiser)
    assert accel.accelerate(model, "cuda-graph") is first
    assert accel.accelerate(first, "cuda-graph") is first  # wrapping a wrapper changes nothing
    assert accel.accelerate(model, "compile") is not first
    snapshot = copy.deepcopy(model)
    assert accel.accelerate(snapshot, "cuda-graph") is not first
    assert set(snapshot.state_dict()) == set(model.state_dict())  # the cache is no part of the weights


class _FakeCuda:
    """Enough of torch.cuda for GraphedDenoiser._capture to run on the CPU: the model runs for real, a
    'graph' remembers the call and replays it."""

    def __init__(self, monkeypatch):
        self.capture_kwargs: list[dict] = []
        self.replays = 0
        fake = self

        class Graph:
            def replay(self):
                fake.replays += 1
                self.out.copy_(self.fn())

        @contextlib.contextmanager
        def graph(g, **kwargs):
            fake.capture_kwargs.append(kwargs)
            yield

        class Stream:
            def __init__(self, device=None):
                pass

            def wait_stream(self, other):
                pass

        monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
        monkeypatch.setattr(torch.cuda, "graph", graph)
        monkeypatch.setattr(torch.cuda, "Stream", Stream)
        monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
        monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream())


def test_graphs_are_captured_thread_locally_once_per_shape(monkeypatch):
    fake = _FakeCuda(monkeypatch)
    model = _tiny()
    wrapper = accel.GraphedDenoiser(model)
    real_capture = wrapper._capture

    def capture(x, t, y):
        graph, sx, st, sy, out = real_capture(x, t, y)
        graph.out, graph.fn = out, lambda: model(sx, st)  # what a replay recomputes from the static inputs
        return graph, sx, st, sy, out

    wrapper._capture = capture
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([5, 50])
    with torch.inference_mode():
        want = model(x, t)
        got = [wrapper._replay(x, t, None, lambda: None) for _ in range(3)]
        other = wrapper._replay(torch.randn(4, 3, 16, 16), torch.tensor([1, 2, 3, 4]), None, lambda: None)
        got[0].add_(1)  # each call returns its own tensor, not the static buffer
    assert wrapper.captures == 2 and fake.replays == 4  # one capture per shape, then replays only
    assert fake.capture_kwargs == [{"capture_error_mode": "thread_local"}] * 2
    assert other.shape == (4, 3, 16, 16)
    for g in got[1:]:
        torch.testing.assert_close(g, want)


def test_sampling_precision_follows_the_device():
    cpu = torch.device("cpu")
    assert accel.sampling_dtype(cpu) is None  # autocast on a CPU is slower than fp32
    assert accel.sampling_dtype(cpu, "bf16") is torch.bfloat16
    assert accel.sampling_dtype(torch.device("cuda"), "fp32") is None
    with pytest.raises(ConfigError, match="Unknown sampling precision"):
        accel.sampling_dtype(cpu, "fp8")


def test_autocast_sampling_returns_float32_close_to_fp32():
    """The forward pass runs in the autocast dtype (its convolutions' outputs are bf16) and hands the
    sampler float32, within bf16's precision of the fp32 model."""
    model = _tiny()
    seen = []
    model.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    wrapper = accel.GraphedDenoiser(model, dtype=torch.bfloat16)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([5, 50])
    with torch.inference_mode():
        want = model(x, t)
        got = wrapper(x, t)
    assert seen == [torch.float32, torch.bfloat16] and got.dtype == torch.float32
    assert (got - want).abs().max() < 0.05 * want.abs().max()


# ----------------------------------------------------------------------------- kernels and layout


def test_cuda_kernel_settings_only_on_cuda():
    cudnn = torch.backends.cudnn
    saved = cudnn.benchmark, cudnn.allow_tf32, torch.get_float32_matmul_precision()
    try:
        cudnn.benchmark, cudnn.allow_tf32 = False, False
        torch.set_float32_matmul_precision("highest")
        dv.configure_cuda(torch.device("cpu"))
        assert (cudnn.benchmark, cudnn.allow_tf32, torch.get_float32_matmul_precision()) == (
            False,
            False,
            "highest",
        )
        dv.configure_cuda(torch.device("cuda", 0))
        assert cudnn.benchmark and cudnn.allow_tf32 and torch.get_float32_matmul_precision() == "high"
    finally:
        cudnn.benchmark, cudnn.allow_tf32 = saved[:2]
        torch.set_float32_matmul_precision(saved[2])
    assert dv.memory_format(torch.device("cuda")) is torch.channels_last
    assert dv.memory_format(torch.device("cpu")) is torch.contiguous_format


def test_batches_match_the_weights_layout(data):
    """The batch the UNet sees has the weights' layout (from_uint8 alone gives an NHWC-strided view), and
    the channels_last layout CUDA uses trains to the same weights as NCHW and saves plain tensors."""
    runs = {}
    for fmt in (torch.contiguous_format, torch.channels_last):
        lr = Learner(small_config(), data=data)
        lr.memory_format_request = fmt
        lr.setup()
        seen = []
        lr.model.register_forward_pre_hook(
            lambda m, args, seen=seen, fmt=fmt: seen.append(args[0].is_contiguous(memory_format=fmt))
        )
        losses = [float(lr.train_step()) for _ in range(3)]
        assert seen and all(seen)
        conv = next(p for p in lr.model.parameters() if p.dim() == 4)
        assert conv.is_contiguous(memory_format=fmt)
        snap = lr.bundle().model
        assert all(p.is_contiguous() for p in snap.parameters())  # samplers and exports get NCHW
        tensors, _ = lr.state_dict()
        assert all(v.is_contiguous() for v in tensors.values())
        runs[fmt] = losses
    # the same batches and the same maths: the losses agree to float rounding (the weights too, up to
    # Adam's normalisation of near-zero gradients, which magnifies rounding in a few of them)
    a, b = runs.values()
    assert a == pytest.approx(b, rel=1e-4)


# ----------------------------------------------------------------------------- data kept on the host


class _Event:
    log: list[str] = []

    def record(self):
        self.log.append("record")

    def synchronize(self):
        self.log.append("sync")


def _host_batches(images, pins):
    def pin(t):
        pins.append(t.shape)
        return t

    return HostBatches(images, torch.device("cpu"), pin=pin, new_event=_Event)


def test_host_batches_reuse_two_pinned_buffers():
    images = torch.arange(10 * 2 * 2 * 3, dtype=torch.uint8).reshape(10, 2, 2, 3)
    pins: list = []
    hb = _host_batches(images, pins)
    _Event.log = []
    outs = [hb.gather(torch.tensor(ix)) for ix in ([1, 2, 3], [4, 5, 6], [7, 8, 9], [0, 1, 2])]
    assert pins == [(3, 2, 2, 3)] * 2  # two buffers, pinned once
    # a buffer is waited for only when it is written again, two batches later
    assert _Event.log == ["record", "record", "sync", "record", "sync", "record"]
    torch.testing.assert_close(outs[-1], images[[0, 1, 2]])
    hb.gather(torch.tensor([1, 2]))  # a halved batch: new buffers, after the copies in flight
    assert pins[2:] == [(2, 2, 2, 3)] * 2
    with pytest.raises(ValueError, match="host indices"):
        hb.gather(torch.tensor([1], device="meta"))


def test_a_host_kept_dataset_resumes_exactly(data):
    """Batch indices of a host-kept dataset come from a stream of their own, saved in the checkpoint."""

    def learner():
        lr = Learner(small_config(), data=data)
        lr.setup()
        lr.host_batches = _host_batches(lr.images, [])
        lr.index_gen = torch.Generator()
        lr.index_gen.manual_seed(7)
        return lr

    a = learner()
    for _ in range(2):
        a.train_step()
    tensors, meta = a.state_dict()
    assert "rng.index_gen" in tensors
    tensors = {k: v.clone() for k, v in tensors.items()}  # as a file gives them: no views of a's state
    b = learner()
    b.load_state_dict(tensors, meta)
    a.train_step()
    b.train_step()
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k]), k


# ----------------------------------------------------------------------------- compiled training


def test_compile_model_trains_through_the_compiled_callable(monkeypatch, data):
    calls = []

    def fake_compile(module):
        def compiled(*args):
            calls.append(args[0].shape)
            return module(*args)

        return compiled

    monkeypatch.setattr(torch, "compile", fake_compile)
    plain = Learner(small_config(), data=data)
    fast = Learner(small_config(compile_model=True), data=data)
    for lr in (plain, fast):
        lr.setup()
        for _ in range(2):
            lr.train_step()
    assert len(calls) == 2 and fast.compile_fallback is None
    for k, v in plain.model.state_dict().items():
        assert torch.equal(v, fast.model.state_dict()[k]), k


def test_a_model_that_cannot_compile_trains_uncompiled(monkeypatch, tmp_path, data):
    from ddpm_gui.engine import events as ev
    from ddpm_gui.engine.trainer import Trainer

    def broken(module):
        def compiled(*args):
            raise RuntimeError("no C++ compiler found\nmore detail")

        return compiled

    monkeypatch.setattr(torch, "compile", broken)
    events = list(Trainer(small_config(compile_model=True, steps=4), tmp_path / "run", data=data).run())
    notes = [e.message for e in events if isinstance(e, ev.Notice) and "could not be compiled" in e.message]
    assert notes == ["The model could not be compiled (no C++ compiler found): it trains uncompiled."]
    assert isinstance(events[-1], ev.Finished) and events[-1].step == 4
