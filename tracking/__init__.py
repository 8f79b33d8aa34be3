"""Tracking: background, numba segmentation/measurement kernels, the tracker, feature definitions, geometry.

``tracking.measure(image, background, pixel_size_um)`` measures the objects in one image (see
:mod:`tracking.shapes`); it is imported on first use so that ``import tracking.events`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tracking.shapes import Shape, measure

__all__ = ["Shape", "measure"]


def __getattr__(name: str):
    if name in __all__:
        from tracking import shapes

        return getattr(shapes, name)
    raise AttributeError(f"module 'tracking' has no attribute {name!r}")
