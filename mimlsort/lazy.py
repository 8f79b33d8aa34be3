"""Lazy imports: package attributes resolved on first use (PEP 562), and backends by name.

``inference`` must not load ONNX Runtime and ``inference.training`` must not load torch just to be
imported; their ``__init__`` maps public names to submodules and resolves each on first use.
Camera and trigger backends are registered as ``"module:Class"`` and imported when selected, so a
missing vendor SDK affects only its own backend.
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


def load_backend(kind: str, name: str, registry: Mapping[str, str]):
    """The class registered as ``"module:Class"`` under ``name`` in ``registry``, imported now.

    An unknown name is a ConfigError on ``<kind>.backend``; a module that cannot be imported (a
    vendor SDK missing) is BackendUnavailable — only for that backend, since nothing else imports it.
    """
    from mimlsort.errors import BackendUnavailable, ConfigError

    try:
        target = registry[name]
    except KeyError:
        raise ConfigError(f"{kind}.backend", f"unknown backend {name!r} (known: {', '.join(registry)})") from None
    module, _, cls = target.partition(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as err:
        raise BackendUnavailable(f"{kind} backend {name!r} is not available: {err}") from err
    return getattr(mod, cls)
