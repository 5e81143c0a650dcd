"""The Train tab's settings table: one widget per TrainConfig setting, generated from SETTINGS.

The widget kind follows the setting: a check box for true/false, a spin box for whole numbers (its range
from the Setting's lo/hi), a line edit for other numbers and for text, a drop-down list for a setting
with choices or with items in ROWS. The tooltip is the Setting's help. `ROWS` holds what the Setting
cannot say (which page of the form, the items of a list, a suffix); a setting without a row gets a plain
widget on the default page, so a new TrainConfig field shows up here by itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QCheckBox, QComboBox, QLineEdit, QSpinBox, QWidget

from ddpm_gui.engine.config import LR_SCHEDULES, SETTING_TYPES, SETTINGS, Setting, TrainConfig
from ddpm_gui.errors import ConfigError

INT_MAX = 2**31 - 1  # a QSpinBox holds a C int
OPTIONAL = frozenset(f.name for f in fields(TrainConfig) if "None" in str(f.type))  # empty = None

Item = tuple[str, object, str, str]  # (key, value, text, tooltip) of a drop-down list


@dataclass(frozen=True)
class Row:
    """How one setting is shown, where its Setting alone does not say."""

    page: str = "Training"  # the page of the form
    items: Callable[[], tuple[Item, ...]] | None = None  # a drop-down list's entries
    suffix: str = ""  # after a spin box's number
    step: int = 1  # a spin box's arrow step
    special: str = ""  # what a spin box shows at its lowest value (what that value means)


def _preset_items() -> tuple[Item, ...]:
    from ddpm_gui.models.presets import PRESET_NOTES, PRESETS

    return tuple((name, name, name, PRESET_NOTES.get(name, "")) for name in PRESETS)


def _schedule_items() -> tuple[Item, ...]:
    from ddpm_gui.core.spec import SCHEDULE_PRESETS

    return tuple((name, sc, name, schedule_text(sc)) for name, sc in SCHEDULE_PRESETS.items())


def schedule_text(sc) -> str:
    text = f"{sc.kind}, T={sc.T}" + (
        f", beta {sc.beta_start:g}..{sc.beta_end:g}" if sc.kind != "cosine" else ""
    )
    if sc.rescale_zero_snr:
        text += ", rescaled to zero terminal SNR (trains with v-prediction)"
    return text


def _prediction_items() -> tuple[Item, ...]:
    return (
        (
            "eps",
            "eps",
            "ε (noise, the tutorial)",
            "the tutorial's: the UNet predicts the noise that was added",
        ),
        ("v", "v", "v (velocity)", "v = sqrt(ᾱ)·ε − sqrt(1−ᾱ)·x0: well-posed where x_t is almost pure noise"),
    )


# what each learning-rate schedule is called in the list, and its tooltip (the choices: LR_SCHEDULES)
_LR_SCHEDULE_TEXT = {
    "constant": ("none (constant)", "the tutorial's: the learning rate stays at its peak after the warm-up"),
    "cosine": (
        "cosine",
        "after the warm-up the learning rate falls along a half cosine to 0 at the last step",
    ),
}


def _lr_schedule_items() -> tuple[Item, ...]:
    return tuple((k, k, *_LR_SCHEDULE_TEXT.get(k, (k, ""))) for k in LR_SCHEDULES)


PAGES = ("Data and model", "Training", "Device, validation", "Run output")
DATA, TRAINING, DEVICE, OUTPUT = PAGES

ROWS: dict[str, Row] = {
    "data": Row(DATA),
    "image_size": Row(DATA, suffix=" px", step=8),
    "data_limit": Row(DATA, suffix=" images", special="all"),
    "preset": Row(DATA, items=_preset_items),
    "conditional": Row(DATA),
    "init_from": Row(DATA),
    "cond_drop": Row(DATA),
    "schedule": Row(DATA, items=_schedule_items),
    "prediction": Row(DATA, items=_prediction_items),
    "lr_schedule": Row(TRAINING, items=_lr_schedule_items),
    "steps": Row(step=100),
    "device": Row(
        DEVICE, items=lambda: (("auto", "auto", "auto (detecting…)", ""), ("cpu", "cpu", "cpu", ""))
    ),
    "threads": Row(DEVICE, special="auto"),
    "amp": Row(DEVICE),
    "accumulate": Row(DEVICE, suffix=" micro-batches"),
    "compile_model": Row(DEVICE),
    "val_every": Row(DEVICE, suffix=" steps", special="off"),
    "val_size": Row(DEVICE, suffix=" images"),
    "tensorboard": Row(OUTPUT),
    "log_every": Row(OUTPUT, suffix=" steps"),
    "preview_every": Row(OUTPUT, suffix=" steps", special="off"),
    "preview_n": Row(OUTPUT, suffix=" images"),
    "preview_steps": Row(OUTPUT, special="full chain"),
    "checkpoint_every": Row(OUTPUT, suffix=" steps", special="off"),
    "checkpoint_minutes": Row(OUTPUT),
    "keep_checkpoints": Row(OUTPUT),
}


def number_text(v: float) -> str:
    """A float as short as it reads back exactly (3e-4 as 0.0003, 5.0 as 5)."""
    text = repr(float(v))
    return text[:-2] if text.endswith(".0") else text


class Field:
    """One setting's widget: `value()` (a ConfigError for text that is not a value), `set_value(v)`,
    `connect(fn)` to hear of edits."""

    def __init__(self, name: str, widget: QWidget):
        self.name = name
        self.setting: Setting = SETTINGS[name]
        self.row = ROWS.get(name, Row())
        self.widget = widget
        self.widget.setObjectName(f"setting_{name}")
        self.set_note("")

    @property
    def label(self) -> str:
        return self.setting.label

    def set_note(self, note: str) -> None:
        """The tooltip: the help line, the CLI option, and why the field is locked (if it is)."""
        tip = f"{self.setting.help} ({self.setting.flag})"
        self.widget.setToolTip(tip + (f"\n{note}" if note else ""))

    def value(self):
        raise NotImplementedError

    def set_value(self, v) -> None:
        raise NotImplementedError

    def connect(self, fn: Callable[[], None]) -> None:
        raise NotImplementedError


class CheckField(Field):
    def __init__(self, name: str):
        super().__init__(name, QCheckBox(SETTINGS[name].label))

    def value(self) -> bool:
        return self.widget.isChecked()

    def set_value(self, v) -> None:
        self.widget.setChecked(bool(v))

    def connect(self, fn) -> None:
        self.widget.toggled.connect(lambda *_: fn())


class SpinField(Field):
    """A whole number; for a setting that may be None, the lowest position means None."""

    def __init__(self, name: str):
        s = SETTINGS[name]
        spin = QSpinBox()
        lo = int(s.lo) if s.lo is not None else 0
        self.none_at = lo - 1 if name in OPTIONAL else None
        spin.setRange(self.none_at if self.none_at is not None else lo, min(int(s.hi or INT_MAX), INT_MAX))
        row = ROWS.get(name, Row())
        spin.setSingleStep(row.step)
        spin.setSuffix(row.suffix)
        if row.special:
            spin.setSpecialValueText(row.special)
        super().__init__(name, spin)

    def value(self) -> int | None:
        v = self.widget.value()
        return None if v == self.none_at else v

    def set_value(self, v) -> None:
        self.widget.setValue(self.none_at if v is None and self.none_at is not None else int(v))

    def connect(self, fn) -> None:
        self.widget.valueChanged.connect(lambda *_: fn())


class TextField(Field):
    def __init__(self, name: str):
        super().__init__(name, QLineEdit())

    def value(self) -> str:
        return self.widget.text().strip()

    def set_value(self, v) -> None:
        if self.widget.text() != str(v):
            self.widget.setText(str(v))

    def connect(self, fn) -> None:
        self.widget.textChanged.connect(lambda *_: fn())


class FloatField(TextField):
    """A number typed as text (ranges like 1e-8..1 suit no spin box); checked when the config is built."""

    def value(self) -> float:
        text = self.widget.text().strip()
        try:
            v = float(text)
        except ValueError:
            v = math.nan
        if not math.isfinite(v):
            raise ConfigError(f"{self.label} ({self.setting.flag}) must be a number, got {text!r}.")
        return v

    def set_value(self, v) -> None:
        try:
            if float(self.widget.text()) == float(v):
                return  # keep what was typed ("1e-3" stays "1e-3")
        except ValueError:
            pass
        self.widget.setText(number_text(v))


class ComboField(Field):
    """A drop-down list: each entry's item data is its key (a string), its value can be any object."""

    def __init__(self, name: str, items: tuple[Item, ...]):
        super().__init__(name, QComboBox())
        self._values: dict[str, object] = {}
        self.set_items(items)

    def set_items(self, items: tuple[Item, ...]) -> None:
        """Replace the entries, keeping the current one when it is still there (else the first)."""
        current = self.widget.currentData()
        self.widget.blockSignals(True)
        self.widget.clear()
        self._values.clear()
        for key, value, text, tip in items:
            self._add(key, value, text, tip)
        i = self.widget.findData(current)
        self.widget.setCurrentIndex(max(i, 0))
        self.widget.blockSignals(False)
        if self.widget.currentData() != current:
            self.widget.currentIndexChanged.emit(self.widget.currentIndex())

    def _add(self, key: str, value, text: str, tip: str = "") -> None:
        self._values[key] = value
        self.widget.addItem(text, key)
        if tip:
            self.widget.setItemData(self.widget.count() - 1, tip, Qt.ItemDataRole.ToolTipRole)

    def value(self):
        return self._values.get(self.widget.currentData())

    def set_value(self, v) -> None:
        key = next((k for k, val in self._values.items() if val == v), None)
        if key is None:  # a value the list does not offer (a run's own schedule, a device not seen here)
            key = f"custom:{len(self._values)}" if not isinstance(v, str) else v
            self._add(key, v, v if isinstance(v, str) else f"custom ({schedule_text(v)})")
        self.widget.setCurrentIndex(self.widget.findData(key))

    def connect(self, fn) -> None:
        self.widget.currentIndexChanged.connect(lambda *_: fn())


def make_field(name: str) -> Field:
    """The widget for setting `name`, chosen from its type, choices and row."""
    s, row, kind = SETTINGS[name], ROWS.get(name, Row()), SETTING_TYPES[name]
    if row.items is not None or s.choices:
        items = row.items() if row.items is not None else tuple((c, c, c, "") for c in s.choices)
        return ComboField(name, items)
    if kind is bool:
        return CheckField(name)
    if kind is int:
        return SpinField(name)
    if kind is float:
        return FloatField(name)
    if kind is str:
        return TextField(name)
    raise TypeError(f"setting {name!r} of type {kind.__name__} needs a row with items in ROWS")
