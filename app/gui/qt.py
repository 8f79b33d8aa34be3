"""The one place that imports PySide6 and pyqtgraph; a missing extra becomes BackendUnavailable.

PySide6 6.12 corrupts refcounts on ``Signal.emit`` (see ARCHITECTURE.md), so a wrong version is
refused here with a clear message rather than crashing minutes into a run.
"""

from __future__ import annotations

import os

from mimlsort.errors import BackendUnavailable

# pyqtgraph picks a binding at import; without this it could pick up another installed one
os.environ.setdefault("PYQTGRAPH_QT_LIB", "PySide6")

try:
    import PySide6
    from PySide6 import QtCore, QtGui, QtWidgets
except ImportError as err:  # pragma: no cover - the extra is installed in the dev venv
    raise BackendUnavailable("the GUI needs PySide6: install mimlsort[gui]") from err
try:
    import pyqtgraph as pg
except ImportError as err:  # pragma: no cover
    raise BackendUnavailable("the GUI needs pyqtgraph: install mimlsort[gui]") from err

if PySide6.__version__.startswith("6.12"):  # pragma: no cover - the pin keeps it out
    raise BackendUnavailable(f"PySide6 {PySide6.__version__} crashes with live plots; "
                             "install the pinned version: pip install 'PySide6-Essentials==6.11.3'")

Qt = QtCore.Qt
Signal = QtCore.Signal
Slot = QtCore.Slot

__all__ = ["QtCore", "QtGui", "QtWidgets", "Qt", "Signal", "Slot", "pg", "ensure_app"]


def ensure_app(argv: list[str] | None = None) -> QtWidgets.QApplication:
    """The process's QApplication, created if there is none yet."""
    app = QtWidgets.QApplication.instance()
    if app is None:
        app = QtWidgets.QApplication(argv if argv is not None else ["mimlsort"])
        app.setApplicationName("mimlsort")
        app.setOrganizationName("mimlsort")
    return app
