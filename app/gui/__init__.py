"""The operator GUI (PySide6 + pyqtgraph, extra ``gui``).

Qt is imported only by :mod:`app.gui.qt` and the widget modules that import from it, so
``import app.gui`` and the Qt-free :mod:`app.gui.models` work without the extra. Start it with
``mimlsort gui [--config RUN.toml]`` or :func:`app.gui.main.run_gui`.
"""
