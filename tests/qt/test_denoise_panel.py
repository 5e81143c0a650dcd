"""Denoise panel (the tutorial's horse experiment) against the real engine."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pytestqt")

from ddpm_gui.qt.panels import denoise_panel as dp  # noqa: E402
from ddpm_gui.qt.state import AppState  # noqa: E402

from .test_sample_panel import train_tiny_run  # noqa: E402

pytestmark = pytest.mark.qt


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from ddpm_gui.engine.sampler import load_bundle

    return load_bundle(train_tiny_run(tmp_path_factory.mktemp("denoise"), steps=3), device="cpu")


@pytest.fixture
def panel(qtbot, settings, monkeypatch):
    monkeypatch.setattr(dp, "SHOW_DIALOGS", False)
    p = dp.DenoisePanel(AppState(settings))
    qtbot.addWidget(p)
    p.resize(1280, 800)
    p.show()
    yield p
    p.shutdown(60000)
    qtbot.waitUntil(lambda: not p.is_busy(), timeout=10000)


def test_needs_a_model(panel):
    assert not panel.run_btn.isEnabled()
    assert "Train a model in the Train tab" in panel.model_label.text()
    assert panel.run() is False
    assert "File ▸ Open checkpoint" in panel.error_label.text()
    # without loaded data the built-in shapes are offered, the tutorial's index 4 chosen
    assert panel.index_spin.value() == 4
    assert panel.strip.count() == dp.STRIP
    assert panel.original_view.count() == 1


def test_defaults_are_the_tutorials(panel, bundle):
    panel.state.set_bundle(bundle)
    assert bundle.schedule.T == 100
    assert panel.t_spin.value() == 50 and panel.t_slider.value() == 50  # noise to t = 50 of 100
    assert panel.k_spin.value() == 10
    assert panel.run_btn.isEnabled()


def test_denoise_k3_t10(qtbot, panel, bundle):
    panel.state.set_bundle(bundle)
    assert panel.t_spin.maximum() == bundle.schedule.T - 1
    panel.k_spin.setValue(3)
    panel.t_spin.setValue(10)
    assert panel.t_slider.value() == 10
    assert panel.run() is True
    qtbot.waitUntil(lambda: panel._job is None, timeout=60_000)
    assert panel.error_label.isHidden(), panel.error_label.text()
    res = panel.results()
    assert res is not None and res.shape == (3, 32, 32, 3) and res.dtype == np.uint8
    assert panel.results_grid.count() == 3
    assert panel.results_grid.captions() == ["#1", "#2", "#3"]
    assert panel.original_view.count() == 1
    assert panel.start_view.count() == 1
    assert panel.starts_grid.count() == 3
    np.testing.assert_array_equal(panel.start_view.images()[0], panel.noised_starts()[0])
    first = res.copy()
    assert panel.rerun() is True  # a new seed: other noise, other continuations
    assert panel.seed_spin.value() == 1
    qtbot.waitUntil(lambda: panel._job is None, timeout=60_000)
    assert not np.array_equal(panel.results(), first)


def test_choose_image_by_click_and_file(qtbot, panel, bundle, tmp_path):
    from PIL import Image

    panel.state.set_bundle(bundle)
    panel._on_strip_clicked(7)
    assert panel.index_spin.value() == 7
    np.testing.assert_array_equal(panel.image(), panel._pool()[0][7])
    path = tmp_path / "photo.png"
    Image.fromarray(np.full((50, 80, 3), 200, np.uint8)).save(path)
    assert panel.open_image(path)
    img = panel.image()
    assert img.shape == (32, 32, 3) and int(img.mean()) == 200
    assert panel.open_image(tmp_path / "missing.png") is False
    assert not panel.error_label.isHidden()


def test_t_clamped_to_schedule(panel):
    from ddpm_gui.core.schedule import NoiseSchedule, ScheduleConfig

    class B:  # a bundle with a 20-step schedule (only what the panel reads)
        schedule = NoiseSchedule(ScheduleConfig(T=20))
        image_size = 32
        preset, step, num_classes, prediction, source = "tiny", 0, None, "eps", "test"

    panel.t_spin.setValue(50)
    panel.state.set_bundle(B())
    assert panel.t_spin.value() == 19 and panel.t_slider.maximum() == 19
