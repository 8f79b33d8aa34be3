"""The single source of truth for per-cell feature names, units and meanings.

Everything that names a feature (tracker output, CSV columns, event files, model specs, GUI axes)
takes the name from here. Names that RT-DC/dclab also defines keep dclab's name and meaning
(``deform``, ``area_um``, ``bright_avg`` …) so files are comparable with ShapeIn and dcnum.

Definitions used by the tracker (and by the synthetic camera's ground truth):

* A cell is *in the constriction* while its centroid x lies within the constriction's x-range.
  Entry and exit times are the moments the centroid crosses the start and end of that range,
  found on the monotone cubic (PCHIP) through the frames around each crossing (sub-frame
  precision; a straight line between the two frames would assume one speed across a crossing
  where the cell speeds up or slows down several-fold).
* DI is the MIML deformation index (a − b)/(a + b) of the ellipse with the blob's second moments
  (a, b: semi-major and semi-minor axes).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FeatureDef:
    name: str
    unit: str
    description: str
    rtdc: bool = False  # dclab knows this name with this meaning


_DEFS = [
    FeatureDef("di", "", "MIML deformation index (a-b)/(a+b) of the moment ellipse, maximum while in the constriction"),
    FeatureDef("di_entry", "", "DI in the last frame before the centroid entered the constriction"),
    FeatureDef("di_exit", "", "DI in the first frame after the centroid left the constriction"),
    FeatureDef("transit_time_ms", "ms", "time from constriction entry to exit of the centroid, sub-frame (monotone cubic through the frames)"),
    FeatureDef("v_max_mm_s", "mm/s", "maximum centroid speed in the constriction (3-frame central differences, median-filtered; "
               "never below the mean speed through it)"),
    FeatureDef("v_before_mm_s", "mm/s", "median centroid speed upstream of the constriction"),
    FeatureDef("v_after_mm_s", "mm/s", "speed downstream of the constriction once the cell has slowed down: the run's "
               "learned pace there, scaled by the cell's own pace upstream (sets the sort delay; see NOTES.md)"),
    FeatureDef("dir_per_ms", "1/ms", "MIML DIR: mean absolute rate of change of DI through squeeze and relaxation"),
    FeatureDef("diameter_um", "µm", "equivalent-circle diameter 2*sqrt(A/pi) upstream of the constriction"),
    FeatureDef("deform", "", "RT-DC deformation 1 - 2*sqrt(pi*A)/P of the convex hull, at maximum DI", rtdc=True),
    FeatureDef("area_um", "µm²", "RT-DC convex-hull area, upstream of the constriction", rtdc=True),
    FeatureDef("bright_avg", "a.u.", "mean brightness inside the cell mask, upstream of the constriction (the camera's grey "
               "levels; the event file's dclab column: its 8-bit images')", rtdc=True),
    FeatureDef("bright_sd", "a.u.", "brightness standard deviation inside the cell mask, upstream (grey levels as "
               "bright_avg)", rtdc=True),
    FeatureDef("bg_off", "a.u.", "brightness offset of the event image's frame against the background: mean of image "
               "- background over the empty channel (lamp flicker, which segmentation corrects with the frame's "
               "gain when tracking.flicker_correction is on); grey levels as bright_avg: dclab adds the 8-bit value "
               "to image_bg", rtdc=True),
    FeatureDef("entry_time_ms", "ms", "time the centroid entered the constriction, from the first frame of the run"),
    FeatureDef("exit_time_ms", "ms", "time the centroid left the constriction, from the first frame of the run"),
    FeatureDef("pos_y_um", "µm", "centroid y (across the channel) at the constriction exit"),
]

#: name -> definition, in a stable order
FEATURES: dict[str, FeatureDef] = {d.name: d for d in _DEFS}

#: the mechanical features the MIML paper feeds its model (DI, transit time, max velocity) plus DIR
MIML_FEATURES: tuple[str, ...] = ("di", "transit_time_ms", "v_max_mm_s", "dir_per_ms")


def feature(name: str) -> FeatureDef:
    """The definition of ``name``; KeyError names the known features."""
    try:
        return FEATURES[name]
    except KeyError:
        raise KeyError(f"unknown feature {name!r} (known: {', '.join(FEATURES)})") from None
