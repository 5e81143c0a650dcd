"""File ▸ Open diffusers model: a save_pretrained folder (or a Hub id in the local cache) becomes the app's
model, and the Sample tab samples from it; without diffusers the action says how to install it."""

from __future__ import annotations

import shutil
import sys

import pytest
from PySide6.QtWidgets import QFileDialog, QInputDialog, QMessageBox

from tests.qt.conftest import open_window

pytest.importorskip("diffusers")
pytestmark = pytest.mark.qt

T = 20


def tiny_pipeline(folder):
    import torch
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        num_class_embeds=2,
    )
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=T)).save_pretrained(folder)
    return folder


@pytest.fixture
def window(qtbot, settings):
    w = open_window(qtbot, settings, limit=16)
    yield w
    w.shutdown(60_000)


def test_open_diffusers_folder_from_the_file_menu_and_sample(qtbot, window, tmp_path, monkeypatch):
    folder = tiny_pipeline(tmp_path / "pipe")
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: str(folder))
    assert window.open_diffusers_action.isEnabled()
    window.open_diffusers_action.trigger()
    qtbot.waitUntil(lambda: window.state.bundle is not None, timeout=60_000)
    bundle = window.state.bundle
    assert bundle.preset == "diffusers UNet2DModel" and bundle.source == str(folder)
    panel = window.panel("SamplePanel")
    assert "diffusers UNet2DModel" in panel.model_label.text() and f"T = {T}" in panel.model_label.text()
    assert panel.class_combo.count() == 3  # "any" and the model's two classes
    panel.n_spin.setValue(2)
    panel.class_combo.setCurrentIndex(2)  # class 1
    # the model's own choices: fixed_small is the posterior variance; no "no class" row, so no guidance
    assert panel.sampler_form.key() == "ddpm-posterior" and panel.sampler_form.clip_check.isChecked()
    assert window.panel("DenoisePanel").form.sampler_form.key() == "ddpm-posterior"
    assert not panel.guidance_spin.isEnabled()
    assert panel.generate() is True
    qtbot.waitUntil(lambda: not panel.is_sampling(), timeout=60_000)
    assert panel.error_label.isHidden(), panel.error_label.text()
    frames = panel.frames()
    assert frames[-1].final and frames[-1].xt.shape == (2, 8, 8, 3) and frames[-1].t == 0


def test_open_a_cached_hub_id_from_the_file_menu(qtbot, window, tmp_path, monkeypatch):
    repo = tmp_path / "hub" / "models--org--tiny"
    shutil.copytree(tiny_pipeline(tmp_path / "src"), repo / "snapshots" / "abc123")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)
    offered = {}

    def get_item(parent, title, label, items, current, editable):
        offered["items"] = list(items)
        return "org/tiny", True

    monkeypatch.setattr(QInputDialog, "getItem", get_item)
    window.open_hub_action.trigger()
    qtbot.waitUntil(lambda: window.state.bundle is not None, timeout=60_000)
    assert offered["items"] == ["org/tiny"]  # the cache's diffusers models are offered
    assert window.state.bundle.source == "org/tiny"


def test_without_diffusers_the_action_says_how_to_install_it(qtbot, window, monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # importlib finds no diffusers now
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: pytest.fail("no dialog"))
    window.open_diffusers_action.trigger()
    boxes = [b for b in window.findChildren(QMessageBox) if b.isVisible()]
    assert boxes and "ddpm-gui[diffusers]" in boxes[-1].text()
    assert window.state.bundle is None
