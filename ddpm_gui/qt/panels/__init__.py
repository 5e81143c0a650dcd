"""The main window's tabs, one module each: data, forward process, train, sample, denoise,
runs.

Every panel is a QWidget built as `Panel(state: AppState, parent=None)` with `is_busy() -> bool` and
`shutdown(timeout_ms=60000) -> None` (stop its jobs and wait for their threads). Panel modules may
import torch: the main window imports them only after the engine has loaded (see main_window.py).
"""

# (module, class name, tab title) in tab order
PANELS: tuple[tuple[str, str, str], ...] = (
    ("ddpm_gui.qt.panels.data_panel", "DataPanel", "Data"),
    ("ddpm_gui.qt.panels.forward_panel", "ForwardPanel", "Forward process"),
    ("ddpm_gui.qt.panels.train_panel", "TrainPanel", "Train"),
    ("ddpm_gui.qt.panels.sample_panel", "SamplePanel", "Sample"),
    ("ddpm_gui.qt.panels.ab_panel", "ABPanel", "A/B"),
    ("ddpm_gui.qt.panels.denoise_panel", "DenoisePanel", "Denoise"),
    ("ddpm_gui.qt.panels.runs_panel", "RunsPanel", "Runs"),
    ("ddpm_gui.qt.panels.toy2d_panel", "Toy2DPanel", "2D"),
)
