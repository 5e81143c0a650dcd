"""The 2D tab: points drawn with mouse clicks become the data, a short training shows its loss live, the
reverse process animates, and the arrows of the learned field are drawn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PySide6.QtCore import QPoint, QPointF, Qt

from ddpm_gui.engine.toy2d import diffuse
from ddpm_gui.qt.panels import toy2d_panel
from ddpm_gui.qt.panels.toy2d_panel import FIELD_GRID, TEXTS, Toy2DPanel, sampler_rows

pytestmark = pytest.mark.qt


@pytest.fixture
def panel(show_panel):
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # see test_train_panel.one_torch_thread
    yield show_panel(toy2d_panel, Toy2DPanel)
    torch.set_num_threads(n)


def click_at(qtbot, panel, x: float, y: float) -> None:
    """A left click on the plot where the data point (x, y) is drawn."""
    scene = panel.view.mapViewToScene(QPointF(x, y))
    pos = panel.plot.mapFromScene(scene)
    qtbot.mouseClick(panel.plot.viewport(), Qt.MouseButton.LeftButton, pos=QPoint(pos.x(), pos.y()))


def test_every_sampler_of_the_core_is_offered(panel):
    from ddpm_gui.core.spec import SAMPLERS

    offered = {panel.sampler_combo.itemData(i)[0] for i in range(panel.sampler_combo.count())}
    assert offered == set(SAMPLERS) and len(sampler_rows()) == panel.sampler_combo.count()
    assert len({t for t in TEXTS.values()}) == len(TEXTS)


def test_forward_slider_diffuses_the_cloud(qtbot, panel):
    assert len(panel.points) == panel.n_spin.value()
    panel.player.set_current(0)
    shown = panel.particles.getData()
    assert np.allclose(np.stack(shown, 1), panel.points)  # step 0: the data
    T = panel.sched.T
    panel.player.set_current(T // 2)
    x, y = panel.particles.getData()
    want = diffuse(panel.points, T // 2 - 1, panel.sched, panel._noise)
    assert np.allclose(np.stack([x, y], 1), want, atol=1e-6)
    assert f"t = {T // 2}" in panel.frame_label.text()


def test_draw_train_sample_and_animate(qtbot, panel):
    panel.set_dataset("drawn")
    assert not panel.train_btn.isEnabled()  # nothing drawn yet
    targets = [(0.8, 0.8), (-0.8, -0.8), (0.8, -0.8)]
    for x, y in targets:
        click_at(qtbot, panel, x, y)
    assert panel.drawn.shape == (3, 2)
    assert np.abs(panel.drawn - np.array(targets)).max() < 0.05  # where the clicks were, in data coordinates
    assert panel.train_btn.isEnabled() and len(panel.points) == panel.n_spin.value()
    assert np.linalg.norm(panel.points[:, None] - panel.drawn[None], axis=2).min(1).max() < 0.15

    panel.steps_spin.setValue(300)
    panel.particles_spin.setValue(300)
    with qtbot.waitSignal(panel.sampled, timeout=300_000):
        assert panel.start_training()
        assert panel.is_busy() and panel.stop_btn.isEnabled()
    assert panel.last_step == 300 and panel.loss_plot.n_points == 300  # every step's loss reached the plot
    assert panel.model is not None and "trained at step 300" in panel.train_info.text()
    # the reverse process plays: particles start as noise, the last frame is the samples
    assert panel.reverse_radio.isChecked() and panel.player.count() == panel.sched.T + 1
    qtbot.waitUntil(lambda: panel.player.current() > 2, timeout=30_000)
    panel.player.pause()
    panel.player.set_current(panel.player.count() - 1)
    x, y = panel.particles.getData()
    assert np.array_equal(np.stack([x, y], 1), panel.chain.xs[-1]) and "samples" in panel.frame_label.text()
    assert panel.distance is not None and "W₁" in panel.distance_label.text()
    qtbot.waitUntil(lambda: panel.arrow_count() == FIELD_GRID**2, timeout=30_000)
    qtbot.waitUntil(lambda: not panel.is_busy(), timeout=60_000)  # the last arrows of the animation too


def test_the_arrows_follow_the_step_shown(qtbot, panel):
    panel.steps_spin.setValue(50)
    with qtbot.waitSignal(panel.sampled, timeout=300_000):
        panel.start_training()
    panel.player.pause()
    panel.forward_radio.setChecked(True)
    panel.player.set_current(5)
    qtbot.waitUntil(lambda: panel.arrow_count() == FIELD_GRID**2, timeout=30_000)
    near = panel.arrows.getData()[0].copy()
    with qtbot.waitSignal(panel.fieldShown, timeout=30_000):
        panel.player.set_current(panel.sched.T)
    assert not np.allclose(panel.arrows.getData()[0], near)  # another t, another field
    panel.arrows_check.setChecked(False)
    assert panel.arrow_count() == 0
    qtbot.waitUntil(lambda: not panel.is_busy(), timeout=60_000)


def test_training_nothing_drawn_says_what_to_do(qtbot, panel):
    panel.set_dataset("drawn")
    panel.clear_drawn()
    assert not panel.start_training()
    assert "No points drawn" in panel.messages.error_label.text()
