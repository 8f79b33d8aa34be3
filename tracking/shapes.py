"""Single-image measurement: :func:`measure` runs the tracker's segmentation kernel on one image.

For analysis and validation (e.g. against RT-DC recordings): the whole image is scanned, not only
the channel rows, and each blob comes back as a :class:`Shape` in µm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mimlsort.errors import ConfigError, DataFormatError
from mimlsort.settings import require
from tracking.blobs import (
    B_ANGLE,
    B_AREA,
    B_BORDER,
    B_BRIGHT_AVG,
    B_BRIGHT_SD,
    B_CONTRAST,
    B_HULL_AREA,
    B_HULL_PERIM,
    B_MAJOR,
    B_MINOR,
    B_X,
    B_XMAX,
    B_XMIN,
    B_Y,
    B_YMAX,
    B_YMIN,
    N_BLOB_FIELDS,
)
from tracking._pure import pure_python
from tracking.segment import segment_image, segment_mask


@dataclass(frozen=True, slots=True)
class Shape:
    """One segmented object. Positions in µm from the image's top-left pixel centre."""

    x_um: float
    y_um: float
    area_um: float  # RT-DC: convex hull area, µm²
    deform: float  # RT-DC: 1 - 2*sqrt(pi*A_hull)/P_hull
    di: float  # MIML: (a - b)/(a + b) of the moment ellipse
    major_um: float  # semi-axes of the moment ellipse
    minor_um: float
    angle: float  # rad, major axis against +x, in (-pi/2, pi/2]
    area_px: float  # filled mask area
    hull_area_px: float
    hull_perimeter_um: float
    bright_avg: float
    bright_sd: float
    contrast: float  # mean |image - background| in the mask
    border: bool  # the mask touches the image border
    bbox: tuple[int, int, int, int]  # x_min, y_min, x_max, y_max (inclusive pixel indices)

    @property
    def solidity(self) -> float:
        return self.area_px / self.hull_area_px if self.hull_area_px > 0 else math.nan



def _shape(row: np.ndarray, px: float) -> Shape:
    a, b = float(row[B_MAJOR]), float(row[B_MINOR])
    ha, hp = float(row[B_HULL_AREA]), float(row[B_HULL_PERIM])
    deform = 1.0 - 2.0 * math.sqrt(math.pi * ha) / hp if hp > 0 else math.nan
    return Shape(
        x_um=float(row[B_X]) * px,
        y_um=float(row[B_Y]) * px,
        area_um=ha * px * px,
        deform=deform,
        di=(a - b) / (a + b) if a + b > 0 else 0.0,
        major_um=a * px,
        minor_um=b * px,
        angle=float(row[B_ANGLE]),
        area_px=float(row[B_AREA]),
        hull_area_px=ha,
        hull_perimeter_um=hp * px,
        bright_avg=float(row[B_BRIGHT_AVG]),
        bright_sd=float(row[B_BRIGHT_SD]),
        contrast=float(row[B_CONTRAST]),
        border=bool(row[B_BORDER] > 0.5),
        bbox=(int(row[B_XMIN]), int(row[B_YMIN]), int(row[B_XMAX]), int(row[B_YMAX])),
    )


def measure(image: np.ndarray, background: np.ndarray, pixel_size_um: float, threshold: float = 6.0, *,
            min_area_um: float = 1.0, max_blobs: int = 64, closing_px: int = 0, opening_px: int = 0,
            clear_border: bool = False, kernels: str = "numba", return_labels: bool = False):
    """Segment ``image`` against ``background`` (|image - background| > ``threshold``; a negative
    threshold takes dark pixels only, image - background < threshold, as RT-DC does) and measure
    every blob of at least ``min_area_um`` (filled mask). Returns ``list[Shape]``, sorted by area
    (largest first); with ``return_labels`` also the label image (blob i of the list is i + 1).

    ``closing_px``/``opening_px`` (elliptical kernel size, px; 0 = none) post-process the
    thresholded mask as RT-DC tools do before measuring: ShapeIn's "bin kernel" is a closing
    (``online_contour:bin kernel``, 5 by default), dcnum's ``clo=r`` a closing with a disk of
    radius r (kernel 2r + 1). ``clear_border`` removes the thresholded objects that touch the
    image's edge before that closing, as dcnum's ``cle=1`` does (closed first, a cell cut by the
    edge merged with the cell beside it). The moment ellipse is still measured on the image itself."""
    img = np.asarray(image)
    bg = np.asarray(background)
    if img.ndim != 2 or img.dtype.kind not in "ui":
        raise DataFormatError(f"measure: image must be a 2-D integer array, got {img.dtype} {img.shape}")
    if bg.shape != img.shape:
        raise DataFormatError(f"measure: background shape {bg.shape} differs from image shape {img.shape}")
    if kernels not in ("numba", "python"):
        raise ConfigError("kernels", f"must be 'numba' or 'python', got {kernels!r}")
    require(pixel_size_um > 0, "pixel_size_um", f"must be > 0, got {pixel_size_um}")
    require(0 < abs(threshold) < math.inf, "threshold", f"must be finite and not 0, got {threshold}")
    require(max_blobs >= 1, "max_blobs", f"must be >= 1, got {max_blobs}")
    if bg.dtype != img.dtype:
        bg = np.clip(np.round(bg), np.iinfo(img.dtype).min, np.iinfo(img.dtype).max).astype(img.dtype)
    img = np.ascontiguousarray(img)
    bg = np.ascontiguousarray(bg)
    h, w = img.shape
    out = np.zeros((max_blobs, N_BLOB_FIELDS), np.float64)
    labels = np.zeros((h, w) if return_labels else (1, 1), np.int32)
    min_area_px = float(min_area_um / pixel_size_um**2)
    require(closing_px >= 0 and opening_px >= 0, "closing_px", f"kernel sizes must be >= 0, got {closing_px}, {opening_px}")
    if closing_px or opening_px or clear_border:
        import cv2  # only for the RT-DC-style post-processing

        d = img.astype(np.int32) - bg.astype(np.int32)
        t = int(np.floor(abs(threshold)))
        mask = ((-d > t) if threshold < 0 else (np.abs(d) > t)).astype(np.uint8)
        if clear_border:
            _, lab = cv2.connectedComponents(mask, connectivity=8)
            edge = np.unique(np.concatenate((lab[0], lab[-1], lab[:, 0], lab[:, -1])))
            mask[np.isin(lab, edge[edge > 0])] = 0
        for op, k in ((cv2.MORPH_CLOSE, closing_px), (cv2.MORPH_OPEN, opening_px)):
            if k:
                mask = cv2.morphologyEx(mask, op, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (int(k), int(k))))
        fn = pure_python(segment_mask) if kernels == "python" else segment_mask
        nb = int(fn(img, bg, mask, threshold < 0, min_area_px, int(max_blobs), out, labels))
    else:
        fn = pure_python(segment_image) if kernels == "python" else segment_image
        nb = int(fn(img, bg, float(threshold), min_area_px, 0, h, int(max_blobs), out, labels))
    order = np.argsort(-out[:nb, B_AREA], kind="stable")
    shapes = [_shape(out[i], pixel_size_um) for i in order]
    if not return_labels:
        return shapes
    relabel = np.zeros(nb + 1, np.int32)
    relabel[order + 1] = np.arange(1, nb + 1, dtype=np.int32)
    return shapes, relabel[labels]

