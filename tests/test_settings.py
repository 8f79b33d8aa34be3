from dataclasses import dataclass, field

import pytest

from mimlsort.errors import ConfigError
from mimlsort.settings import from_mapping, require, to_mapping


@dataclass(frozen=True)
class Inner:
    threshold: float = 0.5
    mode: str = "purity"

    def __post_init__(self):
        require(0 <= self.threshold <= 1, "threshold", f"must be in [0, 1], got {self.threshold}")


@dataclass(frozen=True)
class Outer:
    name: str = "x"
    count: int = 3
    limits: tuple[float, float] = (0.0, 1.0)
    inner: Inner = field(default_factory=Inner)
    optional: float | None = None


def test_nested_error_names_full_key_path():
    with pytest.raises(ConfigError) as e:
        from_mapping(Outer, {"inner": {"threshold": 1.5}}, "sorting")
    assert str(e.value) == "sorting.inner.threshold: must be in [0, 1], got 1.5"


def test_unknown_key_and_wrong_type_are_named():
    with pytest.raises(ConfigError, match=r"^sorting\.bogus: unknown key"):
        from_mapping(Outer, {"bogus": 1}, "sorting")
    with pytest.raises(ConfigError, match=r"^count: must be an integer"):
        from_mapping(Outer, {"count": "3"})
    with pytest.raises(ConfigError, match=r"limits: must have 2 items"):
        from_mapping(Outer, {"limits": [1.0]})


def test_round_trip_and_int_to_float():
    o = from_mapping(Outer, {"count": 5, "limits": [1, 2], "inner": {"threshold": 1}, "optional": 3})
    assert o.limits == (1.0, 2.0) and isinstance(o.inner.threshold, float) and o.optional == 3.0
    assert from_mapping(Outer, to_mapping(o)) == o
