"""State shared by the panels, living in the GUI thread. Panels subscribe to its signals (napari's
model/event style): the Data panel sets the dataset, the Train panel publishes the model being trained,
the Sample and Denoise panels use whichever model is current.

Every model that enters the app goes through `set_bundle(bundle, source)`, whoever loaded or trained it:
the panels that use a model only listen to `bundleChanged`, and `bundle_source` says where it came from.
The demo model that ships with the app enters the same way, with `demo=True` (`bundle_is_demo`), only while
there is no other model; any model set after it replaces it."""

from __future__ import annotations

from PySide6.QtCore import QObject, QSettings, Signal

DEMO_SOURCE = "the demo model"  # bundle_source of the shipped demo model
DEMO_SETTING = "demo_model"  # QSettings: false = start with no model (no demo model at start)


def demo_wanted(settings: QSettings) -> bool:
    """Whether the demo model is loaded at start when there is no model (the `demo_model` setting; on
    unless it says false)."""
    return str(settings.value(DEMO_SETTING, "true")).strip().lower() not in ("false", "0", "no", "off")


class AppState(QObject):
    dataChanged = Signal(object)  # ddpm_gui.data.ImageData
    bundleChanged = Signal(object)  # ddpm_gui.engine.sampler.ModelBundle | None
    trainingChanged = Signal(bool)  # True while a training run is active
    status = Signal(str)  # a one-line message for the status bar
    statusFor = Signal(str, int)  # the same message and how long it stays, in ms (0: until the next one)
    recentChanged = Signal()
    trainingSchedule = Signal(object)  # a ScheduleConfig for the Train tab's next run (the Forward tab's)
    dataWanted = Signal(str, int)  # (source, image size): the Data tab is asked to load these images

    MAX_RECENT = 8

    def __init__(self, settings: QSettings | None = None, parent: QObject | None = None):
        super().__init__(parent)
        self.settings = settings if settings is not None else QSettings("DDPM Studio", "ddpm_gui")
        self.data = None  # current ImageData
        self.bundle = None  # current ModelBundle (trained here or loaded)
        self.bundle_source = (
            ""  # where it came from, for people: "training step 300", "run_a/step_....safetensors"
        )
        self.bundle_is_demo = False  # the current model is the demo model that ships with the app
        self.training = False

    def set_data(self, data) -> None:
        self.data = data
        self.dataChanged.emit(data)

    def set_bundle(self, bundle, source: str = "", demo: bool = False) -> None:
        """Make `bundle` the current model (None: no model); `source` names it in the status bar; `demo`:
        it is the demo model that ships with the app."""
        self.bundle = bundle
        self.bundle_source = source if bundle is not None else ""
        self.bundle_is_demo = demo and bundle is not None
        self.bundleChanged.emit(bundle)
        if bundle is not None and source:
            self.show_status(f"Sample and Denoise now use {source} (step {getattr(bundle, 'step', '?')}).")

    def use_schedule_for_training(self, schedule) -> None:
        """Send a noise schedule (a ScheduleConfig) to the Train tab: its next new run trains with it."""
        self.trainingSchedule.emit(schedule)

    def want_data(self, source: str, image_size: int) -> None:
        """Ask the Data tab to load `source` at `image_size` px (a recipe trains at another size): the
        images everything else uses then change through dataChanged, as when a person loads them."""
        self.dataWanted.emit(source, image_size)

    def set_training(self, active: bool) -> None:
        self.training = active
        self.trainingChanged.emit(active)

    def show_status(self, text: str, timeout_ms: int = 0) -> None:
        """A message for the status bar; `timeout_ms` > 0 for news that is stale after a while ("training
        started"), 0 for a state that holds until the next message ("paused at step 31")."""
        self.status.emit(text)
        self.statusFor.emit(text, timeout_ms)

    # --- recent checkpoints / runs, one click away in the File menu
    def recent(self) -> list[str]:
        v = self.settings.value("recent", [])
        if isinstance(v, str):
            v = [v]
        return [str(x) for x in (v or [])]

    def add_recent(self, path: str) -> None:
        items = [p for p in self.recent() if p != path]
        items.insert(0, path)
        self.settings.setValue("recent", items[: self.MAX_RECENT])
        self.recentChanged.emit()
