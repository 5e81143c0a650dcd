"""Denoise panel (the tutorial's horse experiment) against the real engine."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pytestqt")

from ddpm_gui.qt.panels import denoise_panel as dp
from ddpm_gui.qt.panels.denoise_form import STRIP
from tests.qt.conftest import drop, export_to_a_full_disk, train_tiny_run

pytestmark = pytest.mark.qt


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return train_tiny_run(tmp_path_factory.mktemp("denoise"), steps=3)


@pytest.fixture
def panel(show_panel):
    return show_panel(dp, dp.DenoisePanel)


def test_needs_a_model(panel):
    assert not panel.run_btn.isEnabled()
    assert "Train a model in the Train tab" in panel.model_label.text()
    assert panel.run() is False
    assert "File ▸ Open checkpoint" in panel.error_label.text()
    # without loaded data the built-in shapes are offered, the tutorial's index 4 chosen
    assert panel.form.index_spin.value() == 4
    assert panel.form.strip.count() == STRIP
    assert panel.original_view.count() == 1


def test_defaults_are_the_tutorials(panel, bundle):
    panel.state.set_bundle(bundle)
    assert bundle.schedule.T == 100
    form = panel.form
    assert form.t_spin.value() == 50 and form.t_slider.value() == 50  # noise to t = 50 of 100
    assert form.k_spin.value() == 10
    assert panel.run_btn.isEnabled()


def test_denoise_k3_t10(qtbot, panel, bundle):
    panel.state.set_bundle(bundle)
    form = panel.form
    assert form.t_spin.maximum() == bundle.schedule.T - 1
    form.k_spin.setValue(3)
    form.t_spin.setValue(10)
    assert form.t_slider.value() == 10
    assert panel.run() is True
    qtbot.waitUntil(lambda: not panel.is_denoising(), timeout=60_000)
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
    assert form.seed_spin.value() == 1
    qtbot.waitUntil(lambda: not panel.is_denoising(), timeout=60_000)
    assert not np.array_equal(panel.results(), first)


def test_choose_image_by_click_and_file(qtbot, panel, bundle, tmp_path):
    from PIL import Image

    panel.state.set_bundle(bundle)
    panel.form.on_strip_clicked(7)
    assert panel.form.index_spin.value() == 7
    np.testing.assert_array_equal(panel.image(), panel.form.pool()[0][7])
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

    panel.form.t_spin.setValue(50)
    panel.state.set_bundle(B())
    assert panel.form.t_spin.value() == 19 and panel.form.t_slider.maximum() == 19


# ----------------------------------------------------------------------------- image files: the one loader


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
            drop(panel, path)
        msg = panel.error_label.text()
        assert not panel.error_label.isHidden() and path.name in msg and re.search(pattern, msg), (key, msg)
        assert "\n" not in msg
        np.testing.assert_array_equal(panel.image(), before)
        assert "photo.png" in panel.original_title.text()
    assert drop(panel, tmp_path / "photo.png")  # a good file again: the error goes
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


# ----------------------------------------------------------------------------- t and steps: one meaning


def test_t_is_explained_once_and_agrees_with_the_forward_tab(qtbot, panel, bundle):
    from PySide6.QtWidgets import QLabel

    from ddpm_gui.qt.panels.forward_panel import ForwardPanel

    panel.state.set_bundle(bundle)
    panel.form.t_spin.setValue(50)
    ab = float(bundle.schedule.alpha_bars[50])
    note = panel.form.t_note.text()
    assert "t counts from 0" in note and "t = 50 is the Forward tab's step 51 of 100" in note, note
    assert f"ᾱ = {ab:.4f}" in note
    # the Forward tab's step 51 is this t = 50: the same ᾱ, the same mix of image and noise
    fwd = ForwardPanel(panel.state)
    qtbot.addWidget(fwd, before_close_func=lambda w: w.shutdown(10000))
    fwd.set_schedule(bundle.schedule.config)
    qtbot.waitUntil(lambda: not fwd.is_busy() and fwd.frame_count() == 101, timeout=20000)
    fwd.player.set_current(51)
    assert "step 51 / 100" in fwd.frame_label.text() and f"ᾱ<sub>t</sub> = {ab:.4f}" in fwd.frame_label.text()
    # a run: every other label speaks of t = 50, and the step number is said once, in the note
    panel.form.k_spin.setValue(2)
    panel.form.sampler_form.set_key("ddim")
    panel.form.sampler_form.steps_spin.setValue(3)
    assert panel.run()
    assert "Noising to t = 50" in panel.status_label.text()
    qtbot.waitUntil(lambda: not panel.is_denoising(), timeout=60_000)
    assert "(t = 50)" in panel.start_title.text() and "noised to t = 50" in panel.results_title.text()
    assert panel.player.count() == 4  # the noised starts, then 3 reverse steps
    panel.player.set_current(0)
    assert panel.player.label_text() == "noised starts · t = 50"
    assert "t = 50" in panel.results_title.text()
    texts = [w.text() for w in panel.findChildren(QLabel)]
    assert sum("step 51" in t for t in texts) == 1, texts


# ----------------------------------------------------------------------------- exports


def _run(qtbot, panel, bundle, k=3, t=10, steps=4):
    panel.state.set_bundle(bundle)
    panel.form.k_spin.setValue(k)
    panel.form.t_spin.setValue(t)
    panel.form.sampler_form.set_key("ddim")
    panel.form.sampler_form.steps_spin.setValue(steps)
    assert panel.run()
    qtbot.waitUntil(lambda: not panel.is_denoising(), timeout=60_000)
    assert panel.results() is not None, panel.error_label.text()


def test_exports_the_row_and_the_chain_off_the_gui_thread(qtbot, panel, bundle, tmp_path, export_writers):
    import threading

    from PIL import Image

    from ddpm_gui.qt.exports import export_scale, tile

    _run(qtbot, panel, bundle)
    assert panel.png_btn.isEnabled() and panel.anim_btn.isEnabled()
    out = tmp_path / "out"
    row = np.concatenate([panel.image()[None], panel.noised_starts()[:1], panel.results()])
    with qtbot.waitSignal(panel.exported, timeout=60_000):
        png = panel.save_png_row(out / "row")
        assert png == out / "row.png" and panel.is_exporting() and not panel.anim_btn.isEnabled()
    qtbot.waitUntil(lambda: not panel.is_exporting(), timeout=10_000)
    with Image.open(png) as im:  # original, noised start, the 3 results: one row
        want = tile(row, columns=5, scale=export_scale(32))
        np.testing.assert_array_equal(np.asarray(im.convert("RGB")), want)
    for suffix in (".gif", ".webp"):
        with qtbot.waitSignal(panel.exported, timeout=60_000):
            anim = panel.save_animation(out / f"chain{suffix}")
        qtbot.waitUntil(lambda: not panel.is_exporting(), timeout=10_000)
        with Image.open(anim) as im:  # the noised starts, then each reverse step
            assert im.n_frames == 1 + 4 and im.info["loop"] == 0
            im.seek(im.n_frames - 1)
            im.load()
            if suffix == ".webp":  # lossless: the last frame is the PNG's row
                np.testing.assert_array_equal(np.asarray(im.convert("RGB")), want)
    assert len(export_writers) == 3 and threading.main_thread() not in export_writers
    assert sorted(p.name for p in out.iterdir()) == ["chain.gif", "chain.webp", "row.png"]
    assert panel.png_btn.isEnabled() and panel.anim_btn.isEnabled()


@pytest.mark.parametrize(("export", "name"), [("save_png_row", "keep.png"), ("save_animation", "keep.gif")])
def test_a_failed_export_keeps_the_old_file(qtbot, panel, bundle, tmp_path, export, name):
    _run(qtbot, panel, bundle, k=2, steps=2)
    (tmp_path / "out").mkdir()
    msg = export_to_a_full_disk(qtbot, panel, export, tmp_path / "out" / name)
    assert name in msg and "No space left" in msg, msg


def test_save_dialogs_open_in_the_runs_samples_folder(panel, bundle, run_dir):
    panel.state.set_bundle(bundle)
    (run_dir / "samples").mkdir(exist_ok=True)
    assert panel.exporter.folder() == run_dir / "samples"


# ----------------------------------------------------------------------------- drops: models and folders


@pytest.mark.parametrize("what", ["run folder", "checkpoint file"])
def test_a_dropped_run_or_checkpoint_becomes_the_apps_model(qtbot, panel, run_dir, what):
    from ddpm_gui.engine.checkpoint import list_checkpoints

    path = run_dir if what == "run folder" else list_checkpoints(run_dir)[-1][1]
    assert drop(panel, path) is True
    qtbot.waitUntil(lambda: panel.state.bundle is not None and not panel.is_busy(), timeout=30_000)
    assert panel.state.bundle_source == path.name and panel.run_btn.isEnabled()
    assert "tiny" in panel.model_label.text() and panel.error_label.isHidden()


def test_a_dropped_image_folder_goes_to_the_data_tab(panel, tmp_path):
    (tmp_path / "photos").mkdir()
    before = panel.image().copy()
    assert drop(panel, tmp_path / "photos") is False
    msg = panel.error_label.text()
    assert "photos is a folder" in msg and "open image folders in the Data tab" in msg, msg
    assert panel.state.bundle is None and not panel.is_busy()
    np.testing.assert_array_equal(panel.image(), before)


# ----------------------------------------------------------------------------- inpainting


def _drag(painter, points, button=None):
    """A mouse drag over the painter through `points` (image pixel coordinates), as a user makes it."""
    from PySide6.QtCore import Qt
    from PySide6.QtTest import QTest

    button = button or Qt.MouseButton.LeftButton
    at = [painter.to_widget(x, y).toPoint() for x, y in points]
    QTest.mousePress(painter, button, Qt.KeyboardModifier.NoModifier, at[0])
    for p in at[1:]:
        QTest.mouseMove(painter, p)
    QTest.mouseRelease(painter, button, Qt.KeyboardModifier.NoModifier, at[-1])


def test_the_mask_is_painted_with_the_mouse(qtbot, panel, bundle):
    from PySide6.QtCore import Qt

    panel.state.set_bundle(bundle)
    form, editor = panel.form, panel.mask_editor
    painter = editor.painter
    assert panel.original_stack.currentWidget() is panel.original_view
    form.inpaint_check.setChecked(True)
    assert panel.original_stack.currentWidget() is editor and painter.isVisible()
    assert not form.t_spin.isVisible() and not form.t_note.isVisible() and form.jump_spin.isVisible()
    assert "from pure noise at t = 99" in form.calls_note.text()
    np.testing.assert_array_equal(painter.image(), panel.image())
    editor.brush_spin.setValue(3)
    _drag(painter, [(4.5, 10.5), (12.5, 10.5), (28.5, 10.5)])  # a fast stroke: no gaps between the points
    m = painter.mask()
    assert m[10, 4:29].all() and m[9, 4:29].all() and m[11, 4:29].all()  # 3 pixels wide
    assert not m[13:].any() and not m[:8].any() and m.sum() < 3 * 32
    assert f"{m.sum()} of 1024 pixels painted" in editor.info.text()
    _drag(painter, [(16.5, 10.5), (20.5, 10.5)], button=Qt.MouseButton.RightButton)
    erased = painter.mask()
    assert not erased[10, 16:21].any() and erased[10, 4:14].all()  # the right button erases
    editor.invert_btn.click()
    np.testing.assert_array_equal(painter.mask(), ~erased)
    editor.clear_btn.click()
    assert not painter.mask().any()
    assert panel.run() is False and "Paint the region" in panel.error_label.text()
    _drag(painter, [(8.5, 8.5), (8.5, 20.5)])
    kept = painter.mask()
    panel.form.on_strip_clicked(3)  # another image of the same size keeps the mask
    np.testing.assert_array_equal(painter.mask(), kept)
    np.testing.assert_array_equal(painter.image(), panel.image())
    form.inpaint_check.setChecked(False)
    assert panel.original_stack.currentWidget() is panel.original_view
    assert form.t_spin.isVisible() and not form.jump_spin.isVisible()


def test_inpaint_runs_in_a_worker_and_keeps_the_unpainted_pixels(qtbot, panel, bundle, monkeypatch):
    import threading

    from ddpm_gui.core.inpaint import model_calls, repaint_schedule
    from ddpm_gui.engine import inpaint

    chains = []

    def recording(*a, _real=inpaint.repaint_process, **k):
        chains.append(threading.current_thread())
        yield from _real(*a, **k)

    monkeypatch.setattr(inpaint, "repaint_process", recording)
    panel.state.set_bundle(bundle)
    form = panel.form
    form.inpaint_check.setChecked(True)
    form.k_spin.setValue(3)
    form.jump_spin.setValue(20)
    form.resample_spin.setValue(1)
    calls = model_calls(repaint_schedule(99, 20, 1))
    assert f"{calls:,} model calls per image" in form.calls_note.text()
    painter = panel.mask_editor.painter
    painter.set_brush(8)
    _drag(painter, [(16, 4), (16, 28)])  # a vertical band down the middle
    mask = painter.mask()
    assert panel.run() is True and panel.is_denoising()  # run() returned while the chain runs
    assert not panel.run_btn.isEnabled() and panel.stop_btn.isEnabled()
    assert f"{calls:,} model calls each" in panel.status_label.text()
    qtbot.waitUntil(lambda: not panel.is_denoising(), timeout=120_000)
    assert panel.error_label.isHidden(), panel.error_label.text()
    assert chains and threading.main_thread() not in chains
    res, image = panel.results(), panel.image()
    assert res.shape == (3, 32, 32, 3)
    for r in res:
        np.testing.assert_array_equal(r[~mask], image[~mask])
    painted = res[:, mask].astype(int)
    assert np.abs(painted[0] - painted[1]).mean() > 1 and np.abs(painted[1] - painted[2]).mean() > 1
    assert "3 inpaintings" in panel.results_title.text() and "jump length 20" in panel.results_title.text()
    labels = []
    for i in range(panel.player.count()):  # every frame kept, forward (resampling) moves among them
        panel.player.set_current(i)
        labels.append(panel.player.label_text())
    assert any(s.endswith(" · resampling") for s in labels), labels
    assert labels[-1].endswith("t = 0 → x₀ · final"), labels
    assert panel.status_label.text() == "Done: 3 inpaintings (seed 0)."


def test_inpainting_asks_for_the_ddpm_sampler(qtbot, panel, bundle):
    panel.state.set_bundle(bundle)
    panel.form.inpaint_check.setChecked(True)
    panel.form.sampler_form.set_key("ddim")
    panel.mask_editor.painter.set_mask(np.ones((32, 32), bool))
    panel.run()
    qtbot.waitUntil(lambda: not panel.is_denoising(), timeout=60_000)
    assert "DDPM sampler" in panel.error_label.text() and panel.results() is None


def test_a_mask_follows_the_models_size(qapp):
    from ddpm_gui.qt.mask_painter import MaskPainter

    p = MaskPainter()
    p.set_image(np.zeros((8, 8, 3), np.uint8))
    m = np.zeros((8, 8), bool)
    m[:, :4] = True
    p.set_mask(m)
    p.set_image(np.zeros((16, 16, 3), np.uint8))
    assert p.mask().shape == (16, 16) and p.mask()[:, :8].all() and not p.mask()[:, 8:].any()


def test_inpaint_asks_a_conditional_model_for_the_class_with_guidance(qtbot, panel, monkeypatch):
    from ddpm_gui.engine import inpaint
    from ddpm_gui.engine.demo import load_demo_bundle

    asked = []

    def recording(bundle, n, class_label, guidance, _real=inpaint.make_denoiser):
        asked.append((class_label, guidance))
        return _real(bundle, n, class_label, guidance)

    monkeypatch.setattr(inpaint, "make_denoiser", recording)
    demo = load_demo_bundle(device="cpu")
    form = panel.form
    assert not form.class_combo.isEnabled() and form.class_kwargs() == {"class_label": None, "guidance": 1.0}
    panel.state.set_bundle(demo)
    assert form.class_combo.count() == 1 + demo.num_classes and form.class_combo.isEnabled()
    assert not form.guidance_spin.isEnabled()  # no class: no guidance
    form.class_combo.setCurrentIndex(form.class_combo.findData(2))
    assert form.guidance_spin.isEnabled()
    form.guidance_spin.setValue(2.5)
    form.inpaint_check.setChecked(True)
    form.k_spin.setValue(2)
    form.resample_spin.setValue(0)
    s = demo.image_size
    mask = np.zeros((s, s), bool)
    mask[: s // 2] = True
    panel.mask_editor.painter.set_mask(mask)
    assert panel.run()
    qtbot.waitUntil(lambda: not panel.is_denoising(), timeout=120_000)
    assert panel.error_label.isHidden(), panel.error_label.text()
    assert asked == [(2, 2.5)]
    for r in panel.results():
        np.testing.assert_array_equal(r[~mask], panel.image()[~mask])
