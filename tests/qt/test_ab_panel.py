"""The A/B tab against the real engine (the demo model): same noise, lockstep, difference, model B, quality."""

from __future__ import annotations

import functools

import numpy as np
import pytest

pytest.importorskip("pytestqt")

from ddpm_gui.engine.ab import difference
from ddpm_gui.engine.demo import demo_path, load_demo_bundle
from ddpm_gui.qt.panels import PANELS
from ddpm_gui.qt.panels import ab_panel as abp
from tests.qt.conftest import drop

pytestmark = pytest.mark.qt
WAIT = 120_000  # generous: the tests share a busy machine


@pytest.fixture(scope="module")
def demo():
    return load_demo_bundle("cpu")


@pytest.fixture
def panel(show_panel, demo):
    p = show_panel(abp, abp.ABPanel)
    p.state.set_bundle(demo, "the demo model", demo=True)
    p.n_spin.setValue(4)
    p.a_form.sampler_form.set_key("ddim")
    p.a_form.sampler_form.steps_spin.setValue(6)
    return p


def wait_idle(qtbot, panel) -> None:
    qtbot.waitUntil(lambda: not panel.is_busy(), timeout=WAIT)
    assert panel.messages.error_label.isHidden(), panel.messages.error_label.text()


def test_the_tab_comes_after_sample():
    classes = [cls for _m, cls, _t in PANELS]
    assert classes.index("ABPanel") == classes.index("SamplePanel") + 1


def test_no_model_no_comparison(show_panel):
    p = show_panel(abp, abp.ABPanel)
    assert not p.compare_btn.isEnabled() and p.compare() is False
    assert not p.score_btn.isEnabled() and p.score() is False


def test_every_sampler_of_the_app_is_offered_on_both_sides(panel):
    from ddpm_gui.qt.widgets import SAMPLERS

    for form in (panel.a_form, panel.b_form):
        combo = form.sampler_form.combo
        assert [combo.itemData(i) for i in range(combo.count())] == [row[0] for row in SAMPLERS]


def test_identical_settings_give_identical_frames(qtbot, panel):
    panel.a_form.class_combo.setCurrentIndex(panel.a_form.class_combo.findData(2))
    panel.copy_a_to_b()
    assert panel.b_form.sampler_form.key() == "ddim" and panel.b_form.class_combo.currentData() == 2
    assert panel.compare() is True
    wait_idle(qtbot, panel)
    result = panel.session.result
    assert result.finished() and panel.player.count() == 6
    for fa, fb in zip(*(r.frames for r in result.runs), strict=True):
        np.testing.assert_array_equal(fa.xt, fb.xt)
    np.testing.assert_array_equal(panel.grids[0].images(), panel.grids[1].images())
    assert not panel.grids[2].images().any() and "identical" in panel.infos[2].text()
    assert "Done: A took" in panel.messages.status_label.text()
    assert "ms/step" in panel.infos[0].text() and "ms/step" in panel.infos[1].text()


def test_different_step_counts_in_lockstep_and_the_difference_grids(qtbot, panel):
    panel.b_form.sampler_form.set_key("ddim")
    panel.b_form.sampler_form.steps_spin.setValue(3)
    assert panel.compare() is True
    wait_idle(qtbot, panel)
    result = panel.session.result
    assert panel.player.count() == 6 and [r.steps() for r in result.runs] == [6, 3]
    assert panel.player.label_text() == "A 6 / 6 · B 3 / 3"
    panel.player.set_current(1)  # A at 2/6 beside B at 1/3
    assert panel.player.label_text() == "A 2 / 6 · B 1 / 3"
    np.testing.assert_array_equal(panel.grids[1].images(), result.runs[1].frames[0].xt)
    want = difference(result.runs[0].frames[1].xt, result.runs[1].frames[0].xt)
    np.testing.assert_array_equal(panel.grids[2].images(), want.images)
    assert "33% of its chain" in panel.frame_label.text() and "lockstep" in panel.frame_label.text()
    panel.show_combo.setCurrentIndex(panel.show_combo.findData("x0"))
    np.testing.assert_array_equal(panel.grids[0].images(), result.runs[0].frames[1].x0)
    panel.diff_combo.setCurrentIndex(panel.diff_combo.findData("final"))
    np.testing.assert_array_equal(panel.grids[2].images(), result.final_difference().images)
    assert panel.grids[2].images().any()


def test_the_gui_thread_never_waits_for_the_chains_and_stop_ends_them(qtbot, panel):
    panel.a_form.sampler_form.set_key("ddpm-beta")  # 100 steps a side
    assert panel.compare() is True
    assert panel.is_running() and not panel.compare_btn.isEnabled() and panel.stop_btn.isEnabled()
    qtbot.waitUntil(lambda: panel.session.result.count() >= 1, timeout=WAIT)
    panel.stop()
    wait_idle(qtbot, panel)
    assert not panel.session.result.finished()
    assert "Stopped" in panel.messages.status_label.text()
    assert panel.compare_btn.isEnabled() and not panel.score_btn.isEnabled()


def test_model_b_from_a_checkpoint_a_drop_and_a_bad_file(qtbot, panel, tmp_path):
    assert panel.bundle_b() is panel.state.bundle  # B samples A's model until told otherwise
    assert panel.load_model_b(demo_path()) is True
    wait_idle(qtbot, panel)
    b = panel.bundle_b()
    assert b is not None and b is not panel.state.bundle and b is panel.session.model_b
    assert "demo.safetensors" in panel.b_form.model_label.text()
    assert panel.compare() is True
    wait_idle(qtbot, panel)
    assert panel.session.result.sides[1].bundle is b

    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"not a checkpoint")
    panel.load_model_b(bad)
    qtbot.waitUntil(lambda: not panel.is_busy(), timeout=WAIT)
    assert not panel.messages.error_label.isHidden()
    assert panel.b_model_combo.currentData() == abp.SAME and panel.b_model_combo.findData(str(bad)) < 0
    assert bad.read_bytes() == b"not a checkpoint"

    panel.b_model_combo.setCurrentIndex(0)
    assert drop(panel, demo_path())
    wait_idle(qtbot, panel)
    assert panel.b_model_combo.currentData() == str(demo_path()) and panel.bundle_b() is not None


def test_a_b_model_of_another_size_is_a_message(qtbot, panel, demo):
    from dataclasses import replace

    panel.session.model_b, panel.session.model_b_source = replace(demo, image_size=32), "other"
    panel.b_model_combo.addItem("other", "other")
    panel.b_model_combo.setCurrentIndex(panel.b_model_combo.count() - 1)
    assert panel.compare() is False
    assert "cannot start from the same noise" in panel.messages.error_label.text()


def test_score_quality_of_both_sides(qtbot, panel, monkeypatch, tmp_path):
    from ddpm_gui.data import load_data
    from ddpm_gui.engine import evaluate

    # a classifier trained in seconds (tests/test_evaluate.py's), cached in the test's folder
    small = evaluate.ClassifierSpec(steps=150, batch_size=64)
    monkeypatch.setattr(
        evaluate, "get_classifier", functools.partial(evaluate.get_classifier, spec=small, cache_dir=tmp_path)
    )
    panel.state.set_data(load_data("builtin:256", image_size=16))
    assert panel.score() is False  # nothing compared yet
    assert panel.compare() is True
    wait_idle(qtbot, panel)
    panel.score_n.setValue(4)
    assert panel.score_btn.isEnabled() and panel.score() is True
    wait_idle(qtbot, panel)
    assert all(q is not None and q.n == 4 for q in panel.session.result.quality)
    assert "Quality:" in panel.infos[0].text() and "Quality:" in panel.infos[1].text()
    assert panel.messages.status_label.text() == "Scored A and B."


def test_the_layout_at_small_windows(qtbot, panel):
    for w, h in ((1280, 800), (1024, 768)):
        panel.resize(w, h)
        qtbot.wait(50)
        assert panel.width() == w  # nothing forces the tab wider than the window
        for grid in panel.grids:
            assert grid.width() >= 200 and grid.height() >= 200
