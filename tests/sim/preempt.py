"""Thread switches where the GIL makes them rare, to show lost updates in tests.

``obj.n += 1`` is a load, an add and a store; CPython 3.11 with its GIL checks for a thread switch
at calls and backward jumps, so two threads almost never interleave between the load and the store
of a plain integer attribute, and a test of a missing lock passes by luck (a free-threaded
interpreter, or a right-hand side that calls something, loses increments). :func:`switch_before_stores`
makes every thread started inside it give up the GIL just before each attribute store in the
named source files, so that a store without a lock overwrites what another thread stored
meanwhile, run after run.
"""

from __future__ import annotations

import contextlib
import dis
import threading
import time
from collections.abc import Iterator

_STORE_ATTR = dis.opmap["STORE_ATTR"]


@contextlib.contextmanager
def switch_before_stores(*filename_suffixes: str) -> Iterator[None]:
    """Threads started inside this block yield the GIL before each ``STORE_ATTR`` executed in
    code from files whose names end with one of ``filename_suffixes``."""

    def on_opcode(frame, event, arg):
        if event == "opcode" and frame.f_code.co_code[frame.f_lasti] == _STORE_ATTR:
            time.sleep(0)  # releases the GIL: a thread waiting for it runs now
        return on_opcode

    def on_call(frame, event, arg):
        if frame.f_code.co_filename.endswith(filename_suffixes):
            frame.f_trace_opcodes = True
            return on_opcode
        return None

    threading.settrace(on_call)
    try:
        yield
    finally:
        threading.settrace(None)
