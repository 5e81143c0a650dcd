"""The Data tab takes a CIFAR archive (as a file) or its extracted folder, and loads it offline."""

from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtWidgets import QFileDialog

from ddpm_gui.qt.panels.data_panel import FILE, FOLDER, DataPanel
from ddpm_gui.qt.panels.data_source import SourceForm
from tests.test_cifar import C10_NAMES, make, truth

pytestmark = pytest.mark.qt


@pytest.fixture
def form(qtbot):
    f = SourceForm()
    qtbot.addWidget(f)
    return f


def test_the_file_picker_offers_archives_and_the_spec_sets_the_right_kind(tmp_path, form, monkeypatch):
    archive = make(tmp_path, "c10py", packed=True)
    asked = {}

    def pick(parent, caption, start, filters):
        asked["filters"] = filters
        return str(archive), filters.split(";;")[0]

    monkeypatch.setattr(QFileDialog, "getOpenFileName", pick)
    form.set_kind(FILE)
    form.browse()
    first = asked["filters"].split(";;")[0]  # the filter the dialog opens with
    assert "*.tar.gz" in first and "*.tgz" in first and "*.parquet" in first
    assert form.spec() == str(archive)
    form.set_spec(f"{archive}:test")
    assert form.kind() == FILE and form.spec() == f"{archive}:test"
    (tmp_path / "x").mkdir()
    folder = make(tmp_path / "x", "c100bin", packed=False)
    form.set_spec(f"{folder}:coarse")
    assert form.kind() == FOLDER and form.spec() == f"{folder}:coarse"


def test_a_cifar_archive_needs_no_datasets_package(tmp_path, form, monkeypatch):
    import ddpm_gui.data as api

    monkeypatch.setattr(api, "datasets_available", lambda: False)
    form.set_spec(str(make(tmp_path, "c10bin", packed=True)))
    assert form.kind() == FILE and form.needs_text() == ""
    form.set_spec(str(tmp_path / "train.parquet"))
    assert "datasets" in form.needs_text()


def test_the_data_tab_loads_the_test_split_of_an_archive(qtbot, state, tmp_path):
    archive = make(tmp_path, "c10bin", packed=True)
    panel = DataPanel(state)
    qtbot.addWidget(panel, before_close_func=lambda w: w.shutdown(10000))
    panel.show()
    with qtbot.waitSignal(state.dataChanged, timeout=60000):
        assert panel.load(f"{archive}:test")
    qtbot.waitUntil(lambda: not panel.is_busy(), timeout=60000)
    d = state.data
    assert panel.source_kind() == FILE and d.name == "CIFAR-10 (test)"
    np.testing.assert_array_equal(d.images, truth("c10bin").images["test"])
    assert d.class_names == C10_NAMES
    np.testing.assert_array_equal(panel.preview.grid.images(), d.images[: panel.preview.grid.count()])
    assert "airplane" in panel.info_label.text() and panel.error_text() == ""
