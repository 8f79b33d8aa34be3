"""``njit`` for mimlsort's kernels: numba's, with the cache keyed by the package's whole source.

numba stamps a cached kernel with its own source file only, yet compiles the kernels it calls
into it. A kernel calling one from another file — the live loop in ``tracking/live.py`` calls the
linker in ``tracking/link.py`` — so kept running the old callee from the cache after that other
file changed (a ``git pull``, an editable install). Kernels decorated through this module carry
the hash of every source file of mimlsort's packages in their cache stamp as well, so any change
to them recompiles them (about a minute, once); everything else about numba's cache (where it
lives, ``NUMBA_CACHE_DIR``) is as numba does it. Code outside these packages is not affected.
"""

from __future__ import annotations

import hashlib
import logging
import os
from functools import lru_cache
from pathlib import Path

from numba import njit
from numba.core import caching

__all__ = ["PACKAGES", "install", "njit", "source_hash"]

log = logging.getLogger(__name__)

#: mimlsort's packages (folders beside this package's); their ``*.py`` files make the stamp
PACKAGES = ("acquisition", "app", "hardware", "inference", "mimlsort", "tracking")


@lru_cache(maxsize=8)
def source_hash(roots: tuple[str, ...]) -> str:
    """sha256 over the name and content of every ``*.py`` file directly in each of ``roots``."""
    h = hashlib.sha256()
    for root in roots:
        for path in sorted(Path(root).glob("*.py")):
            h.update(f"{path.parent.name}/{path.name}\0".encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def _keyed(base: type, roots: tuple[str, ...]) -> type:
    prefixes = tuple(os.path.join(r, "") for r in roots)

    class PackageKeyed(base):
        _mimlsort_roots = roots

        @classmethod
        def from_function(cls, py_func, py_file):
            if not os.path.realpath(py_file).startswith(prefixes):
                return None  # not ours: numba's own locators take it
            return super().from_function(py_func, py_file)

        def get_source_stamp(self):
            return super().get_source_stamp(), source_hash(roots)

    PackageKeyed.__name__ = PackageKeyed.__qualname__ = f"PackageKeyed{base.__name__}"
    return PackageKeyed


def install(roots: tuple[str | os.PathLike, ...] | None = None) -> bool:
    """Key the cache of kernels defined in ``roots`` (default: mimlsort's packages) by their
    source; must run before those kernels are decorated. Returns False where this numba has no
    locator classes to extend (its plain per-file cache then applies)."""
    if roots is None:
        top = Path(__file__).resolve().parent.parent
        roots = tuple(top / p for p in PACKAGES)
    roots = tuple(os.path.realpath(r) for r in roots)
    impl = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl", None)
    classes = getattr(impl, "_locator_classes", None)
    if not isinstance(classes, list):
        log.debug("numba %s: no cache locator list; kernels are cached per source file", getattr(caching, "__name__", "?"))
        return False
    if any(getattr(c, "_mimlsort_roots", None) == roots for c in classes):
        return True
    bases = [getattr(caching, n, None) or getattr(caching, "_" + n, None)
             for n in ("UserProvidedCacheLocator", "InTreeCacheLocator", "UserWideCacheLocator")]
    impl._locator_classes = [_keyed(b, roots) for b in bases if b is not None] + classes
    return True


install()
