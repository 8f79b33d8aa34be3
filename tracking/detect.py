"""Find the channel and its constriction in the background image.

Contract with the image (and with the synthetic camera): the channel lumen is brighter than the
PDMS walls above and below it (darker bands, with dark edge lines where they meet the lumen), and
the constriction is the x-range where the lumen is narrowest.

Method: the lumen/wall brightness threshold is Otsu's on the (column-smoothed) background; per
column, the lumen is the longest bright run, its edges interpolated to sub-pixel where the profile
crosses the threshold. The constriction is where the lumen width is below the midpoint between its
narrowest and its wide width, its ends interpolated between columns. Whatever cannot be found
raises :class:`~mimlsort.errors.ConfigError` naming the geometry keys to set instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mimlsort.errors import ConfigError, DataFormatError

_KEYS_WALLS = "tracking.geometry.channel_top_um / channel_bottom_um"
_KEYS_CONSTRICTION = "tracking.geometry.constriction_start_um / constriction_end_um"


@dataclass(frozen=True, slots=True)
class DetectedGeometry:
    """Geometry found in a background image, in ROI pixels."""

    constriction_x0: float
    constriction_x1: float
    channel_y0: float  # topmost inside edge of the upper wall over the whole ROI
    channel_y1: float  # bottommost inside edge of the lower wall
    lumen_width_px: np.ndarray  # per column (nan where no lumen was found)
    threshold: float
    # angle of the lumen's centre line against the image rows, degrees, positive where it falls
    # (row numbers grow) towards +x: clockwise as the image is shown with row 0 at the top
    tilt_deg: float = 0.0

    @property
    def constriction_width_px(self) -> float:
        i0, i1 = int(np.ceil(self.constriction_x0)), int(np.floor(self.constriction_x1))
        seg = self.lumen_width_px[i0:i1 + 1]
        return float(np.nanmedian(seg)) if seg.size and not np.isnan(seg).all() else float("nan")


def _otsu(values: np.ndarray) -> float:
    v = values.ravel()
    lo, hi = float(v.min()), float(v.max())
    if hi - lo < 1e-9:
        return lo
    hist, edges = np.histogram(v, bins=256, range=(lo, hi))
    p = hist.astype(np.float64) / hist.sum()
    centres = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(p)
    m0 = np.cumsum(p * centres)
    mt = m0[-1]
    w1 = 1.0 - w0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mt * w0 - m0) ** 2 / (w0 * w1)
    between[~np.isfinite(between)] = -1.0
    return float(edges[int(np.argmax(between)) + 1])


def _crossing(p: np.ndarray, i_out: int, i_in: int, t: float) -> float:
    """Sub-pixel position between rows i_out (below t) and i_in (above t) where p crosses t."""
    a, b = p[i_out], p[i_in]
    frac = (t - a) / (b - a) if b != a else 0.5
    return i_out + frac * (i_in - i_out)


def _face_rows(top: np.ndarray, bottom: np.ndarray, wide: np.ndarray, narrow: np.ndarray, h: int) -> list[int]:
    """Rows that cross the constriction's end faces: wall inside the constriction, lumen outside."""
    t_w, t_n = float(np.median(top[wide])), float(np.median(top[narrow]))
    b_w, b_n = float(np.median(bottom[wide])), float(np.median(bottom[narrow]))
    rows = [y for y in range(int(np.ceil(t_w)) + 2, int(np.floor(t_n)) - 1)]
    rows += [y for y in range(int(np.ceil(b_n)) + 2, int(np.floor(b_w)) - 1)]
    return [y for y in rows if 0 <= y < h]


def _refine_face(bg: np.ndarray, rows: list[int], x_est: float, inward: int, i0: int, i1: int, w: int,
                 half: int = 6) -> float:
    """Position of a constriction end face: the centroid of the darkness below the wall level in a
    window around ``x_est`` (the face's dark line is centred on the face), averaged over ``rows``.
    ``inward`` is the direction of the constriction (+1 at the start, -1 at the end)."""
    xc = int(round(x_est))
    a, b = max(0, xc - half), min(w, xc + half + 1)
    mid = (i0 + i1) // 2
    found = []
    for y in rows:
        p = bg[y]
        wall = float(np.median(p[max(i0 + half, 0):max(i1 - half, i0 + half + 1)])) if i1 - i0 > 2 * half + 2 \
            else float(p[mid])
        lumen = float(np.median(p[:max(1, i0 - half)] if inward > 0 else p[min(w - 1, i1 + half):]))
        if lumen - wall < 4.0:
            continue  # no wall/lumen step on this row
        seg = p[a:b]
        wts = np.maximum(wall - seg, 0.0)
        if wts.sum() > 2.0 * (lumen - wall) * 0.25:
            found.append(float(np.sum(wts * np.arange(a, b)) / wts.sum()))
        else:  # no dark line: the midpoint of the lumen-to-wall step
            lvl = 0.5 * (lumen + wall)
            above = seg > lvl
            k = np.flatnonzero(above[:-1] != above[1:])
            if k.size:
                j = int(k[0])
                found.append(float(a + j + (lvl - seg[j]) / (seg[j + 1] - seg[j])))
    if not found:
        return x_est
    return float(np.median(found))


def _tilt_deg(top: np.ndarray, bottom: np.ndarray, use: np.ndarray) -> float:
    """Angle of the lumen's centre line over the columns ``use``: a least-squares line, refitted
    once without the columns more than 1 px off it (a cell or dirt stuck at a wall, a face's dark
    line). The centre, not a wall, as a constriction narrows the lumen from both sides alike."""
    x = np.flatnonzero(use).astype(np.float64)
    if x.size < 4:
        return 0.0
    c = 0.5 * (top[use] + bottom[use])
    slope, icept = np.polyfit(x, c, 1)
    keep = np.abs(c - (slope * x + icept)) <= 1.0
    if 4 <= keep.sum() < x.size:
        slope, icept = np.polyfit(x[keep], c[keep], 1)
    return float(np.degrees(np.arctan(slope)))


def measure_tilt(background: np.ndarray, pixel_size_um: float) -> float | None:
    """The channel's tilt against the image rows (:attr:`DetectedGeometry.tilt_deg`), or None
    where no walls are found along x (a geometry given by hand over a plain background)."""
    try:
        return detect_geometry(background, pixel_size_um, constriction=False, look_turned=False).tilt_deg
    except (ConfigError, DataFormatError):
        return None


def detect_geometry(background: np.ndarray, pixel_size_um: float, *, smooth_px: int = 5,
                    min_contrast: float = 4.0, constriction: bool = True, look_turned: bool = True) -> DetectedGeometry:
    """Channel walls and constriction in ``background`` (2-D, any real dtype). ``constriction``
    False: the walls only (the constriction is given; its x values are then 0). ``look_turned``:
    where no walls run along x, the error says whether they run along y (a flow direction that
    was not given)."""
    bg = np.asarray(background, dtype=np.float64)
    if bg.ndim != 2 or min(bg.shape) < 4:
        shape = "x".join(map(str, bg.shape[::-1]))
        raise DataFormatError(f"the frames are {shape} px: too small to find the channel's walls and constriction in "
                              "(at least 4 px each way, and a few cells across along the flow); set a larger ROI "
                              "(camera.<backend>.width/height, or the recording's)" if bg.ndim == 2 else
                              f"the background must be a 2-D image, got shape {bg.shape}")
    if pixel_size_um <= 0:
        raise ConfigError("tracking.geometry.pixel_size_um", f"must be > 0, got {pixel_size_um}")
    h, w = bg.shape
    # smooth along x only: the walls' edges across y must stay sharp
    k = max(1, int(smooth_px))
    pad = np.pad(bg, ((0, 0), (k // 2, k - 1 - k // 2)), mode="edge")
    cs = np.cumsum(pad, axis=1)
    cs = np.concatenate([np.zeros((h, 1)), cs], axis=1)
    sm = (cs[:, k:] - cs[:, :-k]) / k
    # each column scaled to one lumen level (its brightest value, the lumen's): under a brightness
    # gradient along the flow one threshold for the whole image cut into the lumen on the dark side,
    # and the constriction was found up to 40 µm from where it is, with nothing said
    lumen = sm.max(axis=0)
    if lumen.min() > 0:
        sm = sm * (np.median(lumen) / lumen)
    t = _otsu(sm)
    bright = sm > t
    if sm[bright].size == 0 or sm[~bright].size == 0 or sm[bright].mean() - sm[~bright].mean() < min_contrast:
        raise ConfigError(_KEYS_WALLS, "no channel walls found in the background image (no darker bands above and "
                                       "below a bright lumen): set the channel and constriction geometry")
    top = np.full(w, np.nan)
    bottom = np.full(w, np.nan)
    for x in range(w):
        col = bright[:, x]
        # longest run of lumen rows
        d = np.diff(np.concatenate([[0], col.view(np.int8), [0]]))
        starts = np.flatnonzero(d == 1)
        ends = np.flatnonzero(d == -1)  # exclusive
        if starts.size == 0:
            continue
        j = int(np.argmax(ends - starts))
        a, b = int(starts[j]), int(ends[j]) - 1
        if a == 0 or b == h - 1:
            continue  # the lumen reaches the ROI edge here: no wall in this column
        p = sm[:, x]
        top[x] = _crossing(p, a - 1, a, t)
        bottom[x] = _crossing(p, b + 1, b, t)
    found = ~np.isnan(top)
    if found.sum() < max(4, w // 4):
        hint = ""
        if look_turned:
            try:
                detect_geometry(bg.T, pixel_size_um, smooth_px=smooth_px, min_contrast=min_contrast,
                                constriction=False, look_turned=False)
            except ConfigError:
                pass
            else:
                # a turned camera's recording replayed without its turn was told to "set the channel
                # geometry", which no geometry setting can make track
                hint = ("; its walls run up and down the image instead: cells flow vertically in it, so say which "
                        "way (camera.flow_direction; --flow-direction on replay and track)")
        raise ConfigError(_KEYS_WALLS, f"channel walls found in only {int(found.sum())} of {w} columns of the "
                                       f"background image: set the channel geometry{hint}")
    width = bottom - top
    if not constriction:
        return DetectedGeometry(constriction_x0=0.0, constriction_x1=0.0, channel_y0=max(0.0, float(np.nanmin(top))),
                                channel_y1=min(float(h), float(np.nanmax(bottom)) + 1.0), lumen_width_px=width,
                                threshold=t, tilt_deg=_tilt_deg(top, bottom, found))
    wv = width[found]
    w_min = float(np.min(wv))
    w_wide = float(np.percentile(wv, 90))
    if w_wide - w_min < max(2.0, 0.15 * w_wide):
        raise ConfigError(_KEYS_CONSTRICTION, f"no constriction found: the lumen is {w_min:.1f}..{w_wide:.1f} px wide "
                                              "along the whole ROI; set the constriction's start and end")
    level = 0.5 * (w_min + w_wide)
    narrow = np.where(found, width < level, False)
    # the narrow x-range around the narrowest column
    i_min = int(np.nanargmin(np.where(found, width, np.inf)))
    i0 = i_min
    while i0 > 0 and narrow[i0 - 1]:
        i0 -= 1
    i1 = i_min
    while i1 < w - 1 and narrow[i1 + 1]:
        i1 += 1

    def edge(i_in: int, i_out: int) -> float:
        if not (0 <= i_out < w) or not found[i_out]:
            return float(i_in - 0.5 if i_out < i_in else i_in + 0.5)
        a, b = width[i_out], width[i_in]
        frac = (level - a) / (b - a) if b != a else 0.5
        return float(i_out + frac * (i_in - i_out))

    x0 = max(0.0, edge(i0, i0 - 1))
    x1 = min(float(w), edge(i1, i1 + 1))
    # the width profile places the ends only to a pixel or two (the wall faces' dark lines narrow
    # the lumen next to them); refine them on the wall faces themselves
    wide = found & ~narrow
    if wide.sum() >= 2 and narrow.sum() >= 2:
        rows = _face_rows(top, bottom, wide, narrow, h)
        x0 = _refine_face(bg, rows, x0, +1, i0, i1, w)
        x1 = _refine_face(bg, rows, x1, -1, i0, i1, w)
    if x1 - x0 < 1.0:
        raise ConfigError(_KEYS_CONSTRICTION, f"the constriction found is under a pixel long (x {x0:.1f}..{x1:.1f}); "
                                              "set its start and end")
    y0 = float(np.nanmin(top))
    y1 = float(np.nanmax(bottom)) + 1.0  # exclusive bound of the rows to scan
    return DetectedGeometry(constriction_x0=x0, constriction_x1=x1, channel_y0=max(0.0, y0),
                            channel_y1=min(float(h), y1), lumen_width_px=width, threshold=t,
                            tilt_deg=_tilt_deg(top, bottom, found))
