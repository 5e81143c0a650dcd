"""Sample panel against the real engine: a tiny model trained for a few steps, DDIM sampling, export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pytestqt")

from ddpm_gui.qt import exports
from ddpm_gui.qt.exports import export_scale, tile
from ddpm_gui.qt.panels import sample_panel as sp
from ddpm_gui.qt.widgets import frames_every
from tests.qt.conftest import drop, export_to_a_full_disk, train_tiny_run

pytestmark = pytest.mark.qt


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return train_tiny_run(tmp_path_factory.mktemp("sample"))


@pytest.fixture
def panel(show_panel):
    return show_panel(sp, sp.SamplePanel)


def test_tile_and_frames_every():
    imgs = np.arange(5 * 4 * 4 * 3, dtype=np.uint8).reshape(5, 4, 4, 3)
    m = tile(imgs, pad=1, scale=2)  # 3 columns, 2 rows of 8x8 tiles
    assert m.shape == (2 * 9 + 1, 3 * 9 + 1, 3)
    np.testing.assert_array_equal(m[1:9:2, 1:9:2], imgs[0])
    assert frames_every(100, 16, 32) == 1
    assert frames_every(1000, 16, 32) == 10
    assert frames_every(1000, 64, 256) > 10  # big frames: fewer kept


def test_no_model_message(panel):
    assert not panel.generate_btn.isEnabled()
    assert "Train a model in the Train tab" in panel.model_label.text()
    assert panel.generate() is False


def test_generate_ddim_frames_and_export(qtbot, panel, bundle, tmp_path):
    from PIL import Image

    panel.state.set_bundle(bundle)
    assert panel.generate_btn.isEnabled()
    assert "tiny" in panel.model_label.text() and "step 5" in panel.model_label.text()
    assert not panel.class_combo.isEnabled() and not panel.guidance_spin.isEnabled()  # unconditional
    panel.sampler_form.set_key("ddim")
    panel.sampler_form.steps_spin.setValue(10)
    panel.n_spin.setValue(4)
    assert panel.generate() is True
    qtbot.waitUntil(lambda: not panel.is_busy() and not panel.is_sampling(), timeout=60_000)
    assert panel.error_label.isHidden(), panel.error_label.text()
    frames = panel.frames()
    assert len(frames) == 10 and frames[-1].final
    assert panel.player.count() == len(frames)
    assert panel.player.current() == len(frames) - 1
    assert panel.xt_grid.count() == 4 and panel.x0_grid.count() == 4
    np.testing.assert_array_equal(panel.xt_grid.images(), frames[-1].xt)
    panel.player.set_current(2)  # scrub
    np.testing.assert_array_equal(panel.xt_grid.images(), frames[2].xt)
    assert "t = " in panel.frame_label.text()

    png = panel.save_png_grid(tmp_path / "grid.png")
    qtbot.waitUntil(lambda: not panel.is_exporting(), timeout=60_000)  # written in a worker
    gif = panel.save_animation(tmp_path / "anim.gif")
    qtbot.waitUntil(lambda: not panel.is_exporting(), timeout=60_000)
    with Image.open(png) as im:
        s = 32 * export_scale(32)
        assert im.size == (2 * (s + 2) + 2, 2 * (s + 2) + 2)
    with Image.open(gif) as im:
        assert im.n_frames > 1
        assert im.info.get("loop") == 0


def test_stop_mid_run(qtbot, panel, bundle):
    panel.state.set_bundle(bundle)
    panel.sampler_form.set_key("ddpm-beta")  # the full 100-step chain
    panel.n_spin.setValue(16)
    assert panel.generate()
    qtbot.waitUntil(lambda: len(panel.frames()) >= 2, timeout=60_000)
    panel.stop()
    qtbot.waitUntil(lambda: not panel.is_sampling(), timeout=60_000)
    assert not panel.is_busy()
    assert 2 <= len(panel.frames()) < 100
    assert not panel.frames()[-1].final
    assert "Stopped" in panel.status_label.text()
    assert panel.generate_btn.isEnabled()


def test_load_checkpoint(qtbot, panel, run_dir, tmp_path):
    """The Load button's model becomes the app's (AppState.set_bundle): the panel keeps no model of its own."""
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"not a checkpoint")
    panel.load_checkpoint(bad)
    qtbot.waitUntil(lambda: not panel.is_loading(), timeout=30_000)
    assert not panel.error_label.isHidden() and panel.error_label.text()
    assert panel.bundle() is None and panel.state.bundle is None
    with qtbot.waitSignal(panel.state.bundleChanged, timeout=30_000):
        assert panel.load_checkpoint(run_dir)
    qtbot.waitUntil(lambda: not panel.is_loading(), timeout=30_000)
    b = panel.bundle()
    assert b is not None and b.preset == "tiny" and b.step == 5
    assert panel.state.bundle is b and panel.state.bundle_source == run_dir.name
    assert panel.state.recent() == [str(run_dir)]
    assert "tiny" in panel.model_label.text() and panel.error_label.isHidden()
    assert panel.generate_btn.isEnabled()
    panel.state.set_bundle(None)  # whoever replaces the app's model replaces this panel's
    assert panel.bundle() is None and not panel.generate_btn.isEnabled()
    assert "Train a model in the Train tab" in panel.model_label.text()


# ----------------------------------------------------------------------------- exports: in a worker, atomic


def _generate(qtbot, panel, bundle, n: int = 4) -> np.ndarray:
    panel.state.set_bundle(bundle)
    panel.sampler_form.set_key("ddim")
    panel.sampler_form.steps_spin.setValue(3)
    panel.n_spin.setValue(n)
    assert panel.generate()
    qtbot.waitUntil(lambda: not panel.is_sampling(), timeout=60_000)
    assert panel.final_images() is not None, panel.error_label.text()
    return panel.final_images()


def test_export_runs_in_a_worker_with_a_busy_bar(qtbot, panel, bundle, tmp_path, export_writers):
    import threading

    from PIL import Image

    final = _generate(qtbot, panel, bundle)
    with qtbot.waitSignal(panel.exported, timeout=60_000) as done:
        png = panel.save_png_grid(tmp_path / "grid")  # no suffix: .png is added
        assert png == tmp_path / "grid.png"
        assert panel.is_exporting() and panel.export_bar.isVisible()  # busy, and the window keeps running
        assert not panel.png_btn.isEnabled() and not panel.anim_btn.isEnabled()
        assert panel.save_animation(tmp_path / "other.gif") is None  # one export at a time
    assert done.args == [png]
    qtbot.waitUntil(lambda: not panel.is_exporting(), timeout=10_000)
    assert (
        not panel.export_bar.isVisible()
        and panel.png_btn.isEnabled()
        and "Saved" in panel.status_label.text()
    )
    with Image.open(png) as im:  # complete, and exactly the mosaic of the final samples
        np.testing.assert_array_equal(np.asarray(im.convert("RGB")), tile(final, scale=export_scale(32)))
    with qtbot.waitSignal(panel.exported, timeout=60_000):
        gif = panel.save_animation(tmp_path / "anim.gif")
    qtbot.waitUntil(lambda: not panel.is_exporting(), timeout=10_000)
    with Image.open(gif) as im:
        assert im.format == "GIF" and im.n_frames == len(panel.frames()) and im.info["loop"] == 0
        im.seek(im.n_frames - 1)
        im.load()  # every frame decodes: the file is whole
    with qtbot.waitSignal(panel.exported, timeout=60_000):
        webp = panel.save_animation(tmp_path / "anim.webp")
    qtbot.waitUntil(lambda: not panel.is_exporting(), timeout=10_000)
    with Image.open(webp) as im:  # lossless: the last frame is exactly the final mosaic
        assert im.format == "WEBP" and im.n_frames == len(panel.frames()) and im.info["loop"] == 0
        im.seek(im.n_frames - 1)
        np.testing.assert_array_equal(np.asarray(im.convert("RGB")), tile(final, scale=export_scale(32)))
        assert im.info["duration"] == exports.HOLD_LAST_MS
    assert len(export_writers) == 3 and threading.main_thread() not in export_writers
    assert not list(tmp_path.glob(".*"))  # no temp file left beside them


def test_save_dialogs_open_in_the_runs_samples_folder(qtbot, panel, bundle, run_dir, tmp_path, monkeypatch):
    from dataclasses import replace

    _generate(qtbot, panel, bundle)
    (run_dir / "samples").mkdir(exist_ok=True)
    asked = []

    def dialog(parent, title, start, filters):
        asked.append(start)
        return str(tmp_path / "chosen" / Path(start).name), filters

    monkeypatch.setattr(exports.QFileDialog, "getSaveFileName", dialog)
    assert panel.save_png_grid() == tmp_path / "chosen" / "samples.png"
    qtbot.waitUntil(lambda: not panel.is_exporting(), timeout=60_000)
    assert asked == [str(run_dir / "samples" / "samples.png")]
    assert (tmp_path / "chosen" / "samples.png").is_file()
    # a model from a loose checkpoint (no run folder): the last folder used
    panel.state.set_bundle(replace(bundle, source=str(tmp_path / "loose.safetensors")))
    assert panel.export_folder() == tmp_path / "chosen"
    assert exports.run_folder(bundle) == run_dir and exports.run_folder(panel.state.bundle) is None


@pytest.mark.parametrize(
    ("export", "name"),
    [("save_png_grid", "keep.png"), ("save_animation", "keep.gif"), ("save_animation", "keep.webp")],
)
def test_a_failed_export_shows_an_error_and_keeps_the_old_file(qtbot, panel, bundle, tmp_path, export, name):
    _generate(qtbot, panel, bundle)
    msg = export_to_a_full_disk(qtbot, panel, export, tmp_path / name)
    assert name in msg and "No space left" in msg, msg
    assert panel.anim_btn.isEnabled() and not panel.export_bar.isVisible()


# ----------------------------------------------------------------------------- drag and drop


def test_dropped_images_and_folders_are_refused_with_what_to_drop(qtbot, panel, tmp_path):
    from PIL import Image

    image = tmp_path / "cat.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    assert drop(panel, image) is False
    msg = panel.error_label.text()
    assert "cat.png" in msg and "checkpoint (.safetensors) or a run folder" in msg, msg
    assert "Forward or Denoise tab" in msg and not panel.is_loading() and panel.state.bundle is None
    (tmp_path / "photos").mkdir()
    assert drop(panel, tmp_path / "photos") is False
    assert "photos" in panel.error_label.text() and "Data tab" in panel.error_label.text()


@pytest.mark.parametrize("what", ["run folder", "checkpoint file"])
def test_a_dropped_run_or_checkpoint_becomes_the_apps_model(qtbot, panel, run_dir, what):
    from ddpm_gui.engine.checkpoint import list_checkpoints

    path = run_dir if what == "run folder" else list_checkpoints(run_dir)[-1][1]
    sources = []
    panel.state.bundleChanged.connect(lambda b: sources.append(panel.state.bundle_source))
    assert drop(panel, path) is True
    qtbot.waitUntil(lambda: panel.state.bundle is not None and not panel.is_loading(), timeout=30_000)
    assert sources == [path.name]  # through AppState.set_bundle, named after what was dropped
    assert panel.bundle() is panel.state.bundle and panel.bundle().step == 5
    assert panel.generate_btn.isEnabled() and panel.error_label.isHidden()


# ----------------------------------------------------------------------------- step terms


def _run(qtbot, panel, bundle, key: str = "ddim", n: int = 4, steps: int = 5, eta: float = 0.5) -> list:
    panel.state.set_bundle(bundle)
    panel.sampler_form.set_key(key)
    panel.sampler_form.steps_spin.setValue(steps)
    panel.sampler_form.eta_spin.setValue(eta)
    panel.n_spin.setValue(n)
    assert panel.generate()
    qtbot.waitUntil(lambda: not panel.is_sampling(), timeout=120_000)
    assert panel.error_label.isHidden(), panel.error_label.text()
    return panel.frames()


def _shown_terms(view, frame, i: int) -> None:
    """The view shows `frame`'s term images of image i, its norms, a marker at its timestep."""
    assert view.grid.count() == len(frame.names)
    np.testing.assert_array_equal(view.grid.images(), np.stack([frame.images[k][i] for k in frame.names]))
    assert view.marker.isVisible() and view.marker.value() == frame.t
    assert f"t = {frame.t}" in view.title.text()
    ts, norms = view.norms()
    for j, name in enumerate(view.names()):  # one curve a term: image i's norm at every step
        x, y = view._curves[name].getData()
        np.testing.assert_array_equal(x, ts)
        np.testing.assert_allclose(y, norms[:, j, i])


def test_step_terms_follow_the_slider_and_the_clicked_image(qtbot, panel, bundle):
    from ddpm_gui.core.terms import STEP_TERMS

    frames = _run(qtbot, panel, bundle)
    view = panel.terms_view
    assert frames[0].names == STEP_TERMS == view.names()
    ts, norms = view.norms()
    assert list(ts) == [f.t for f in frames] and norms.shape == (5, len(STEP_TERMS), 4)  # every step, once
    panel.view_tabs.setCurrentWidget(view)
    panel.player.set_current(2)
    _shown_terms(view, frames[2], 0)
    assert f"t = {frames[3].t}" in view.title.text()  # the step goes from t to the next timestep
    assert "σ_t = " in view.note.text()
    panel.xt_grid.clicked.emit(3)  # an image clicked in the Samples grids
    assert view.image() == 3
    _shown_terms(view, frames[2], 3)
    panel.player.step(+1)
    _shown_terms(view, frames[3], 3)
    assert f"t = {frames[3].t}" in panel.frame_label.text()
    panel.view_tabs.setCurrentIndex(0)  # back to the grids: they show the frame under the slider
    np.testing.assert_array_equal(panel.xt_grid.images(), frames[3].xt)


def _grab_variance(widget) -> float:
    from tests.qt.conftest import grab_variance

    return grab_variance(widget)


def test_step_terms_of_the_demo_model_with_guidance(qtbot, panel):
    from ddpm_gui.core.terms import GUIDANCE_TERMS, STEP_TERMS
    from ddpm_gui.engine.demo import load_demo_bundle

    panel.state.set_bundle(load_demo_bundle("cpu"))
    panel.class_combo.setCurrentIndex(panel.class_combo.findData(1))
    panel.guidance_spin.setValue(3.0)
    frames = _run(qtbot, panel, panel.state.bundle, steps=3, eta=0.0)
    view = panel.terms_view
    assert view.names() == STEP_TERMS + GUIDANCE_TERMS
    panel.view_tabs.setCurrentWidget(view)
    panel.player.set_current(1)
    _shown_terms(view, frames[1], 0)
    assert view.grid.columns() == len(STEP_TERMS)  # the guidance terms in a row of their own
    assert "Guidance" in view.note.text() and "conditional" in view.legend.text()
    assert "σ_t = 0. " in view.note.text()  # DDIM with eta = 0 adds no noise
    assert _grab_variance(view) > 10  # images and a plot are drawn


def test_step_terms_beyond_the_images_kept_and_without_a_noise_term(qtbot, panel, bundle, monkeypatch):
    from ddpm_gui.core.spec import SAMPLERS
    from ddpm_gui.core.terms import STEP_TERMS, decomposes
    from ddpm_gui.engine import terms
    from ddpm_gui.engine.sampler import SampleConfig
    from ddpm_gui.qt.panels.step_terms import NO_NOISE_TEXT

    monkeypatch.setattr(terms, "TERMS_BUDGET_BYTES", 1)  # term images for the first image only
    frames = _run(qtbot, panel, bundle, n=3, steps=3)
    view = panel.terms_view
    panel.view_tabs.setCurrentWidget(view)
    assert all(len(f.images["eps"]) == 1 for f in frames)
    view.set_image(2)
    assert view.grid.count() == 0 and "first 1 images" in view.note.text()
    x, y = view._curves["eps"].getData()
    np.testing.assert_allclose(
        y, view.norms()[1][:, STEP_TERMS.index("eps"), 2]
    )  # the norms are there for all
    view.set_image(0)
    _shown_terms(view, panel.frames()[panel.player.current()], 0)
    multistep = [s for s in SAMPLERS if not decomposes(s)]
    if not multistep:
        return
    cfg = SampleConfig(n=2, sampler=multistep[0], steps=3, seed=0)
    view.clear()
    mframes = list(terms.sample_frames_with_terms(bundle, cfg))
    for f in mframes:
        view.add_frame(f)
    view.show_frame(mframes[1])
    assert view.names() == ("x_t", "eps", "x0", "x_prev") and view.grid.count() == 4
    assert NO_NOISE_TEXT in view.note.text() and mframes[1].sigma is None
