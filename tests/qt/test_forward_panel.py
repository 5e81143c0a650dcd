"""Forward process panel: the schedule editor, its plots and warning, and the two processes' frames."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ddpm_gui.core.schedule import SCHEDULE_PRESETS
from ddpm_gui.qt.panels.forward_panel import ForwardPanel
from tests.qt.conftest import drop, export_to_a_full_disk

pytestmark = pytest.mark.qt


@pytest.fixture
def panel(qtbot, state, builtin_data):
    state.set_data(builtin_data)
    p = ForwardPanel(state)
    qtbot.addWidget(p, before_close_func=lambda w: w.shutdown(10000))
    p.resize(1200, 800)
    p.show()
    _wait_frames(qtbot, p)
    return p


def _wait_frames(qtbot, p, T=None):
    T = p.schedule().T if T is None else T
    qtbot.waitUntil(
        lambda: not p.is_busy() and p.frame_count() == T + 1 and not p._recompute_timer.isActive(),
        timeout=20000,
    )


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.astype(np.float64).ravel(), b.astype(np.float64).ravel())[0, 1])


def test_frames_for_the_tutorial_schedule(panel, builtin_data):
    f = panel.frames()
    assert panel.schedule().T == 100 and panel.frame_count() == 101
    assert f.iterative.shape == f.closed.shape == (101, 32, 32, 3)
    x0 = builtin_data.images[0]
    np.testing.assert_array_equal(panel.clean_image(), x0)
    np.testing.assert_array_equal(f.iterative[0], x0)
    np.testing.assert_array_equal(f.closed[0], x0)
    assert "36%" in panel.warning_text() and "0.131" in panel.warning_text()


def _contrast_image() -> np.ndarray:
    img = np.zeros((32, 32, 3), np.uint8)
    img[:, 16:] = 255  # x_0 = -1 on the left, +1 on the right
    return img


def test_tutorial_x_T_still_holds_the_image(qtbot, panel):
    panel.set_image(_contrast_image(), "halves")
    _wait_frames(qtbot, panel)
    # alpha_bar_T = 0.131: x_T = 0.36 x_0 + 0.93 eps, visibly correlated with x_0 (about 0.36)
    assert _corr(panel.frames().closed[-1], _contrast_image()) > 0.25
    assert _corr(panel.frames().iterative[-1], _contrast_image()) > 0.25


def test_cosine_ends_in_noise_and_hides_the_warning(qtbot, panel):
    panel.set_image(_contrast_image(), "halves")
    panel.set_schedule("cosine")
    _wait_frames(qtbot, panel)
    assert panel.schedule_editor.preset_combo.currentData() == "cosine"
    assert panel.warning_text() == ""
    last = panel.frames().closed[-1].astype(np.float64)
    assert abs(_corr(last, _contrast_image())) < 0.1
    # N(0, 1) clipped to [-1, 1] and mapped to 0..255: mean ~127.5, std ~ 0.72 * 127.5 = 92
    assert 110 < last.mean() < 145 and 75 < last.std() < 110
    # zero terminal SNR: also no warning
    panel.set_schedule("tutorial-zero-snr")
    assert panel.warning_text() == ""
    panel.set_schedule("tutorial")
    assert panel.warning_text() != ""


def test_editing_T_updates_plots_and_frames(qtbot, panel):
    editor, curves = panel.schedule_editor, panel.plots.curves
    editor.T_spin.setValue(50)
    assert len(curves["beta"].getData()[0]) == 50
    assert len(curves["alpha_bar"].getData()[1]) == 50
    assert len(curves["snr"].getData()[1]) == 50
    assert editor.preset_combo.currentData() == "(custom)"
    _wait_frames(qtbot, panel, 50)
    panel.player.set_current(25)
    np.testing.assert_array_equal(panel.iter_view.images()[0], panel.frames().iterative[25])
    np.testing.assert_array_equal(panel.closed_view.images()[0], panel.frames().closed[25])
    assert "step 25 / 50" in panel.frame_label.text()


def test_invalid_beta_keeps_the_last_valid_schedule(qtbot, panel):
    before, editor = panel.schedule(), panel.schedule_editor
    editor.beta_end_spin.setValue(0.00005)  # below beta_start = 1e-4
    assert "beta_end" in panel.error_text()
    assert panel.schedule() is before
    assert len(panel.plots.curves["beta"].getData()[0]) == before.T
    editor.beta_start_spin.setValue(0.0)
    assert "beta_start" in panel.error_text()
    editor.beta_start_spin.setValue(0.0001)
    editor.beta_end_spin.setValue(0.02)
    assert panel.error_text() == ""
    assert panel.schedule().config.beta_end == pytest.approx(0.02)


def test_long_schedule_runs_in_the_background(qtbot, panel):
    panel.set_schedule("ddpm-paper")  # T = 1000
    assert SCHEDULE_PRESETS["ddpm-paper"].T == 1000
    _wait_frames(qtbot, panel, 1000)
    assert panel.frames().iterative.shape[0] == 1001


def test_seed_resample_and_image_choice(qtbot, panel, builtin_data, tmp_path):
    first = panel.frames().closed[50].copy()
    panel.seed_spin.setValue(panel.seed_spin.value() + 1)
    _wait_frames(qtbot, panel)
    qtbot.waitUntil(lambda: not np.array_equal(panel.frames().closed[50], first), timeout=10000)
    panel.index_spin.setValue(7)
    np.testing.assert_array_equal(panel.clean_image(), builtin_data.images[7])
    _wait_frames(qtbot, panel)
    np.testing.assert_array_equal(panel.frames().iterative[0], builtin_data.images[7])
    panel.strip.clicked.emit(2)  # the strip shows images 0..7
    assert panel.index_spin.value() == 2
    path = tmp_path / "photo.png"
    Image.fromarray(np.full((64, 80, 3), 200, np.uint8)).save(path)
    assert panel.open_image(str(path))
    assert panel.clean_image().shape == (32, 32, 3) and panel.clean_image().mean() == pytest.approx(
        200, abs=1
    )
    _wait_frames(qtbot, panel)
    assert not panel.open_image(str(tmp_path / "missing.png"))


def test_steps_strip_shows_six_steps(panel):
    strip = panel.steps_strip
    assert strip.count() == 12  # 6 iterative + 6 closed form
    assert strip.captions()[:6] == ["t=0", "t=20", "t=40", "t=60", "t=80", "t=100"]
    strip.clicked.emit(3)
    assert panel.player.current() == 60


def test_drop_an_image_file(qtbot, panel, tmp_path):
    path = tmp_path / "dropped.png"
    Image.fromarray(np.full((20, 20, 3), 30, np.uint8)).save(path)
    assert drop(panel, path)
    assert panel.clean_image().shape == (32, 32, 3) and int(panel.clean_image().mean()) == 30
    _wait_frames(qtbot, panel)


# ----------------------------------------------------------------------------- image files: the one loader


@pytest.mark.parametrize("door", ["open", "drop"])
def test_hostile_files_show_an_error_and_keep_the_image(qtbot, panel, tmp_path, door):
    import re

    from test_imageio import HOSTILE_KEYS, hostile_files

    before = panel.clean_image().copy()
    statuses = []
    panel.state.status.connect(statuses.append)
    for key, (path, pattern) in hostile_files(tmp_path).items():
        if door == "open":
            assert panel.open_image(path) is False, key
        else:
            drop(panel, path)
        msg = panel.image_error_text()
        assert path.name in msg and re.search(pattern, msg) and "\n" not in msg, (key, msg)
        assert statuses[-1] == msg
        np.testing.assert_array_equal(panel.clean_image(), before)
    assert len(statuses) == len(HOSTILE_KEYS)
    good = tmp_path / "good.png"
    Image.fromarray(np.full((40, 60, 3), 90, np.uint8)).save(good)
    assert panel.open_image(good)
    assert panel.image_error_text() == "" and int(panel.clean_image().mean()) == 90
    _wait_frames(qtbot, panel)


def test_same_pixels_as_the_cli(qtbot, panel, tmp_path):
    """One crop policy: the Forward tab's x_0 is the CLI's x_0 for the same file (a wide image: the
    centre square, not a stretch)."""
    from test_imageio import gradient

    from ddpm_gui import cli
    from ddpm_gui.data.imageio import load_image

    src = tmp_path / "wide.png"
    Image.fromarray(gradient(30, 52)).save(src)
    out = tmp_path / "strip.png"
    assert cli.main(["forward", "--image", str(src), "--image-size", "32", "--frames", "2", "--T", "2",
                     "--scale", "1", "--out", str(out)]) == 0  # fmt: skip
    with Image.open(out) as im:
        cli_x0 = np.asarray(im.convert("RGB"))[1:33, 1:33]
    assert panel.open_image(src)
    np.testing.assert_array_equal(panel.clean_image(), cli_x0)
    np.testing.assert_array_equal(cli_x0, load_image(src, 32))
    _wait_frames(qtbot, panel)
    np.testing.assert_array_equal(panel.frames().iterative[0], cli_x0)


# ----------------------------------------------------------------------------- exports


@pytest.fixture
def quiet(monkeypatch):
    from ddpm_gui.qt.panels import forward_panel

    monkeypatch.setattr(forward_panel, "SHOW_DIALOGS", False)


def _export(qtbot, panel, call, *args):
    with qtbot.waitSignal(panel.exported, timeout=60_000) as done:
        path = call(*args)
        assert path is not None and panel.is_exporting() and panel.messages.busy_bar.isVisible()
        assert not panel.png_btn.isEnabled() and not panel.anim_btn.isEnabled()
    qtbot.waitUntil(lambda: not panel.is_exporting(), timeout=10_000)
    assert done.args == [path] and panel.png_btn.isEnabled() and not panel.messages.busy_bar.isVisible()
    return path


def test_exports_what_it_shows_off_the_gui_thread(qtbot, panel, tmp_path, export_writers, quiet):
    import threading

    tmp_path = tmp_path / "exports"  # (the settings file lives in tmp_path itself)

    from ddpm_gui.qt.exports import export_scale, tile

    f, s = panel.frames(), export_scale(32)
    png = _export(qtbot, panel, panel.save_png_strip, tmp_path / "strip")  # .png added
    assert png == tmp_path / "strip.png"
    picks = [0, 20, 40, 60, 80, 100]
    with Image.open(png) as im:  # the six steps, iterative above, closed form below
        want = tile(np.concatenate([f.iterative[picks], f.closed[picks]]), columns=6, scale=s)
        np.testing.assert_array_equal(np.asarray(im.convert("RGB")), want)
    for suffix in (".gif", ".webp"):
        anim = _export(qtbot, panel, panel.save_animation, tmp_path / f"forward{suffix}")
        with Image.open(anim) as im:  # every step 0..100, both processes side by side
            assert im.n_frames == 101 and im.info["loop"] == 0
            im.seek(100)
            im.load()
            if suffix == ".webp":  # lossless
                last = tile(np.stack([f.iterative[100], f.closed[100]]), columns=2, scale=s)
                np.testing.assert_array_equal(np.asarray(im.convert("RGB")), last)
    assert len(export_writers) == 3 and threading.main_thread() not in export_writers
    assert "Saved" in panel.messages.status_label.text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["forward.gif", "forward.webp", "strip.png"]


def test_a_long_schedule_animates_evenly_spaced_steps(qtbot, panel, tmp_path, quiet):
    from ddpm_gui.qt.exports import MAX_ANIMATION_FRAMES

    panel.schedule_editor.T_spin.setValue(400)
    _wait_frames(qtbot, panel, 400)
    anim = _export(qtbot, panel, panel.save_animation, tmp_path / "long.webp")
    with Image.open(anim) as im:
        assert im.format == "WEBP" and im.n_frames == MAX_ANIMATION_FRAMES


@pytest.mark.parametrize(
    ("export", "name"), [("save_png_strip", "keep.png"), ("save_animation", "keep.webp")]
)
def test_a_failed_export_keeps_the_old_file(qtbot, panel, tmp_path, quiet, export, name):
    (tmp_path / "exports").mkdir()  # (the settings file lives in tmp_path itself)
    msg = export_to_a_full_disk(qtbot, panel, export, tmp_path / "exports" / name)
    assert name in msg and "No space left" in msg, msg
    assert panel.anim_btn.isEnabled()


def test_save_dialogs_start_in_the_last_folder_used(qtbot, panel, tmp_path, monkeypatch, quiet):
    from pathlib import Path

    from ddpm_gui.qt import exports

    asked = []

    def dialog(parent, title, start, filters):
        asked.append(start)
        return str(tmp_path / "out" / "anim"), filters.split(";;")[-1]  # no suffix typed, the last type

    monkeypatch.setattr(exports.QFileDialog, "getSaveFileName", dialog)
    monkeypatch.setattr(exports.Path, "home", classmethod(lambda cls: tmp_path / "home"))
    (tmp_path / "home").mkdir()
    path = panel.save_animation()
    assert path == tmp_path / "out" / "anim.webp"  # the suffix of the filter chosen
    qtbot.waitUntil(lambda: not panel.is_exporting(), timeout=60_000)
    assert path.is_file() and Image.open(path).format == "WEBP"
    assert asked == [str(tmp_path / "home" / "forward.gif")]
    panel.save_png_strip()
    qtbot.waitUntil(lambda: not panel.is_exporting(), timeout=60_000)
    assert Path(asked[1]) == tmp_path / "out" / "forward.png"  # the folder of the last export


# ----------------------------------------------------------------------------- drops that are not images


def test_dropped_folders_and_checkpoints_say_what_to_drop(panel, tmp_path):
    before = panel.clean_image().copy()
    (tmp_path / "photos").mkdir()
    assert drop(panel, tmp_path / "photos") is False
    assert "photos is a folder" in panel.image_error_text()
    assert "open folders in the Data tab" in panel.image_error_text()
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    assert drop(panel, tmp_path / "model.safetensors") is False
    msg = panel.image_error_text()
    assert "model.safetensors" in msg and "needs no model" in msg and "drop an image file" in msg, msg
    np.testing.assert_array_equal(panel.clean_image(), before)
