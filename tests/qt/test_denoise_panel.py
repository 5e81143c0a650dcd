"""Denoise panel (the tutorial's horse experiment) against the real engine."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pytestqt")

from ddpm_gui.qt.panels import denoise_panel as dp
from ddpm_gui.qt.state import AppState

from .test_sample_panel import train_tiny_run

pytestmark = pytest.mark.qt


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return train_tiny_run(tmp_path_factory.mktemp("denoise"), steps=3)


@pytest.fixture(scope="module")
def bundle(run_dir):
    from ddpm_gui.engine.sampler import load_bundle

    return load_bundle(run_dir, device="cpu")


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


# ----------------------------------------------------------------------------- image files: the one loader


def _drop(panel, path) -> None:
    from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
    from PySide6.QtGui import QDropEvent

    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(path))])
    ev = QDropEvent(
        QPointF(10, 10),
        Qt.DropAction.CopyAction,
        mime,
        Qt.MouseButton.LeftButton,
        Qt.KeyboardModifier.NoModifier,
    )
    panel.dropEvent(ev)


class _Model:
    """A bundle with only what the panel reads, at a chosen image size."""

    def __init__(self, size: int):
        from ddpm_gui.core.schedule import NoiseSchedule, ScheduleConfig

        self.schedule = NoiseSchedule(ScheduleConfig(T=20))
        self.image_size = size
        self.preset, self.step, self.num_classes, self.prediction, self.source = (
            "tiny",
            0,
            None,
            "eps",
            "test",
        )


@pytest.mark.parametrize("door", ["open", "drop"])
def test_hostile_files_show_an_error_and_keep_the_image(panel, tmp_path, door):
    import re

    from PIL import Image
    from test_imageio import hostile_files

    photo = tmp_path / "photo.png"
    Image.fromarray(np.full((40, 60, 3), 70, np.uint8)).save(photo)
    assert panel.open_image(photo)
    before = panel.image().copy()
    for key, (path, pattern) in hostile_files(tmp_path / "bad").items():
        if door == "open":
            assert panel.open_image(path) is False, key
        else:
            _drop(panel, path)
        msg = panel.error_label.text()
        assert not panel.error_label.isHidden() and path.name in msg and re.search(pattern, msg), (key, msg)
        assert "\n" not in msg
        np.testing.assert_array_equal(panel.image(), before)
        assert "photo.png" in panel.original_title.text()
    _drop(panel, tmp_path / "photo.png")  # a good file again: the error goes
    assert panel.error_label.isHidden()


def test_same_pixels_as_the_cli(panel, bundle, run_dir, tmp_path):
    from PIL import Image
    from test_imageio import gradient

    from ddpm_gui import cli
    from ddpm_gui.data.imageio import load_image

    panel.state.set_bundle(bundle)
    src = tmp_path / "tall.png"
    Image.fromarray(gradient(50, 34)).save(src)
    out = tmp_path / "row.png"
    assert cli.main(["denoise", "--run", str(run_dir), "--image", str(src), "--t", "1", "--k", "1",
                     "--device", "cpu", "--scale", "1", "--out", str(out)]) == 0  # fmt: skip
    with Image.open(out) as im:
        cli_original = np.asarray(im.convert("RGB"))[1:33, 1:33]
    assert panel.open_image(src)
    np.testing.assert_array_equal(panel.image(), cli_original)
    np.testing.assert_array_equal(cli_original, load_image(src, 32))


def test_a_new_model_size_reads_the_file_again(panel, tmp_path):
    from PIL import Image
    from test_imageio import gradient

    from ddpm_gui.data.imageio import load_image

    src = tmp_path / "wide.png"
    Image.fromarray(gradient(30, 70)).save(src)
    assert panel.open_image(src) and panel.image().shape == (32, 32, 3)
    panel.state.set_bundle(_Model(16))
    np.testing.assert_array_equal(panel.image(), load_image(src, 16))  # one crop from the file
    assert "wide.png" in panel.original_title.text()
    src.unlink()  # gone before the next model: say so, and fall back to the dataset's image
    panel.state.set_bundle(_Model(24))
    assert "wide.png" in panel.error_label.text() and "dataset's image instead" in panel.error_label.text()
    assert panel.image().shape == (24, 24, 3) and "wide.png" not in panel.original_title.text()
