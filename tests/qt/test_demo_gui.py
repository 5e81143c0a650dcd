"""The demo model on first launch: with a fresh settings folder and no model, the window loads the demo model
that ships with the app, the Sample and Denoise tabs say so and work at once, and any model of the user's
(loaded or trained) replaces it; the demo never replaces a model of the user's."""

from __future__ import annotations

import pytest

from ddpm_gui.engine.demo import DEMO_NOTE, demo_path
from ddpm_gui.qt.panels import sample_panel as sp
from ddpm_gui.qt.state import DEMO_SETTING, DEMO_SOURCE
from tests.qt.conftest import open_window, train_tiny_run

pytestmark = pytest.mark.qt


@pytest.fixture
def window(qtbot, settings, monkeypatch):
    """A first launch: a fresh settings file (the `settings` fixture's), the demo model on (the default)."""
    monkeypatch.setattr(sp, "SHOW_DIALOGS", False)
    w = open_window(qtbot, settings, limit=300, demo=True)
    qtbot.waitUntil(lambda: w.state.bundle is not None, timeout=60_000)
    yield w
    w.shutdown()


def _label(window, panel: str) -> str:
    return window.panel(panel).model_label.text()


def test_first_launch_loads_the_demo_and_the_sample_tab_generates_from_it(qtbot, window):
    state = window.state
    assert state.bundle_is_demo and state.bundle_source == DEMO_SOURCE
    assert state.bundle.source == str(demo_path()) and state.bundle.num_classes == 10
    for name in ("SamplePanel", "DenoisePanel"):
        assert _label(window, name).startswith(DEMO_NOTE), _label(window, name)
    sample = window.panel("SamplePanel")
    assert sample.generate_btn.isEnabled() and sample.class_combo.count() == 11  # "any" + the 10 shapes
    sample.n_spin.setValue(4)
    sample.sampler_form.set_key("ddim")
    sample.sampler_form.steps_spin.setValue(5)
    sample.class_combo.setCurrentIndex(sample.class_combo.findData(2))  # triangles, with guidance
    assert sample.generate() is True
    qtbot.waitUntil(lambda: not sample.is_sampling(), timeout=60_000)
    images = sample.final_images()
    size = state.bundle.image_size
    assert images is not None and images.shape == (4, size, size, 3), sample.error_label.text()
    assert all(int(im.max()) > int(im.min()) for im in images)
    assert window.panel("DenoisePanel").run_btn.isEnabled()


def test_a_loaded_model_replaces_the_demo(qtbot, window, run_dir):
    run = run_dir
    with qtbot.waitSignal(window.state.bundleChanged, timeout=60_000):
        window.open_checkpoint(str(run))
    state = window.state
    assert not state.bundle_is_demo and state.bundle_source == run.name and state.bundle.step == 2
    for name in ("SamplePanel", "DenoisePanel"):
        assert DEMO_NOTE not in _label(window, name) and str(run) in _label(window, name)
    assert window.load_demo() is False  # a later start-up check never puts the demo back
    assert state.bundle_source == run.name


def test_a_trained_model_replaces_the_demo(qtbot, window, tmp_path):
    train = window.panel("TrainPanel")
    train.data_edit.setText("builtin:64")
    train.preset_combo.setCurrentIndex(train.preset_combo.findData("tiny"))
    train.batch_spin.setValue(8)
    train.steps_spin.setValue(3)
    train.preview_spin.setValue(0)
    train.set_run_dir(tmp_path / "run")
    train.set_overrides(log_every=1, checkpoint_minutes=0)
    assert train.start() is True
    qtbot.waitUntil(lambda: not train.is_busy(), timeout=120_000)
    qtbot.waitUntil(lambda: not window.state.bundle_is_demo, timeout=30_000)
    assert window.state.bundle.step == 3 and "run" in window.state.bundle_source
    assert DEMO_NOTE not in _label(window, "SamplePanel")


def test_the_demo_never_replaces_a_model_that_came_while_it_loaded(qtbot, settings, tmp_path, bundle):
    w = open_window(qtbot, settings, limit=300)  # demo off: nothing loads at start
    qtbot.waitUntil(lambda: w.state.data is not None and not w.is_busy(), timeout=30_000)
    assert w.state.bundle is None and not w.demo_slot.is_busy()
    settings.setValue(DEMO_SETTING, True)
    assert w.load_demo() is True
    w.state.set_bundle(bundle, "the user's model")  # before the worker's result reaches the GUI thread
    qtbot.waitUntil(lambda: not w.demo_slot.is_busy(), timeout=60_000)
    assert w.state.bundle is bundle and not w.state.bundle_is_demo
    assert DEMO_NOTE not in w.panel("SamplePanel").model_label.text()
    w.shutdown()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return train_tiny_run(tmp_path_factory.mktemp("demo-gui"), steps=2)
