"""What the Train tab runs in its worker threads: the devices present, and a training run's events."""

from __future__ import annotations

from dataclasses import dataclass

from ddpm_gui.engine import events as ev
from ddpm_gui.qt.train.run_view import ThreadsUsed


@dataclass
class BundleReady:
    """Yielded by the worker after the Trainer ended: the final (EMA) model, built off the GUI thread."""

    bundle: object


def devices():
    """Worker: the devices present (imports torch off the GUI thread). The CPU is named by its cores, not
    by a thread count: the CPU threads row says how many are used, and that count may change."""
    from ddpm_gui.engine.device import describe_devices, pick_device, usable_cpus

    cores = f"{usable_cpus()} core{'s' if usable_cpus() != 1 else ''}"
    names = {"cpu": f"cpu ({cores})"}
    if pick_device("auto").type == "cpu":
        names["auto"] = f"auto (cpu, {cores})"
    yield [(value, names.get(value, label)) for value, label in describe_devices()]


def is_progress(e: object) -> bool:
    """Only Progress events are held back for merging; the rest (Paused, Notice...) show at once."""
    return isinstance(e, ev.Progress)


def train_iter(trainer):
    """Worker: the Trainer's events, then the final model (built here, not in the GUI thread). Before an
    event, how many CPU threads torch uses here when that changed (ThreadsUsed): torch keeps the count per
    thread, so only this thread, the trainer's, can tell."""
    import torch

    failed, threads = False, None
    for e in trainer.run():
        failed = failed or isinstance(e, ev.Failed)
        if torch.get_num_threads() != threads:
            threads = torch.get_num_threads()
            yield ThreadsUsed(threads)
        yield e
    if not failed:
        try:
            yield BundleReady(trainer.bundle())
        except Exception:  # no model (stopped before it was built): nothing to publish
            return
