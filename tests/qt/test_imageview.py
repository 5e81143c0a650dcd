"""ImageGrid: the widget every panel shows images with (the frame player: test_widgets.py)."""

from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtCore import QPointF, Qt

from ddpm_gui.qt.imageview import ImageGrid, as_hw3_batch
from tests.qt.conftest import grab_variance

pytestmark = pytest.mark.qt


def _images(n: int, size: int = 16) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_grid_mosaic_holds_every_image(qtbot):
    grid = ImageGrid()
    qtbot.addWidget(grid)
    grid.resize(400, 300)
    grid.show()
    imgs = _images(7)
    grid.set_images(imgs, [f"c{i}" for i in range(7)], columns=3)
    assert grid.count() == 7 and grid.columns() == 3
    m = grid.mosaic()
    cols, rows, px, py = grid._layout
    for i in range(7):
        r, c = divmod(i, 3)
        np.testing.assert_array_equal(m[r * py : r * py + 16, c * px : c * px + 16], imgs[i])
    assert grab_variance(grid) > 0
    # clicking maps back to the image index
    assert grid.index_at(3, py * 2 + 3) == 6  # row 2, column 0
    assert grid.index_at(px + 3, py * 2 + 3) == -1  # past the last image
    assert grid.index_at(16 + 1, 3) == -1  # in the gap between two images


def test_grid_click_signal(qtbot):
    grid = ImageGrid(columns=2)
    qtbot.addWidget(grid)
    grid.resize(200, 100)
    grid.show()
    qtbot.waitExposed(grid)
    grid.set_images(_images(2))
    vb = grid.view_box()
    # the centre of image 1 in view coordinates -> widget pixels
    scene_pt = vb.mapViewToScene(QPointF(16 + ImageGrid.PAD + 8, 8))
    view_pt = grid._view_widget.mapFromScene(scene_pt)
    with qtbot.waitSignal(grid.clicked, timeout=30_000) as blocker:
        qtbot.mouseClick(grid._view_widget.viewport(), Qt.MouseButton.LeftButton, pos=view_pt)
    assert blocker.args == [1]


def test_grid_auto_columns_and_clear(qtbot):
    grid = ImageGrid()
    qtbot.addWidget(grid)
    grid.resize(800, 200)
    grid.show()
    grid.set_images(_images(8))
    assert grid.columns() >= 4  # a wide widget gets a wide grid
    grid.clear()
    assert grid.count() == 0


def test_as_hw3_batch_shapes():
    assert as_hw3_batch(np.zeros((8, 8), np.uint8)).shape == (1, 8, 8, 3)
    assert as_hw3_batch(np.zeros((8, 8, 3), np.uint8)).shape == (1, 8, 8, 3)
    assert as_hw3_batch(np.zeros((2, 8, 8), np.uint8)).shape == (2, 8, 8, 3)
    assert as_hw3_batch(np.zeros((2, 8, 8, 1), np.uint8)).shape == (2, 8, 8, 3)
    with pytest.raises(ValueError):
        ImageGrid().set_images(np.zeros((2, 8, 8, 3), np.uint8), ["one"])
