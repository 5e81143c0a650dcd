"""One consistent look: Qt's Fusion style with a dark palette, and pyqtgraph colours that match it.

Dark suits image work (the eye judges the images, not the chrome). `apply_style(app)` is called once by
`run_app` (it does not import pyqtgraph: the window must show first); `configure_pyqtgraph()` follows
when the panels are built. Tests that build widgets without either still get readable defaults.
"""

from __future__ import annotations

from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QApplication

# palette
WINDOW = "#2b2d31"
BASE = "#1e1f22"
ALT_BASE = "#26282c"
TEXT = "#e6e6e6"
DIM_TEXT = "#8c8f94"
BUTTON = "#3a3d42"
HIGHLIGHT = "#3d7bd9"
LINK = "#6aa7ff"
# accents used by panels
WARNING_BG = "#4a3a12"
WARNING_FG = "#ffd27a"
ERROR_BG = "#4d1f22"
ERROR_FG = "#ff9b9b"
PLOT_PENS = ("#6aa7ff", "#ffb454", "#7fd88f", "#ff7a90", "#c89bff")

WARNING_STYLE = (
    f"QLabel {{ background: {WARNING_BG}; color: {WARNING_FG}; border: 1px solid #8a6d1c;"
    " border-radius: 4px; padding: 6px; }"
)
ERROR_STYLE = (
    f"QLabel {{ background: {ERROR_BG}; color: {ERROR_FG}; border: 1px solid #8a3a3f;"
    " border-radius: 4px; padding: 6px; }"
)
INFO_STYLE = f"QLabel {{ color: {DIM_TEXT}; }}"


def dark_palette() -> QPalette:
    p = QPalette()
    roles = {
        QPalette.ColorRole.Window: WINDOW,
        QPalette.ColorRole.WindowText: TEXT,
        QPalette.ColorRole.Base: BASE,
        QPalette.ColorRole.AlternateBase: ALT_BASE,
        QPalette.ColorRole.ToolTipBase: BASE,
        QPalette.ColorRole.ToolTipText: TEXT,
        QPalette.ColorRole.Text: TEXT,
        QPalette.ColorRole.Button: BUTTON,
        QPalette.ColorRole.ButtonText: TEXT,
        QPalette.ColorRole.BrightText: "#ffffff",
        QPalette.ColorRole.Highlight: HIGHLIGHT,
        QPalette.ColorRole.HighlightedText: "#ffffff",
        QPalette.ColorRole.Link: LINK,
        QPalette.ColorRole.PlaceholderText: DIM_TEXT,
    }
    for role, color in roles.items():
        p.setColor(role, QColor(color))
    for role in (QPalette.ColorRole.WindowText, QPalette.ColorRole.Text, QPalette.ColorRole.ButtonText):
        p.setColor(QPalette.ColorGroup.Disabled, role, QColor("#6b6e73"))
    p.setColor(QPalette.ColorGroup.Disabled, QPalette.ColorRole.Button, QColor("#313338"))
    return p


def plot_colors() -> tuple[str, str]:
    """(background, foreground) for pyqtgraph, taken from the application palette."""
    pal = QApplication.palette()
    return pal.color(QPalette.ColorRole.Base).name(), pal.color(QPalette.ColorRole.Text).name()


def apply_style(app: QApplication) -> None:
    app.setStyle("Fusion")
    app.setPalette(dark_palette())
    app.setStyleSheet(
        "QGroupBox { font-weight: bold; border: 1px solid #44474d; border-radius: 5px; margin-top: 1.1em;"
        " padding-top: 0.4em; }"
        "QGroupBox::title { subcontrol-origin: margin; left: 8px; padding: 0 4px; }"
        "QTabBar::tab { padding: 6px 14px; }"
        "QToolTip { border: 1px solid #55585e; }"
    )
    # pyqtgraph (about 0.2-0.5 s to import) is configured later, by the main window, once it has
    # been imported off the GUI thread; widgets built before that still match through plot_colors()


def configure_pyqtgraph() -> None:
    import pyqtgraph as pg

    bg, fg = plot_colors()
    # only colours: antialiasing and the global image axis order stay at their (fast) defaults
    pg.setConfigOptions(background=bg, foreground=fg)
