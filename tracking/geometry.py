"""Channel geometry and calibration: where the constriction is, where the channel walls are.

Positions are in pixels of the ROI (x along the flow, cells move towards +x; y across the
channel). Settings may give them in µm; :meth:`GeometrySettings.resolve` turns them into a
:class:`ChannelGeometry` in pixels, detecting from the background image whatever is left ``None``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mimlsort.errors import ConfigError
from mimlsort.settings import require


@dataclass(frozen=True, slots=True)
class ChannelGeometry:
    """Resolved geometry in ROI pixels."""

    pixel_size_um: float
    constriction_x0: float  # px, start of the constriction (upstream edge)
    constriction_x1: float  # px, end of the constriction (downstream edge)
    channel_y0: float  # px, upper wall of the channel (inside edge)
    channel_y1: float  # px, lower wall
    width: int  # ROI width px
    height: int  # ROI height px

    def __post_init__(self):
        require(self.pixel_size_um > 0, "geometry.pixel_size_um", f"must be > 0, got {self.pixel_size_um}")
        require(0 <= self.constriction_x0 < self.constriction_x1 <= self.width, "geometry.constriction",
                f"x-range must satisfy 0 <= start < end <= {self.width}, got {self.constriction_x0}..{self.constriction_x1}")
        require(0 <= self.channel_y0 < self.channel_y1 <= self.height, "geometry.channel",
                f"y-range must satisfy 0 <= top < bottom <= {self.height}, got {self.channel_y0}..{self.channel_y1}")

    @property
    def constriction_length_um(self) -> float:
        return (self.constriction_x1 - self.constriction_x0) * self.pixel_size_um


@dataclass(frozen=True, slots=True)
class GeometrySettings:
    """Geometry as configured. ``None`` means: detect it from the background image."""

    # positions in the (turned) frame the tracker sees: x from the ROI's left edge, y from its top
    constriction_start_um: float | None = None  # x of the constriction's upstream end, µm; unset: detected from the background
    constriction_end_um: float | None = None  # x of its downstream end, µm; unset: detected
    channel_top_um: float | None = None  # y of the upper wall's inner edge in the wide channel, µm; unset: detected
    channel_bottom_um: float | None = None  # y of the lower wall's inner edge, µm; unset: detected

    def __post_init__(self):
        for name in ("constriction_start_um", "constriction_end_um", "channel_top_um", "channel_bottom_um"):
            v = getattr(self, name)
            require(v is None or 0 <= v < math.inf, name, f"must be >= 0 and finite, got {v}")
        if self.constriction_start_um is not None and self.constriction_end_um is not None:
            require(self.constriction_start_um < self.constriction_end_um, "constriction_end_um",
                    f"must be > constriction_start_um ({self.constriction_start_um}), got {self.constriction_end_um}")
        # walls the wrong way round passed `config --check`, and the run failed on its first frames
        # with "geometry.channel: y-range must satisfy 0 <= top < bottom", in pixels, naming no key
        if self.channel_top_um is not None and self.channel_bottom_um is not None:
            require(self.channel_top_um < self.channel_bottom_um, "channel_bottom_um",
                    f"must be > channel_top_um ({self.channel_top_um}): y grows downwards from the ROI's top, "
                    f"got {self.channel_bottom_um}")

    def check_fits(self, width: int, height: int, pixel_size_um: float, camera: str = "") -> None:
        """Refuse a position given outside a ``width`` x ``height`` px image (the frames as the
        tracker sees them, turned), naming the key and the image. ``camera`` says whose image."""
        for name, extent in (("constriction_start_um", width), ("constriction_end_um", width),
                             ("channel_top_um", height), ("channel_bottom_um", height)):
            v = getattr(self, name)
            if v is not None and v / pixel_size_um > extent:
                raise ConfigError(f"tracking.geometry.{name}",
                                  f"{v:g} µm lies outside the ROI ({extent} px × {pixel_size_um:g} µm/px = "
                                  f"{extent * pixel_size_um:g} µm; {camera + ' ' if camera else ''}image "
                                  f"{width}x{height} px)")

    def resolve(self, background: np.ndarray, pixel_size_um: float) -> ChannelGeometry:
        """Geometry in pixels; missing values are detected from ``background``."""
        from tracking.detect import detect_geometry  # detection only when needed

        h, w = background.shape
        self.check_fits(w, h, pixel_size_um)
        need = None in (self.constriction_start_um, self.constriction_end_um, self.channel_top_um, self.channel_bottom_um)
        # a constriction given is not looked for (a straight channel has none to find: the walls
        # were, and the error said to set the constriction the user had set)
        given = None not in (self.constriction_start_um, self.constriction_end_um)
        auto = detect_geometry(background, pixel_size_um, constriction=not given) if need else None

        def pick(um: float | None, auto_px: float) -> float:
            return auto_px if um is None else um / pixel_size_um

        return ChannelGeometry(
            pixel_size_um=pixel_size_um,
            constriction_x0=pick(self.constriction_start_um, auto.constriction_x0 if auto else 0.0),
            constriction_x1=pick(self.constriction_end_um, auto.constriction_x1 if auto else 0.0),
            channel_y0=pick(self.channel_top_um, auto.channel_y0 if auto else 0.0),
            channel_y1=pick(self.channel_bottom_um, auto.channel_y1 if auto else 0.0),
            width=w,
            height=h,
        )


def geometry_note(g: ChannelGeometry, given: GeometrySettings) -> str:
    """One line saying where the tracker takes the channel to be, and which values were detected."""
    px = g.pixel_size_um
    detected = [name for name in ("constriction_start_um", "constriction_end_um", "channel_top_um", "channel_bottom_um")
                if getattr(given, name) is None]
    how = ("detected from the background" if len(detected) == 4 else "as configured" if not detected
           else f"{', '.join(detected)} detected from the background")
    return (f"channel geometry ({how}): constriction {g.constriction_x0 * px:.1f}-{g.constriction_x1 * px:.1f} µm "
            f"({g.constriction_length_um:.1f} µm long), channel walls at {g.channel_y0 * px:.1f} and "
            f"{g.channel_y1 * px:.1f} µm (set tracking.geometry to correct it)")
