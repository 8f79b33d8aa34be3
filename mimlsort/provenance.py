"""Which mimlsort wrote a file. Feature definitions change between commits of one version (the
constriction crossing times, the pulse pace, the flicker correction all came within 0.1.0), so in
a git checkout the version carries the commit, and ``.dirty`` when the working tree had changes:
a lab comparing two files can tell whether the same definitions measured them."""

from __future__ import annotations

import subprocess
from functools import lru_cache
from pathlib import Path

from mimlsort import __version__

#: the checkout this package runs from (the folder holding ``mimlsort/``)
ROOT = Path(__file__).resolve().parents[1]


def describe(root: Path, version: str = __version__) -> str:
    """``mimlsort VERSION``, with ``+gCOMMIT[.dirty]`` (PEP 440's local part) where ``root`` is a
    git checkout and git answers within 5 s; the plain version anywhere else (an installed wheel)."""
    plain = f"mimlsort {version}"
    if not (root / ".git").exists():
        return plain
    try:
        out = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty=.dirty", "--abbrev=12",
                              "--exclude=*"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return plain
    rev = out.stdout.strip()
    return f"{plain}+g{rev}" if out.returncode == 0 and rev else plain


@lru_cache(maxsize=1)
def software_version() -> str:
    """:func:`describe` of this package's own checkout, asked once per process."""
    return describe(ROOT)
