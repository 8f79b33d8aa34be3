"""Console output from a thread of its own: the run's threads never wait for the terminal."""

from __future__ import annotations

import logging
import logging.handlers
import queue
import threading

#: how long the end of a run waits for its queued console output to be written
_CONSOLE_DRAIN_S = 5.0


class Console:
    """Log records and status lines go out from a thread of their own while a run goes (the
    daemon, replay, the GUI): a context manager that takes over the root logger's handlers.

    A stderr that nobody reads (a terminal paused with Ctrl-S, a stuck ``| tee``, a hung log
    collector) blocks whoever writes to it: the log trigger's pulse lines and every warning of a
    worker thread held up the sort path (13,000 frames missed), and the main thread, stuck in a
    status line, never closed the files after SIGTERM. Now the run's threads only queue; this
    thread alone may wait for the terminal."""

    def __init__(self):
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._root = logging.getLogger()
        self._handlers: list[logging.Handler] = []
        self._queue_handler = logging.handlers.QueueHandler(self._q)
        self._thread = threading.Thread(target=self._loop, name="mimlsort-console", daemon=True)

    def __enter__(self) -> "Console":
        self._handlers = list(self._root.handlers)
        for h in self._handlers:
            self._root.removeHandler(h)
        self._root.addHandler(self._queue_handler)
        self._thread.start()
        return self

    def print(self, text: str, file) -> None:
        self._q.put((text, file))

    def _loop(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            try:
                if isinstance(item, logging.LogRecord):
                    for h in self._handlers:
                        if item.levelno >= h.level:
                            h.handle(item)
                else:
                    print(item[0], file=item[1], flush=True)
            except Exception:  # a console that fails must not end the console
                pass

    def __exit__(self, *exc) -> None:
        self._q.put(None)
        self._thread.join(_CONSOLE_DRAIN_S)  # a terminal still paused: what is queued stays unwritten
        self._root.removeHandler(self._queue_handler)
        for h in self._handlers:
            self._root.addHandler(h)
