"""File ▸ Export as diffusers…: the export runs in a worker and says where it wrote, or why it refused."""

from __future__ import annotations

import json

import pytest
from PySide6.QtWidgets import QWidget

from ddpm_gui.qt import export_model

pytestmark = pytest.mark.qt
pytest.importorskip("diffusers")


def _checkpoint(path, preset: str):
    """A DDPM Studio checkpoint of a freshly built model of `preset` (no training needed to export it)."""
    from ddpm_gui.engine.checkpoint import prefixed, save_checkpoint
    from ddpm_gui.engine.config import TrainConfig
    from ddpm_gui.models.presets import build_model, get_preset

    meta = {"step": 1, "config": TrainConfig(preset=preset, image_size=8 if preset != "tiny" else 16).to_dict(),
            "model_config": get_preset(preset).to_dict(), "num_classes": None}  # fmt: skip
    return save_checkpoint(path, prefixed("model", build_model(preset).state_dict()), meta)


def _export(qtbot, window, run, out) -> export_model.Exporter:
    assert export_model.export_action(window, str(run), str(out))
    ex = export_model.exporter(window)
    assert ex.slot.is_busy()
    qtbot.waitUntil(lambda: not ex.slot.is_busy(), timeout=120_000)
    return ex


def test_export_action_writes_a_pipeline_in_a_worker(qtbot, tmp_path, monkeypatch):
    monkeypatch.setattr(export_model, "SHOW_DIALOGS", False)
    window = QWidget()
    qtbot.addWidget(window)
    ckpt = _checkpoint(tmp_path / "model.safetensors", "diffusers-tiny")
    ex = _export(qtbot, window, ckpt, tmp_path / "pipe")
    assert ex.error == "" and ex.last == tmp_path / "pipe"
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["_class_name"] == "DDPMPipeline"
    assert export_model.exporter(window) is ex  # one per window


def test_export_action_reports_a_refusal(qtbot, tmp_path, monkeypatch):
    monkeypatch.setattr(export_model, "SHOW_DIALOGS", False)
    window = QWidget()
    qtbot.addWidget(window)
    ckpt = _checkpoint(tmp_path / "tiny.safetensors", "tiny")
    ex = _export(qtbot, window, ckpt, tmp_path / "pipe")
    assert "train with --preset ddpm-cifar10" in ex.error and ex.last is None
    assert not (tmp_path / "pipe").exists()


def test_current_run_follows_the_current_model(tmp_path):
    class Bundle:
        source = str(tmp_path / "run" / "checkpoints" / "step_00000010.safetensors")

    class State:
        bundle = Bundle()

    class Window:
        state = State()

    assert export_model.current_run(Window()) == str(tmp_path / "run")
    Bundle.source = f"training run {tmp_path / 'other'}"
    assert export_model.current_run(Window()) == str(tmp_path / "other")
    Bundle.source = "the demo model"
    assert export_model.current_run(Window()) == ""


def test_the_file_menu_exports_and_closing_waits_for_the_export(qtbot, settings, tmp_path, monkeypatch):
    from PySide6.QtWidgets import QFileDialog

    from tests.qt.conftest import open_window

    monkeypatch.setattr(export_model, "SHOW_DIALOGS", False)
    ckpt = _checkpoint(tmp_path / "model.safetensors", "diffusers-tiny")
    # the two folder dialogs: what to export (a run folder; the engine takes a checkpoint file as well), where
    answers = iter([str(ckpt), str(tmp_path / "pipe")])
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: next(answers))
    window = open_window(qtbot, settings, limit=16)
    assert window.export_action.isEnabled() and window.export_action.text() == "&Export as diffusers…"
    window.export_action.trigger()
    ex = export_model.exporter(window)
    job = ex.slot.job
    assert job is not None  # the export runs in a worker: the menu returned at once
    window.shutdown(120_000)  # waits for the export's worker
    assert job._thread.isFinished()
    qtbot.waitUntil(lambda: not ex.slot.is_busy(), timeout=30_000)
    assert (tmp_path / "pipe" / "unet" / "config.json").is_file(), ex.error
