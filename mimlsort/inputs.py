"""Checks on a file a command is about to read, made before it is opened: a named pipe or a device
given as a recording blocked the read for ever (HDF5, OpenCV and ONNX Runtime open what they are
given), and a file the user may not read came out as "not a readable TIFF", "not an ONNX model" …
from readers that do not say why they failed."""

from __future__ import annotations

import math
import os
import stat
from pathlib import Path

from mimlsort.errors import DataFormatError, MimlsortError

_KINDS = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"))


def looked_for(path: str | os.PathLike) -> str:
    """``path`` as a "not found" message names it: a relative one with the folder it was taken
    from (the current folder, not the configuration's: "small.rtdc does not exist" while it lay
    beside RUN.toml did not say where it had been looked for)."""
    p = Path(path)
    return str(p) if p.is_absolute() else f"{p} (relative to the current folder {Path.cwd()})"


def check_input(path: str | os.PathLike, *, folder: bool = False, what: str = "a file",
                error: type[MimlsortError] = DataFormatError) -> Path:
    """``path`` if it is a regular file (or, with ``folder``, a folder) this process may read;
    ``error`` (a DataFormatError unless given) that names it otherwise. A missing path is left to
    the caller, which knows the setting or option that named it."""
    p = Path(path)
    try:
        st = p.stat()  # follows links: a link to a pipe blocks as the pipe does
    except FileNotFoundError:
        return p
    except PermissionError:
        raise error(permission_denied(p)) from None
    if stat.S_ISDIR(st.st_mode):
        if not folder:
            raise error(f"{p}: is a folder, not {what}")
        if not os.access(p, os.R_OK | os.X_OK):
            raise error(permission_denied(p))
        return p
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _KINDS if test(st.st_mode)), "a special file")
        # refused before opening: reading a pipe waits for a writer that may never come
        raise error(f"{p}: is {kind}, not {what}: reading it could wait for ever; give the path of a file")
    if not os.access(p, os.R_OK):
        raise error(permission_denied(p))
    return p


def permission_denied(path: str | os.PathLike) -> str:
    """The message for a file this process may not read (the user's to fix with chmod or sudo)."""
    return f"permission denied: {path} (this user may not read it: check its permissions)"



def attr_number(v) -> float:
    """A file's metadata value as a number, NaN where it is none (text, bytes that are not one,
    an array): for messages that name the file and key instead of int()/float()'s bare error."""
    try:
        return float(v.decode() if isinstance(v, bytes) else v)
    except (TypeError, ValueError, UnicodeDecodeError):
        return math.nan


def open_hdf5(path: str | os.PathLike):
    """``path`` opened read-only with h5py, also when its writer was killed in SWMR mode (kill -9,
    a power cut: mimlsort's event files and raw recordings keep every flushed frame and event):
    such a file keeps its consistency flags set, and a plain open refused it ("file is already
    open for write … h5clear"), while dclab and ``mimlsort report`` opened it."""
    import h5py

    try:
        return h5py.File(path, "r", locking=False)
    except OSError as err:
        if "already open for write" not in str(err):
            raise
        try:
            return h5py.File(path, "r", libver="latest", swmr=True, locking=False)
        except OSError:
            raise err from None

