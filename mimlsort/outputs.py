"""Checks on a file a command is about to write, made before any work: a typo in ``--out`` must not
cost a measurement (an existing recording or event file, or the command's own input) or, found
only at the end, the whole run's result."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

from mimlsort.errors import DataFormatError

#: the first bytes of every HDF5 file (.rtdc recordings and event files), at offset 0 or at a
#: user block of 512, 1024, 2048 … bytes
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def holds_hdf5(path: str | Path) -> bool:
    """Whether ``path`` is an HDF5 file (whatever its suffix)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False  # opening a named pipe to look waits for a writer, for ever
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            offset = 0
            while offset + len(HDF5_SIGNATURE) <= size and offset <= 1 << 20:
                fh.seek(offset)
                if fh.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE:
                    return True
                offset = 512 if offset == 0 else 2 * offset
    except OSError:
        return False
    return False


def empty_file(path: str | Path) -> bool:
    """Whether ``path`` is a plain file that holds nothing (one made for the output, as
    ``mktemp --suffix .rtdc`` does): :func:`check_output_file` lets it be replaced."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size == 0


def _same(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def starts_with(path: Path, header: str) -> bool:
    """Whether the text file ``path`` begins with ``header`` (a table's first columns)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(len(header.encode())) == header.encode()
    except OSError:
        return False


def check_output_file(path: str | Path, *, inputs: Iterable[str | Path] = (), option: str = "--out",
                      header: str | None = None) -> Path:
    """``path``, once it is safe to write: not one of ``inputs``, not an existing HDF5 file (a
    recording or event file is a measurement: never overwritten), not a folder, and in a folder
    that exists (made here if need be). Another existing file is replaced only if it begins with
    ``header``, the table this command writes (its own earlier output): a typo must not turn a
    model, a ground truth or someone's notes into a CSV. Raises :class:`DataFormatError` naming
    the path and the option."""
    p = Path(path)
    for i in inputs:
        if _same(p, Path(i)):
            raise DataFormatError(f"{p}: is also this command's input; choose another {option}")
    if p.is_dir():
        raise DataFormatError(f"{p}: is a folder; {option} names a file")
    if p.exists() and holds_hdf5(p):
        raise DataFormatError(f"{p}: exists and holds a measurement (HDF5); refusing to overwrite it "
                              f"(choose another {option})")
    if p.exists() and not (header and starts_with(p, header)) and p.stat().st_size > 0:
        raise DataFormatError(f"{p}: exists and is not a table this command wrote; refusing to overwrite it "
                              f"(choose another {option}, or remove the file)")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataFormatError(f"{p.parent}: cannot create the folder for {option}: {err.strerror or err}") from err
    if not os.access(p.parent, os.W_OK):
        raise DataFormatError(f"{p.parent}: not writable (for {option})")
    return p


def make_output_folder(path: str | Path, *, option: str) -> Path:
    """The folder ``path``, made if need be; a clear error naming ``option`` where it cannot be."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise DataFormatError(f"{p}: exists and is not a folder ({option})")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataFormatError(f"{p}: cannot create the folder ({option}): {err.strerror or err}") from err
    return p


def probe_writable_folder(folder: str | Path, *, option: str) -> None:
    """Make ``folder`` if need be, then write and remove a file in it: a folder that exists but
    takes no files (a read-only mount, sysfs) passes :func:`make_output_folder`, and the first
    file made in it named its own key (``daemon.log_file``), not the folder the user chose."""
    import tempfile

    from mimlsort.errors import ConfigError

    p = Path(folder)
    try:
        p.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=p):
            pass
    except OSError as err:
        raise ConfigError(option, f"{p}: cannot write there: {err.strerror or err}") from err


def check_folder_outputs(folder: str | Path, files: dict[str, str | None], *, option: str = "--out") -> None:
    """Refuse ``folder`` if it holds one of ``files`` (names in it) that this command may not
    replace: each maps to the text its own earlier output begins with, or None for a file never
    replaced (a trained model: event files name the model they sorted with by its hash)."""
    p = Path(folder)
    for name, header in files.items():
        f = p / name
        if f.exists() and not (header is not None and f.is_file() and starts_with(f, header)):
            what = "an earlier result" if header is None else "a file this command did not write"
            raise DataFormatError(f"{f}: exists ({what}); refusing to overwrite it (choose another {option})")
