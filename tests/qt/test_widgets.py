"""The widgets the Sample, Forward and Denoise tabs share: the frame player, the sampler form, the drop
helpers, and the animation writer behind their exports."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import Qt, QUrl
from PySide6.QtWidgets import QApplication

from ddpm_gui.qt.player import FramePlayer
from tests.qt.conftest import file_mime

pytestmark = pytest.mark.qt


# ----------------------------------------------------------------------------- the frame player


def test_player_steps_plays_and_follows_live(qtbot):
    p = FramePlayer(fps=60)
    qtbot.addWidget(p)
    seen = []
    p.frameChanged.connect(seen.append)
    p.set_expected(5)
    for i in range(3):
        p.append_frame(f"f{i}")
    assert p.count() == 3 and p.current() == 2  # live: follows the newest
    assert p.frame() == "f2"
    p.step(-1)
    assert p.current() == 1
    p.append_frame("f3")
    assert p.current() == 1  # not at the end: stays where the user is
    p.set_current(0)
    p.play()
    qtbot.waitUntil(lambda: p.current() == 3, timeout=30_000)
    p.append_frame("f4")
    qtbot.waitUntil(lambda: p.current() == 4, timeout=30_000)
    p.pause()
    assert not p.is_playing()
    assert "4 / 4" in p.label_text()
    assert seen[:2] == [0, 1] or 0 in seen


def test_player_keyboard(qtbot):
    p = FramePlayer()
    qtbot.addWidget(p)
    p.show()
    qtbot.waitExposed(p)
    p.set_count(10)
    p.set_current(5)
    p.activateWindow()
    qtbot.waitUntil(lambda: QApplication.activeWindow() is p, timeout=30_000)
    p._slider.setFocus()
    qtbot.keyClick(p._slider, Qt.Key.Key_Left)
    assert p.current() == 4
    qtbot.keyClick(p._slider, Qt.Key.Key_Right)
    assert p.current() == 5
    qtbot.keyClick(p._slider, Qt.Key.Key_Space)
    assert p.is_playing()
    qtbot.keyClick(p._slider, Qt.Key.Key_Space)
    assert not p.is_playing()
    p.clear()
    assert p.count() == 0 and p.current() == -1


def test_the_scrub_slider_keeps_its_length_as_the_label_changes(qtbot):
    """The label beside the slider is as wide as its widest text from the start: short and long labels,
    and no frames at all, leave the slider exactly as long."""
    p = FramePlayer()
    qtbot.addWidget(p)
    p.resize(700, 40)
    p.show()
    qtbot.waitExposed(p)
    texts = ["t = 1", "step 1000 / 1000 · t = 999 · final", "step 10 / 1000 · t = 90"]
    p.set_label_func(lambda i, n: texts[i % 3], widest=texts[1])
    widths = set()
    for count, current in ((0, 0), (3, 0), (3, 1), (3, 2)):
        p.set_count(count)
        p.set_current(current)
        QApplication.processEvents()
        widths.add((p._slider.width(), p._label.width()))
    assert p.label_text() == texts[2]
    assert len(widths) == 1, widths
    # the widest text fits
    assert p._label.fontMetrics().horizontalAdvance(texts[1]) <= p._label.width()


# ----------------------------------------------------------------------------- the sampler form


def test_sampler_form(qtbot):
    from ddpm_gui.qt.widgets import SamplerForm

    f = SamplerForm(default="ddpm-posterior", ddim_steps=10)
    qtbot.addWidget(f)
    assert f.kwargs()["variance"] == "posterior" and not f.steps_spin.isEnabled()
    assert f.chain_length(99) == 100  # DDPM: every timestep from 99 down to 0
    f.set_key("ddim")
    assert f.steps_spin.isEnabled() and f.kwargs()["sampler"] == "ddim"
    assert f.chain_length(99) == 10
    f.set_T(5)
    assert f.steps_spin.maximum() == 5 and f.steps_spin.value() == 5


# ----------------------------------------------------------------------------- drops


def test_drop_kinds(tmp_path, monkeypatch):
    from ddpm_gui.engine import runfolder
    from ddpm_gui.qt.widgets import drop_kind, dropped_paths

    (tmp_path / "photos").mkdir()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / runfolder.MARKER).write_text('{"format": "ddpm-studio-run"}')
    assert drop_kind(tmp_path / "photos") == "folder"
    assert drop_kind(tmp_path / "run") == "run"
    assert drop_kind(tmp_path / "model.safetensors") == "checkpoint"
    assert drop_kind(tmp_path / "weights.PT") == "checkpoint"
    assert drop_kind(tmp_path / "cat.jpg") == "image"
    # a diffusers pipeline folder is a model, opened like a checkpoint
    (tmp_path / "pipe" / "unet").mkdir(parents=True)
    (tmp_path / "pipe" / "model_index.json").write_text('{"_class_name": "DDPMPipeline"}')
    assert drop_kind(tmp_path / "pipe") == "checkpoint"

    class Ev:
        def mimeData(self):
            m = file_mime(tmp_path / "a.png", tmp_path / "photos")
            m.setUrls([*m.urls(), QUrl("https://example.com/b.png")])  # not a local file: left out
            return m

    assert dropped_paths(Ev()) == [tmp_path / "a.png", tmp_path / "photos"]


# ----------------------------------------------------------------------------- the animation writer


def test_animations_are_gif_or_lossless_webp_by_suffix(tmp_path):
    from ddpm_gui.engine.images import ANIMATION_FORMATS, animation_bytes, save_animation
    from ddpm_gui.errors import ConfigError
    from ddpm_gui.qt.exports import animation_picks

    frames = [np.full((6, 9, 3), 30 * i, np.uint8) for i in range(5)]
    frames[2][0, 0] = (1, 2, 3)
    for suffix, fmt in ANIMATION_FORMATS.items():
        save_animation(tmp_path / f"a{suffix}", frames, 40, 700)
        with Image.open(tmp_path / f"a{suffix}") as im:
            assert im.format == fmt and im.n_frames == 5 and im.info["loop"] == 0
            im.seek(2)
            im.load()
            if fmt == "WEBP":  # lossless: every pixel as given
                np.testing.assert_array_equal(np.asarray(im.convert("RGB")), frames[2])
            im.seek(4)
            im.load()
            assert im.info["duration"] == 700
    with pytest.raises(ConfigError, match=r"a\.png: an animation is saved as \.gif or \.webp"):
        save_animation(tmp_path / "a.png", frames)
    assert not (tmp_path / "a.png").exists()
    with pytest.raises(ConfigError, match="at most 16383 pixels.*save it as a GIF"):
        animation_bytes([np.zeros((2, 16400, 3), np.uint8)] * 2, fmt="WEBP")
    with Image.open(io.BytesIO(animation_bytes(frames, fmt="GIF"))) as im:
        assert im.n_frames == 5
    assert list(animation_picks(5, 10)) == [0, 1, 2, 3, 4]
    picks = animation_picks(1001, 300)
    assert len(picks) == 300 and picks[0] == 0 and picks[-1] == 1000 and np.all(np.diff(picks) > 0)
