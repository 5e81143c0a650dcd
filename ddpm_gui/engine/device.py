"""Choosing and describing the compute device."""

from __future__ import annotations

import torch

from ddpm_gui.errors import ConfigError


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps and mps.is_available())


def pick_device(name: str = "auto") -> torch.device:
    """auto: cuda, then mps, then cpu. A named device that is not there is a clear error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError("CUDA was asked for but no CUDA GPU is available here: choose device 'cpu' or 'auto'.")
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"There is no {name}: this machine has {torch.cuda.device_count()} CUDA device(s).")
        return dev
    if name == "mps":
        if not _mps_available():
            raise ConfigError("MPS (Apple GPU) was asked for but is not available: choose 'cpu' or 'auto'.")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise ConfigError(f"Unknown device '{name}': use auto, cpu, cuda, cuda:N or mps.")


def device_label(dev: torch.device) -> str:
    if dev.type == "cuda":
        idx = dev.index if dev.index is not None else torch.cuda.current_device()
        return f"cuda:{idx} ({torch.cuda.get_device_name(idx)})"
    if dev.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return str(dev)


def describe_devices() -> list[tuple[str, str]]:
    """(value for TrainConfig.device, label) for every device present, 'auto' first."""
    out = [("auto", f"auto ({device_label(pick_device('auto'))})"), ("cpu", device_label(torch.device("cpu")))]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            out.append((f"cuda:{i}", f"cuda:{i} ({torch.cuda.get_device_name(i)})"))
    if _mps_available():
        out.append(("mps", "mps (Apple GPU)"))
    return out
