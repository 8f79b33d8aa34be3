"""Pickling of the records that cross to helper processes (event writer) at thousands a second.

A frozen ``slots`` dataclass pickles through ``dataclasses``' generated ``__getstate__`` and
``__setstate__``: Python code per object that calls ``fields()`` and ``object.__setattr__`` per
field — most of the ~100 µs a cell record cost to pickle besides its image arrays.
"""

from __future__ import annotations

import dataclasses
import operator


def by_fields(cls):
    """Class decorator (outside ``@dataclass``): pickle instances as ``cls(*fields)`` — one C call
    to gather the fields and the constructor to rebuild, so ``__post_init__`` checks run again."""
    names = tuple(f.name for f in dataclasses.fields(cls) if f.init)
    if len(names) < 2:
        raise TypeError(f"{cls.__name__}: by_fields needs at least two init fields")
    if any(not f.init for f in dataclasses.fields(cls)):
        raise TypeError(f"{cls.__name__}: fields outside __init__ would be lost")
    get = operator.attrgetter(*names)

    def __reduce__(self):
        return cls, get(self)

    cls.__reduce__ = __reduce__
    return cls
