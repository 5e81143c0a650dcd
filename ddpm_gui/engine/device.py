"""Choosing and describing the compute device, and how many CPU threads torch may use."""

from __future__ import annotations

import os
import re
import time

import torch

from ddpm_gui.errors import ConfigError


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps and mps.is_available())


def pick_device(name: str = "auto") -> torch.device:
    """auto: cuda, then mps, then cpu. A named device that is not there is a clear error that names the
    devices present."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" or re.fullmatch(r"cuda:\d+", name or ""):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"{name} was asked for but no CUDA GPU is available here (devices present: "
                f"{_present()}): choose device 'cpu' or 'auto'."
            )
        dev = torch.device(name)
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ConfigError(
                f"There is no {name}: this machine has {count} CUDA device{'s' if count != 1 else ''} "
                f"({_present()}): choose one of those."
            )
        return dev
    if name == "mps":
        if not _mps_available():
            raise ConfigError("MPS (Apple GPU) was asked for but is not available: choose 'cpu' or 'auto'.")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise ConfigError(f"Unknown device '{name}': use auto, cpu, cuda, cuda:N or mps.")


def _present() -> str:
    """The devices a run may name here, for messages: 'cpu, cuda:0, cuda:1'."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available():
        names.append("mps")
    return ", ".join(names)


def device_label(dev: torch.device) -> str:
    if dev.type == "cuda":
        idx = dev.index if dev.index is not None else torch.cuda.current_device()
        return f"cuda:{idx} ({torch.cuda.get_device_name(idx)})"
    if dev.type == "cpu":
        n = torch.get_num_threads()
        return f"cpu ({n} thread{'s' if n != 1 else ''})"
    return str(dev)


def describe_devices() -> list[tuple[str, str]]:
    """(value for TrainConfig.device, label) for every device present, 'auto' first."""
    out = [
        ("auto", f"auto ({device_label(pick_device('auto'))})"),
        ("cpu", device_label(torch.device("cpu"))),
    ]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            out.append((f"cuda:{i}", f"cuda:{i} ({torch.cuda.get_device_name(i)})"))
    if _mps_available():
        out.append(("mps", "mps (Apple GPU)"))
    return out


# ----------------------------------------------------------------------------- out of memory

# how the allocators say they ran out: CUDA and MPS ("... out of memory ..."), the CPU's DefaultCPUAllocator
# ("can't allocate memory"), an MPS buffer larger than the GPU allows ("Invalid buffer size")
_OOM_TEXTS = ("out of memory", "can't allocate memory", "cannot allocate memory", "invalid buffer size")


def is_oom(exc: BaseException) -> bool:
    """Whether an exception is a device or host allocator running out of memory."""
    if isinstance(exc, torch.cuda.OutOfMemoryError | MemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(t in str(exc).lower() for t in _OOM_TEXTS)


def free_cached_memory(dev: torch.device) -> None:
    """Give the allocator's cached blocks back after running out of memory (CUDA, MPS)."""
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    elif dev.type == "mps":
        torch.mps.empty_cache()


# ----------------------------------------------------------------------------- CUDA kernels


def configure_cuda(dev: torch.device) -> None:
    """Let CUDA pick fast kernels: cuDNN times its convolution algorithms for each new shape once
    (a run's shapes never change, so that is paid once), and fp32 matmuls and convolutions may use TF32
    tensor cores (a 10-bit mantissa on the inputs, fp32 accumulation: the usual setting for training).
    Nothing changes on the CPU or MPS."""
    if dev.type != "cuda":
        return
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = True  # torch's default for convolutions; matmuls need asking
    torch.set_float32_matmul_precision("high")


def memory_format(dev: torch.device) -> torch.memory_format:
    """The layout the model's weights and its input batches share on `dev`: channels_last on CUDA, where
    cuDNN's tensor-core convolutions run in NHWC (a mismatch makes it convert every step), plain NCHW
    elsewhere."""
    return torch.channels_last if dev.type == "cuda" else torch.contiguous_format


# ----------------------------------------------------------------------------- training precision
# Mixed precision by what the GPU computes natively: bf16 from compute capability 8.0 (Ampere) on, which has
# fp32's range and so needs no loss scaling; fp16 with a gradient scaler on older GPUs (T4, V100, RTX 20xx:
# sm 7.x), where bf16 is only emulated; fp32 on the CPU (autocast there is far slower than fp32) and on MPS.

PRECISIONS = ("bf16", "fp16", "fp32")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}  # fp32: no autocast
PRECISION_LABELS = {
    "bf16": "bf16 mixed precision",
    "fp16": "fp16 mixed precision with loss scaling",
    "fp32": "fp32",
}


def choose_precision(amp: bool, capability: tuple[int, int] | None, bf16_native: bool = True) -> str:
    """The training precision for a CUDA GPU of compute `capability` (None: not a CUDA GPU), when mixed
    precision is on (`amp`): bf16 from sm 8.0 where the GPU has native bf16, else fp16; fp32 when off or
    not on CUDA."""
    if not amp or capability is None:
        return "fp32"
    return "bf16" if tuple(capability) >= (8, 0) and bf16_native else "fp16"


def training_precision(dev: torch.device, amp: bool, request: str = "auto") -> str:
    """choose_precision for `dev`, reading its compute capability; a `request` other than auto is used as
    it is (tests run the fp16 path on the CPU)."""
    if request != "auto":
        if request not in PRECISIONS:
            raise ConfigError(f"Unknown precision {request!r}: use auto or one of {', '.join(PRECISIONS)}.")
        return request
    if dev.type != "cuda" or not amp:
        return choose_precision(amp, None)
    cap = torch.cuda.get_device_capability(dev)
    # torch answers for the current device; the capability check covers a run on another one
    try:  # emulated bf16 (sm 7.x) is no speed-up: ask for the native kind where torch can tell
        native = torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch before 2.4 has no including_emulation (and counts no emulation)
        native = torch.cuda.is_bf16_supported()
    return choose_precision(amp, cap, native)


# ----------------------------------------------------------------------------- CPU threads
# torch's CPU kernels split each operation over all cores and wait for the slowest part: when another
# process holds a core, every operation waits for it, and training ran 5x slower with 2 threads than with 1
# on a 2-core machine with one busy core. So the app counts the cores that other processes leave free now.


def usable_cpus() -> int:
    """Cores this process may run on (its affinity mask where the system has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _cpu_times() -> tuple[float, float] | None:
    """(seconds all cores were busy, seconds this process ran) since boot, from /proc; None elsewhere."""
    try:
        with open("/proc/stat") as f:
            vals = [int(v) for v in f.readline().split()[1:]]
        with open("/proc/self/stat") as f:
            own = f.read().rsplit(")", 1)[1].split()
    except (OSError, ValueError, IndexError):
        return None
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle + iowait
    busy = sum(vals[:8]) - idle  # user nice system idle iowait irq softirq steal
    return busy / tick, (int(own[11]) + int(own[12])) / tick  # utime + stime


class ThreadChooser:
    """Picks torch's CPU thread count from the cores other processes leave free, and re-checks on demand.

    `requested` > 0 fixes the count (the user's choice). Otherwise each `check()` measures how many cores
    other processes used since the previous check (from /proc where there is one, the load average
    elsewhere) and returns the count to use: the usable cores minus the busy ones, at least 1, and never
    more than `cap` (torch's own count when the run starts: OMP_NUM_THREADS and an earlier
    torch.set_num_threads stay upper bounds, so on an idle machine auto is torch's default)."""

    def __init__(self, requested: int = 0, cap: int | None = None):
        self.requested = requested
        self.cap = max(1, min(cap or usable_cpus(), usable_cpus()))
        self._last = _cpu_times()
        self._t = time.monotonic()
        self.threads = requested or self.cap

    def others_busy(self) -> float | None:
        """Cores that other processes kept busy since the previous call (None: cannot tell here)."""
        now, t = _cpu_times(), time.monotonic()
        last, self._last, t0, self._t = self._last, now, self._t, t
        if now is not None and last is not None and t - t0 > 0.05:
            return max(0.0, ((now[0] - last[0]) - (now[1] - last[1])) / (t - t0))
        try:
            load = os.getloadavg()[0]  # includes this process: only a fallback
        except (AttributeError, OSError):
            return None
        return max(0.0, load - self.threads)

    def check(self) -> int:
        if self.requested:
            return self.requested
        busy = self.others_busy()
        if busy is not None:
            # round: a core that others use 30% of the time is still worth a thread
            self.threads = max(1, min(self.cap, round(usable_cpus() - busy)))
        return self.threads


def measure_free_threads(interval: float = 0.3) -> int:
    """The thread count the app would choose now, measured over `interval` seconds (blocks that long)."""
    chooser = ThreadChooser()
    time.sleep(interval)
    return chooser.check()


def micro_batches(batch: int, accumulate: int) -> list[tuple[int, int]]:
    """[start, stop) of the micro-batches a batch of `batch` runs as, so that it fits in the device's
    memory: `accumulate` equal parts (config validation makes the batch size a multiple of it; a batch
    halved after running out of memory may not be, and then the parts differ by one image), never an
    empty one."""
    k = max(1, min(accumulate, batch))
    return [(i * batch // k, (i + 1) * batch // k) for i in range(k)]
