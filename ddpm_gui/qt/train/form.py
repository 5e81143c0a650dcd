"""The Train tab's settings form: the recipe list, one row per TrainConfig setting (fields.py) on three
pages, and settings files.

Everything that maps the form to a config goes through `fields`, the one name -> widget table: building
the config (`values`), showing one (`set_values`: a run being resumed, a recipe, a settings file, the last
session's settings), matching a recipe, and which rows may be edited (`set_mode`, `lock`). The form's
first values are TrainConfig()'s own defaults.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from PySide6.QtCore import QSettings, Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from ddpm_gui.engine.config import (
    RESUMABLE,
    SETTINGS,
    TrainConfig,
    config_toml,
    parse_config_toml,
    read_config_toml,
)
from ddpm_gui.engine.recipes import RECIPES, matching_recipe
from ddpm_gui.errors import ConfigError, DDPMError
from ddpm_gui.qt.mnemonics import WINDOW_KEYS, assign_mnemonics, mnemonic
from ddpm_gui.qt.style import ERROR_STYLE, INFO_STYLE
from ddpm_gui.qt.train.fields import DEVICE, PAGES, CheckField, ComboField, Field, make_field

CUSTOM = "custom"
MODES = ("new", "running", "paused", "resume")  # what the form is for: see set_mode
SETTINGS_KEY = "train/config"  # the last session's settings (TOML text)
DIR_KEY = "train/settings_dir"  # the folder of the last settings file saved or loaded
FILE_FILTER = "Settings (*.toml);;All files (*)"


class SettingsForm(QWidget):
    changed = Signal(str)  # a setting's name, after its widget changed
    # settings a person asked for (a recipe, a settings file), after they filled the form: locked rows kept
    # their values, and whoever holds a lock (the Data tab's images) may follow
    asked = Signal(dict)

    def __init__(
        self, settings: QSettings, reserved: Iterable[str] = WINDOW_KEYS, parent: QWidget | None = None
    ):
        """`reserved`: the Alt+letter mnemonics that controls shown beside the form already take."""
        super().__init__(parent)
        self.settings = settings
        self._reserved = frozenset(reserved)
        self._keyed: dict[str, list[tuple[QWidget, str]]] = {}  # page -> (label or check box, plain text)
        self.fields: dict[str, Field] = {name: make_field(name) for name in SETTINGS}
        self._locks: dict[str, tuple[object, str]] = {}  # name -> (forced value, why)
        self._mode = "new"
        self._filling = 0  # > 0 while the form fills itself: no "custom" recipe, no user edit
        self._build()
        for name, f in self.fields.items():
            f.connect(lambda n=name: self._on_field_changed(n))
        self.set_values(setting_values(TrainConfig()), force=True)
        self._update_rules()

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        self.recipe_combo = QComboBox()
        for r in RECIPES.values():
            self.recipe_combo.addItem(r.name, r.name)
            self.recipe_combo.setItemData(self.recipe_combo.count() - 1, r.note, Qt.ItemDataRole.ToolTipRole)
        self.recipe_combo.addItem(CUSTOM, CUSTOM)
        self.recipe_combo.setToolTip(
            "Fill in the settings at once:\n"
            + "\n".join(f"{r.name}: {r.note}" for r in RECIPES.values())
            + "\nChanging a setting by hand makes it 'custom'."
        )
        self.recipe_combo.currentIndexChanged.connect(
            lambda *_: self.apply_recipe(self.recipe_combo.currentData())
        )
        self.recipe_note = _note()
        self.load_btn = QPushButton("Load settings…")
        self.load_btn.setToolTip("Fill the form from a settings file (TOML, as Save settings writes)")
        self.load_btn.clicked.connect(lambda: self.load_file())
        self.save_btn = QPushButton("Save settings…")
        self.save_btn.setToolTip(
            "Write the form's settings to a TOML file (ddpm-gui train --config reads it)"
        )
        self.save_btn.clicked.connect(lambda: self.save_file())

        top = QFormLayout()
        self.recipe_label = QLabel("Recipe:")
        self.recipe_label.setBuddy(self.recipe_combo)
        top.addRow(self.recipe_label, self.recipe_combo)
        top.addRow(self.recipe_note)
        files = QHBoxLayout()
        files.addWidget(self.load_btn)
        files.addWidget(self.save_btn)
        top.addRow(files)
        self.file_label = _note()  # what the last settings file did (saved, loaded, or why not)
        self.file_label.hide()
        top.addRow(self.file_label)

        self.pages = QTabWidget()
        self.page_forms: dict[str, QFormLayout] = {}
        for title in PAGES:
            page = QWidget()
            form = QFormLayout(page)
            form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
            form.setVerticalSpacing(4)
            self.page_forms[title] = form
            self._keyed[title] = []
            self.pages.addTab(page, title)
        for f in self.fields.values():
            page = f.row.page if f.row.page in self.page_forms else PAGES[1]
            if isinstance(f, CheckField):
                self.page_forms[page].addRow("", f.widget)
                self._keyed[page].append((f.widget, f.label))
            else:
                self._add_labelled(page, f"{f.label}:", f.widget, f.widget)

        self.config_error = QLabel()
        self.config_error.setWordWrap(True)
        self.config_error.setStyleSheet(ERROR_STYLE)
        self.config_error.hide()
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(top)
        lay.addWidget(self.pages)
        lay.addWidget(self.config_error)
        self._assign_keys()

    def _add_labelled(self, page: str, text: str, field: QWidget | QHBoxLayout, buddy: QWidget) -> None:
        label = QLabel(text)
        label.setBuddy(buddy)
        self.page_forms[page].addRow(label, field)
        self._keyed[page].append((label, text))

    def _assign_keys(self) -> None:
        """Alt+letter mnemonics for the rows (generated, so a new setting gets one too): distinct on each
        page and apart from `reserved`; then the recipe and settings-file controls, shown beside every
        page, get letters no page uses, where any are left (the rows come first)."""
        used = set(self._reserved)
        for items in self._keyed.values():
            texts = assign_mnemonics([text for _w, text in items], self._reserved)
            for (w, _text), text in zip(items, texts, strict=True):
                w.setText(text)
                used.add(mnemonic(text))
        shared = (
            (self.recipe_label, "Recipe:"),
            (self.load_btn, "Load settings…"),
            (self.save_btn, "Save settings…"),
        )
        for (w, _text), text in zip(shared, assign_mnemonics([t for _w, t in shared], used), strict=True):
            w.setText(text)

    def widget(self, name: str) -> QWidget:
        return self.fields[name].widget

    def add_note(self, name: str) -> QLabel:
        """An information line under setting `name`'s row."""
        return self.add_below(name, _note())

    def add_below(self, name: str, widget: QWidget) -> QWidget:
        """`widget` on a row of its own under setting `name`'s row (under its notes added before)."""
        w = self.widget(name)
        form = self.page_forms[next(t for t, f in self.page_forms.items() if f.indexOf(w) >= 0)]
        row, _role = form.getWidgetPosition(w)
        form.insertRow(row + 1, "", widget)
        return widget

    def add_row(self, page: str, label: str, field: QWidget | QHBoxLayout, buddy: QWidget) -> None:
        """A row that is not a TrainConfig setting (the run folder); `buddy` takes the focus on its Alt+key."""
        self._add_labelled(page, label, field, buddy)
        self._assign_keys()

    def show_error(self, message: str) -> None:
        self.config_error.setText(message)
        self.config_error.setVisible(bool(message))

    # ------------------------------------------------------------------ values
    def values(self) -> dict:
        """Every setting's value (a ConfigError names a field whose text is not a value)."""
        return {name: f.value() for name, f in self.fields.items()}

    def config(self) -> TrainConfig:
        """The validated TrainConfig the form shows; a ConfigError says what to change."""
        try:
            return TrainConfig(**self.values()).validate()
        except TypeError as exc:  # no widget of ours gives a value TrainConfig cannot hold
            raise ConfigError(f"The settings cannot be used ({exc}).") from None

    def set_values(self, values: dict, force: bool = False) -> None:
        """Show these settings (a partial: other rows keep theirs). Rows that cannot be edited now (see
        set_mode) and locked rows keep their values, unless `force` (a run's own config)."""
        self._filling += 1
        try:
            for name, v in values.items():
                if name not in self.fields:
                    continue
                if not force and (not self._editable(name) or name in self._locks):
                    continue
                self.fields[name].set_value(v)
        finally:
            self._filling -= 1
        self._show_recipe(self._matching_recipe())

    def set_items(self, name: str, items) -> None:
        """New entries for a drop-down setting (the devices found)."""
        f = self.fields[name]
        assert isinstance(f, ComboField)
        f.set_items(items)
        self._update_rules()

    # ------------------------------------------------------------------ what may be edited
    def set_mode(self, mode: str) -> None:
        """ "new": every row may be edited; "running": none; "paused" (a paused run) and "resume" (a run
        folder about to be continued): only the settings a resumed run may change (RESUMABLE)."""
        assert mode in MODES, mode
        self._mode = mode
        self._apply_enabled()

    @property
    def mode(self) -> str:
        return self._mode

    def lock(self, name: str, value, why: str) -> None:
        """Hold setting `name` at `value`, not editable, with `why` in its tooltip (data of a given size, a
        device without bf16...). Applies to a run's fixed settings only while a new run is set up."""
        self._locks[name] = (value, why)
        self._apply_enabled()

    def unlock(self, name: str) -> None:
        if self._locks.pop(name, None) is not None:
            self._apply_enabled()

    def is_locked(self, name: str) -> bool:
        return name in self._locks

    def _editable(self, name: str) -> bool:
        return self._mode == "new" or (self._mode in ("paused", "resume") and name in RESUMABLE)

    def _apply_enabled(self) -> None:
        self._filling += 1
        try:
            for name, f in self.fields.items():
                lock = self._locks.get(name)
                if lock is not None and (self._mode == "new" or name in RESUMABLE):
                    f.set_value(lock[0])
                f.widget.setEnabled(self._editable(name) and lock is None)
                f.set_note(lock[1] if lock is not None else "")
        finally:
            self._filling -= 1
        self.recipe_combo.setEnabled(self._mode == "new")
        self.load_btn.setEnabled(self._mode != "running")

    def _on_field_changed(self, name: str) -> None:
        if name in ("schedule", "device"):
            self._update_rules()
        if not self._filling:
            self._show_recipe(self._matching_recipe())
        self.changed.emit(name)

    def device_is_cuda(self) -> bool:
        combo = self.widget("device")
        value = combo.currentData() or "auto"
        return value.startswith("cuda") or (value == "auto" and "cuda" in combo.currentText())

    def _update_rules(self) -> None:
        """Settings that follow others: a zero-terminal-SNR schedule trains with v-prediction (the noise
        cannot be learned where x_t is pure noise); mixed precision is for CUDA only."""
        sched = self.fields["schedule"].value()
        if sched is not None and sched.rescale_zero_snr:
            self.lock("prediction", "v", "A zero-terminal-SNR schedule trains with v-prediction.")
        else:
            self.unlock("prediction")
        if self.device_is_cuda():
            self.unlock("amp")
        else:
            self.lock(
                "amp",
                False,
                "Mixed precision (bf16 or fp16, chosen by the GPU) runs on CUDA GPUs only: on a CPU bf16 is about 20x slower.",
            )

    # ------------------------------------------------------------------ recipes
    def apply_recipe(self, name: str) -> None:
        """Fill the form with recipe `name` (ddpm_gui.engine.recipes); "custom" changes nothing."""
        if name in RECIPES:
            self.set_values(RECIPES[name].changes)
        self._show_recipe(name if name in RECIPES else CUSTOM)
        if name in RECIPES:
            self.asked.emit(dict(RECIPES[name].changes))

    def _matching_recipe(self) -> str:
        try:
            cfg = TrainConfig(**self.values())
        except (DDPMError, TypeError):
            return CUSTOM
        return matching_recipe(cfg) or CUSTOM

    def _show_recipe(self, name: str) -> None:
        self.recipe_combo.blockSignals(True)
        self.recipe_combo.setCurrentIndex(max(0, self.recipe_combo.findData(name)))
        self.recipe_combo.blockSignals(False)
        self.recipe_note.setText(RECIPES[name].note if name in RECIPES else "Your own settings.")

    # ------------------------------------------------------------------ the last session's settings
    def restore(self) -> None:
        """The settings of the last session (saved by `store`); an unreadable entry is ignored."""
        text = self.settings.value(SETTINGS_KEY)
        if isinstance(text, str) and text:
            try:
                self.set_values(parse_config_toml(text, "the saved settings"))
            except DDPMError:
                pass

    def store(self) -> None:
        try:
            self.settings.setValue(SETTINGS_KEY, config_toml(TrainConfig(**self.values())))
        except (DDPMError, TypeError):
            pass  # a half-typed number: keep the last good settings

    # ------------------------------------------------------------------ settings files
    def _last_dir(self) -> str:
        d = self.settings.value(DIR_KEY)
        return str(d) if isinstance(d, str) and Path(d).is_dir() else str(Path.home())

    def save_file(self, path: str | Path | None = None) -> bool:
        """Write the form's settings to a TOML file (a dialog asks where when `path` is None)."""
        if path is None:
            path, _ = QFileDialog.getSaveFileName(
                self, "Save settings", str(Path(self._last_dir()) / "settings.toml"), FILE_FILTER
            )
            if not path:
                return False
        path = Path(path).expanduser()
        from ddpm_gui.engine.fileio import atomic_write_bytes

        try:
            text = config_toml(
                TrainConfig(**self.values()),
                comment="DDPM Studio training settings (Load settings… in the Train tab, or "
                "ddpm-gui train --config FILE)",
            )
            atomic_write_bytes(path, text.encode("utf-8"))
        except DDPMError as exc:
            return self._file_done(f"Settings not saved: {exc}", ok=False)
        self.settings.setValue(DIR_KEY, str(path.parent))
        return self._file_done(f"Settings saved to {path}")

    def load_file(self, path: str | Path | None = None) -> bool:
        """Fill the form from a TOML settings file; a bad file changes nothing and says why."""
        if path is None:
            path, _ = QFileDialog.getOpenFileName(self, "Load settings", self._last_dir(), FILE_FILTER)
            if not path:
                return False
        path = Path(path).expanduser()
        try:
            values = read_config_toml(path)
        except DDPMError as exc:
            return self._file_done(f"Settings not loaded: {exc}", ok=False)
        self.settings.setValue(DIR_KEY, str(path.parent))
        self.set_values(values)
        self.asked.emit(values)
        only = "" if self._mode == "new" else " (only the settings a resumed run may change)"
        return self._file_done(f"Settings loaded from {path}{only}")

    def _file_done(self, message: str, ok: bool = True) -> bool:
        self.file_label.setText(message)
        self.file_label.setStyleSheet(INFO_STYLE if ok else ERROR_STYLE)
        self.file_label.show()
        return ok


def setting_values(cfg: TrainConfig) -> dict:
    """A config's settings by name, with their own types (the schedule a ScheduleConfig)."""
    return {name: getattr(cfg, name) for name in SETTINGS}


def _note() -> QLabel:
    label = QLabel()
    label.setWordWrap(True)
    label.setStyleSheet(INFO_STYLE)
    return label


def gpus_row(form: SettingsForm, count: int | None = None):
    """A "GPUs" row on the device page when more than one CUDA device is present: 2 or more trains one run
    on that many GPUs at once (torchrun, one process per GPU). None when there is no choice to offer."""
    from PySide6.QtWidgets import QSpinBox

    from ddpm_gui.qt.train.multi_gpu import gpus_offered

    n = gpus_offered(count)
    if not n:
        return None
    spin = QSpinBox()
    spin.setRange(1, n)
    spin.setToolTip(
        f"Train one run on this many of the {n} GPUs at once (DistributedDataParallel, one process per GPU, "
        "started with torchrun). The batch size is the global one; pausing is not offered."
    )
    form.add_row(DEVICE, "GPUs:", spin, spin)
    return spin
