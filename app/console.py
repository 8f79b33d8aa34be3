"""Console output from threads of their own: the run's threads never wait for the terminal."""

from __future__ import annotations

import logging
import logging.handlers
import queue
import threading

#: how long the end of a run waits for its queued console output to be written
_CONSOLE_DRAIN_S = 5.0


class _Outlet:
    """One destination (a log handler, or status lines to a stream) served by a thread of its own,
    so a terminal that blocks holds up neither the run nor the log file."""

    def __init__(self, name: str, deliver):
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._deliver = deliver
        self._thread = threading.Thread(target=self._loop, name=f"mimlsort-console-{name}", daemon=True)
        self._thread.start()

    def put(self, item) -> None:
        self._q.put(item)

    def _loop(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            try:
                self._deliver(item)
            except Exception:  # a destination that fails must not end the others
                pass

    def close(self, timeout_s: float) -> bool:
        """Stop after what is queued; True if it got it all out within ``timeout_s``."""
        self._q.put(None)
        self._thread.join(timeout_s)
        return not self._thread.is_alive()


def _write(item) -> None:
    text, file = item
    file.write(text)
    file.flush()


class QueuedStream:
    """Text for ``file``, queued to a console thread: writing never blocks the caller. Size and
    terminal queries go to ``file`` itself (tqdm sizes its bar from them)."""

    def __init__(self, outlet: _Outlet, file):
        self._outlet = outlet
        self._file = file

    def write(self, text: str) -> int:
        if text:
            self._outlet.put((text, self._file))
        return len(text)

    def flush(self) -> None:  # the console's thread flushes after every write
        pass

    def isatty(self) -> bool:
        return bool(getattr(self._file, "isatty", lambda: False)())

    def fileno(self) -> int:
        return self._file.fileno()


class _FanOut(logging.Handler):
    def __init__(self, outlets: list[tuple[logging.Handler, _Outlet]]):
        super().__init__()
        self._outlets = outlets

    def emit(self, record: logging.LogRecord) -> None:
        record = logging.handlers.QueueHandler.prepare(self, record)  # formatted once, here
        for handler, outlet in self._outlets:
            if record.levelno >= handler.level:
                outlet.put(record)


class Console:
    """Log records and status lines go out from threads of their own while a run goes (the
    daemon, replay, the GUI): a context manager that takes over the root logger's handlers.

    A stderr that nobody reads (a terminal paused with Ctrl-S, a stuck ``| tee``, a hung log
    collector) blocks whoever writes to it: the log trigger's pulse lines and every warning of a
    worker thread held up the sort path (13,000 frames missed), and the main thread, stuck in a
    status line, never closed the files after SIGTERM. Now the run's threads only queue. Each
    handler (the terminal, the run's log file) has its own thread, so a blocked terminal does not
    stop the log file either."""

    def __init__(self):
        self._root = logging.getLogger()
        self._handlers: list[logging.Handler] = []
        self._outlets: list[_Outlet] = []
        self._fan: _FanOut | None = None
        self._lines: _Outlet | None = None

    def __enter__(self) -> "Console":
        self._handlers = list(self._root.handlers)
        pairs = []
        for i, h in enumerate(self._handlers):
            self._root.removeHandler(h)
            pairs.append((h, _Outlet(f"log{i}", h.handle)))
        self._outlets = [o for _, o in pairs]
        self._fan = _FanOut(pairs)
        self._root.addHandler(self._fan)
        self._lines = _Outlet("lines", _write)
        return self

    def print(self, text: str, file) -> None:
        """A status line for ``file``, written by the console's own thread."""
        self._lines.put((text + "\n", file))

    def stream(self, file) -> "QueuedStream":
        """A file-like object whose writes go out through the console's thread (a progress bar
        redrawn from the main thread must not hold it up when ``file`` blocks)."""
        return QueuedStream(self._lines, file)

    def __exit__(self, *exc) -> None:
        self._root.removeHandler(self._fan)
        for outlet in (*self._outlets, self._lines):
            outlet.close(_CONSOLE_DRAIN_S)  # a terminal still paused: what is queued stays unwritten
        for h in self._handlers:
            self._root.addHandler(h)
