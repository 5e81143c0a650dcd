"""The Qt binding must not leak references to None/True/False (PySide6 6.12.0 on Python 3.11 does, and the
app then aborts with 'none_dealloc' after a few thousand Qt calls: pyproject.toml excludes it)."""

import sys

from PySide6.QtWidgets import QCheckBox, QLabel


def test_qt_calls_keep_none_and_bools_alive(qtbot):
    label = QLabel()
    box = QCheckBox()
    qtbot.addWidget(label)
    qtbot.addWidget(box)
    before = sys.getrefcount(None), sys.getrefcount(True), sys.getrefcount(False)
    for _ in range(2000):
        label.setText("x")  # returns None
        box.isChecked()  # returns a bool
    after = sys.getrefcount(None), sys.getrefcount(True), sys.getrefcount(False)
    # a healthy binding leaves the counts where they were (give or take a few); the broken one drops 2000
    for b, a in zip(before, after, strict=True):
        assert a > b - 100, (
            f"Qt calls leaked references: {before} -> {after}; install PySide6-Essentials<6.12"
        )
