"""The only package that imports PySide6 or pyqtgraph: the desktop window over the Qt-free engine."""
