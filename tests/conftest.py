"""Fixtures shared by the headless tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module: bitwise-reproducible CPU results, and no spinning threads fighting
    on a busy machine. Use it with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def small_config(**kw):
    """A TrainConfig the engine tests train in seconds on a CPU: the tiny UNet on 256 built-in shapes at
    16x16, batch 8, every step logged, nothing saved unless asked; `kw` changes any setting."""
    from ddpm_gui.engine.config import TrainConfig

    base = dict(
        data="builtin:256", image_size=16, preset="tiny", batch_size=8, steps=10, lr=1e-3, warmup_steps=0,
        log_every=1, preview_every=0, checkpoint_every=0, checkpoint_minutes=0, device="cpu", seed=0, threads=1,
    )  # fmt: skip
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def data():
    """The 256 built-in shapes at 16x16 of small_config, decoded once per module."""
    from ddpm_gui.data import load_data

    return load_data("builtin:256", image_size=16)


def run_all(trainer) -> list:
    """Every event of a run."""
    return list(trainer.run())


def load_script(name: str):
    """scripts/<name>.py as a module (the fault-injection and I/O campaigns that tests run in short form)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def checkpoint_state(path) -> dict:
    """The tensors of a checkpoint that exact resume must reproduce: weights, EMA and optimizer state."""
    from ddpm_gui.engine.checkpoint import load_checkpoint

    tensors, _ = load_checkpoint(path)
    return {k: v for k, v in tensors.items() if k.startswith(("model.", "ema.", "optim."))}


def assert_same_tensors(a: dict, b: dict) -> None:
    """Bitwise equal, tensor by tensor (the name of the first that differs in the message)."""
    import torch

    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
