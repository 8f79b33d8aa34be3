"""Pure-Python versions of numba kernels, for tests and debugging.

``dispatcher.py_func`` runs only the top level in Python: the kernels it calls are still the
compiled ones. :func:`pure_python` rebuilds a kernel's Python function with a copy of its module's
globals in which every numba kernel is replaced by its Python function too, all the way down, so
numba-specific behaviour (integer wrap-around, missing bounds checks) can be told apart from logic.
"""

from __future__ import annotations

import types

from numba.core.dispatcher import Dispatcher


def pure_python(kernel, _modules=None):
    """The kernel and every kernel it calls as plain Python; a kernel from another module keeps
    that module's globals (its constants), with its kernels replaced as well."""
    py = kernel.py_func
    modules = {} if _modules is None else _modules  # module globals id -> the rebuilt globals
    key = id(py.__globals__)
    if key in modules:
        g = modules[key]
        return g[py.__name__] if isinstance(g.get(py.__name__), types.FunctionType) else \
            types.FunctionType(py.__code__, g, py.__name__, py.__defaults__, py.__closure__)
    g = modules[key] = dict(py.__globals__)
    for name, obj in py.__globals__.items():
        if isinstance(obj, Dispatcher):
            f = obj.py_func
            if f.__globals__ is py.__globals__:
                g[name] = types.FunctionType(f.__code__, g, f.__name__, f.__defaults__, f.__closure__)
            else:
                g[name] = pure_python(obj, modules)
    fn = g.get(py.__name__)
    if not isinstance(fn, types.FunctionType) or fn.__code__ is not py.__code__:
        fn = types.FunctionType(py.__code__, g, py.__name__, py.__defaults__, py.__closure__)
    return fn
