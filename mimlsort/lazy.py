"""Lazily resolved package attributes (PEP 562), so importing a package stays cheap.

``inference`` must not load ONNX Runtime and ``inference.training`` must not load torch just to be
imported; their ``__init__`` maps public names to submodules and resolves each on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping


def lazy_exports(package: str, names: Mapping[str, str], namespace: dict) -> tuple[Callable, Callable]:
    """``(__getattr__, __dir__)`` for ``package`` whose attribute ``name`` lives in submodule ``names[name]``."""

    def __getattr__(name: str):
        try:
            module = names[name]
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        return getattr(importlib.import_module(f"{package}.{module}"), name)

    def __dir__():
        return sorted(list(namespace) + list(names))

    return __getattr__, __dir__
