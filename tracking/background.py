"""The background the segmentation compares frames against.

The initial estimate is a per-pixel median of a frame stack: passing cells cover any pixel for a
few frames only, so the median is the empty channel. During a run the model follows slow drifts
(illumination, focus, debris settling) with a running average that leaves out pixels differing
from the model by more than ``threshold`` — those are cells, and averaging them in would darken the
channel exactly where cells pass. Cells therefore never leak into the background. A real step
change larger than ``threshold`` (debris settling, a shifted chip) is taken over once a pixel has
differed in ``relearn`` used frames in a row (128 × stride 16 = 2,048 frames by default: 0.2–0.5 s
at 4–10 kHz, while a cell covers a pixel for a few ms and a stuck cell is flagged after 50 ms).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mimlsort.errors import ConfigError, DataFormatError
from mimlsort.jit import njit
from tracking._pure import pure_python
from mimlsort.settings import require

_KERNELS = ("numba", "python")


# -- lamp flicker ---------------------------------------------------------------------------------
# A lamp on mains power or a pulsed LED makes whole frames brighter or darker than the background
# from one frame to the next. Beyond about half the segmentation threshold, stretches of empty
# channel pass for cells (5% flicker: 30 phantom cells for each real one). The light scales every
# pixel by the same factor, so a dark wall changes less than the bright channel: a frame is
# compared with the background times its own gain, the ratio of image to background over the
# empty channel (an offset added to the background, RT-DC's ``bg_off``, left the walls of the
# constriction darker than their background in a bright frame: phantom cells again at 10% flicker).
# The gain comes from a sample of the channel's rows, fitted again to the pixels within 4 clips
# of the first fit and then within one clip, so cells (darker than the threshold by definition)
# barely move it, even over a third of the channel. The additive offset over the same pixels is what the event files keep, as ``bg_off``.
LIGHT_ROW_STEP = 8  # sample every 8th row of the channel, whole (contiguous rows vectorise): 3,200 pixels of a 320x80 channel
LIGHT_PASSES = 4  # the first fit is pulled by the cells' dark pixels; three clipped passes remove that
LIGHT_WIDE = 4.0  # the second pass keeps pixels within this many clips of the first fit: with a third of the
# channel under cells, the first fit is off by more than one clip, and the channel itself fell out


@njit(nogil=True, cache=True, error_model="numpy", fastmath=True)
def frame_light(img, bg, y0, y1, clip):
    """(gain, offset) of the frame's light against the background over a sample of rows
    ``y0..y1``: ``img ≈ gain * bg`` (least squares through 0) and the mean of ``img - bg``, over
    the pixels within ``clip`` grey levels of the fit (after a fit to all of them and one to those
    within ``LIGHT_WIDE`` clips); (1.0, 0.0) without pixels there."""
    h, w = img.shape
    y0 = max(0, min(y0, h))
    y1 = max(y0, min(y1, h))
    g = 1.0
    off = 0.0
    lim = 3e38  # the first pass takes every pixel (finite: fastmath assumes no infinities)
    for p in range(LIGHT_PASSES):
        s_ib = 0.0
        s_bb = 0.0
        s_d = 0.0
        n = 0.0
        g32 = np.float32(g)
        lim32 = np.float32(lim)
        for y in range(y0, y1, LIGHT_ROW_STEP):
            # float32 sums of a row (8 lanes; a row's sums stay well within their precision),
            # branch-free, in any order (fastmath): it vectorises
            r_ib = np.float32(0.0)
            r_bb = np.float32(0.0)
            r_d = np.float32(0.0)
            r_n = np.float32(0.0)
            for x in range(w):
                b = np.float32(bg[y, x])
                v = np.float32(img[y, x])
                k = np.float32(1.0) if abs(v - g32 * b) <= lim32 else np.float32(0.0)
                r_ib += k * v * b
                r_bb += k * b * b
                r_d += k * (v - b)
                r_n += k
            s_ib += np.float64(r_ib)
            s_bb += np.float64(r_bb)
            s_d += np.float64(r_d)
            n += np.float64(r_n)
        if n == 0.0 or s_bb <= 0.0:
            break
        g = s_ib / s_bb
        off = s_d / n
        lim = clip * LIGHT_WIDE if p == 0 else clip
    return g, off


#: gains outside this range are no flicker but a change of the light itself (a lamp switched on or
#: dimmed after the background was taken): such frames are left uncorrected, so the background's
#: relearning takes the new light over as before (corrected by a gain of 10, a background taken
#: under a dim lamp was never relearned: 1,202 events for 86 cells)
LIGHT_MIN = 0.5
LIGHT_MAX = 2.0


@njit(nogil=True, cache=True, inline="always")
def corrects(gain, top, level):
    """Is a frame compared with the background times ``gain``? When the gain is a lamp's flicker
    (within LIGHT_MIN..LIGHT_MAX) that moves the brightest background level ``top`` by at least
    half an 8-bit grey level (``level``: the frames' levels per 8-bit level). A steady lamp's gain,
    measured on noise and cells, moves none: such runs track as they did without the correction."""
    return LIGHT_MIN < gain < LIGHT_MAX and abs(gain - 1.0) * top >= 0.5 * level


@njit(nogil=True, cache=True)
def rows_max(bg, y0, y1):
    """The brightest grey level in rows y0..y1 (0 without rows): a gain that moves no level of
    it by half a level leaves the scaled background as it is."""
    m = np.int64(0)
    for y in range(max(0, y0), min(y1, bg.shape[0])):
        for x in range(bg.shape[1]):
            m = max(m, np.int64(bg[y, x]))
    return m


@njit(nogil=True, cache=True, fastmath=True)
def scale_rows(bg, gain, y0, y1, out):
    """``out[y] = round(gain * bg[y])`` for rows y0..y1, held to the dtype's range (other rows
    untouched). In float32 (24 bits hold any 16-bit grey level times a gain exactly enough),
    which vectorises: 64-bit fixed point cost 4 µs a 320x80 channel."""
    h, w = bg.shape
    top = np.float32(np.iinfo(bg.dtype).max)
    g = np.float32(min(max(gain, 0.0), 64.0))
    for y in range(max(0, y0), min(y1, h)):
        for x in range(w):
            out[y, x] = min(np.float32(bg[y, x]) * g + np.float32(0.5), top)


@njit(nogil=True, cache=True)
def update_kernel(images, slots, stride, alpha, threshold, relearn, acc, count, image, y0=0, y1=0, light_clip=0.0,
                  level=1.0):
    """Running update of ``acc`` (float32) from every ``stride``-th frame of ``images[slots]``;
    ``image`` (frame dtype) receives the rounded model. Pixels with |frame - model| > threshold
    are left out, unless they have been so in ``relearn`` used frames in a row (``count`` holds
    the runs): then the model jumps to the frame's value — a step change (debris settling, a
    shifted chip) rather than cells, which never cover a pixel that long. ``light_clip`` > 0:
    each frame divided by its gain (:func:`frame_light` over rows y0..y1) is learned, so lamp
    flicker stays out of the model (where :func:`corrects`; ``level``: grey levels per 8-bit
    level). Returns the frames used."""
    n = slots.shape[0]
    h, w = acc.shape
    # a frame divided by a gain < 1 exceeds the dtype's range where it is saturated: the model
    # jumped there (relearn) and its rounded image wrapped around (255 -> 12)
    top = np.float32(np.iinfo(image.dtype).max)
    # (``image`` changes only after the loop.) A gain that moves no level of the model by half a
    # level is a steady lamp's, left out as segmentation leaves it out (tracking.segment
    # ._segment_level): dividing by it changed a steady run's model and events
    img_top = rows_max(image, y0, y1) if light_clip > 0.0 else np.int64(0)
    used = 0
    for f in range(0, n, stride):
        img = images[slots[f]]
        inv = np.float32(1.0)
        if light_clip > 0.0:
            g, _ = frame_light(img, image, y0, y1, light_clip)
            if corrects(g, img_top, level):
                inv = np.float32(1.0 / g)
        for y in range(h):
            # branch-free (selects, unconditional stores), so the row loop vectorises
            for x in range(w):
                a = acc[y, x]
                v = min(np.float32(img[y, x]) * inv, top)
                d = v - a
                inside = abs(d) <= threshold
                c = np.int32(0) if inside or relearn <= 0 else count[y, x] + np.int32(1)
                jump = c >= relearn and relearn > 0
                acc[y, x] = v if jump else (a + alpha * d if inside else a)
                count[y, x] = np.int32(0) if jump else c
        used += 1
    if used:
        for y in range(h):
            for x in range(w):
                image[y, x] = np.floor(acc[y, x] + np.float32(0.5))
    return used


class BackgroundModel:
    """Background image (``image``, same dtype as the frames) with a slow, cell-robust update.

    ``fill`` is what crops are padded with outside the ROI (the background itself, so a padded
    crop looks like empty channel). ``alpha`` is the weight of one used frame; with ``stride``
    (use every k-th frame of a batch) it sets the time constant: ``stride / alpha`` frames.
    """

    def __init__(self, image: np.ndarray, *, alpha: float = 1.0 / 256, stride: int = 16, threshold: float = 10.0,
                 relearn: int = 128, kernels: str = "numba"):
        if kernels not in _KERNELS:
            raise ConfigError("kernels", f"must be 'numba' or 'python', got {kernels!r}")
        image = np.asarray(image)
        if image.ndim != 2 or image.dtype.kind not in "ui":
            raise DataFormatError(f"background must be a 2-D integer image, got {image.dtype} {image.shape}")
        require(0 < alpha <= 1, "tracking.background.alpha", f"must be in (0, 1], got {alpha}")
        require(stride >= 1, "tracking.background.stride", f"must be >= 1, got {stride}")
        require(threshold > 0, "tracking.background.threshold", f"must be > 0, got {threshold}")
        require(relearn >= 0, "tracking.background.relearn", f"must be >= 0 (0: never), got {relearn}")
        self.image = np.ascontiguousarray(image).copy()
        self._acc = self.image.astype(np.float32)
        self.alpha = float(alpha)
        self.stride = int(stride)
        self.threshold = float(threshold)
        self.relearn = int(relearn)  # used frames in a row a pixel must differ before the model takes it
        self._count = np.zeros(self.image.shape, np.int32)
        self._kernel = pure_python(update_kernel) if kernels == "python" else update_kernel
        self._phase = 0  # frames since the last used one, so stride holds across batches
        #: > 0: learn each frame divided by its gain over ``light_rows`` (lamp flicker; see
        #: :func:`frame_light`), fitted to the pixels this close to it
        self.light_clip = 0.0
        self.light_rows = (0, 0)
        self.light_level = 1.0  # grey levels of the frames per 8-bit level

    @property
    def fill(self) -> np.ndarray:
        return self.image

    @property
    def dtype(self) -> np.dtype:
        return self.image.dtype

    @classmethod
    def from_image(cls, image: np.ndarray, kernels: str = "numba", **kw) -> "BackgroundModel":
        return cls(image, kernels=kernels, **kw)

    @staticmethod
    def estimate(stack: np.ndarray, *, kernels: str = "numba") -> np.ndarray:
        """The empty channel from a ``(n, H, W)`` frame stack (:func:`estimate_background`)."""
        return estimate_background(stack, kernels=kernels)

    def update(self, images: np.ndarray, slots: np.ndarray) -> int:
        """Learn from every ``stride``-th frame of ``images[slots]``; returns the frames used."""
        n = len(slots)
        if n == 0:
            return 0
        start = (self.stride - self._phase) % self.stride
        self._phase = (self._phase + n) % self.stride
        if start >= n:
            return 0
        return int(self._kernel(images, slots[start:], self.stride, np.float32(self.alpha),
                                np.float32(self.threshold), self.relearn, self._acc, self._count, self.image,
                                self.light_rows[0], self.light_rows[1], self.light_clip, self.light_level))


# -- the initial background -----------------------------------------------------------------------
# A per-pixel median is the empty channel only where cells cover a pixel in fewer than half of the
# frames. At 100 cells/s the first 16 ms of a run (cells entering an empty view slowly) and, at
# 150 cells/s, the queue at the constriction mouth cover some pixels in more than half of them: the
# median there is a cell, and since the running update never learns a step larger than the
# threshold, the ghost stays for the whole run, merges with every cell passing it and made most of
# them DOUBLETs. The empty channel is instead the *densest* value of a pixel: it only varies by
# the camera noise, while moving cells of varying darkness and texture spread over tens of grey
# levels. So the estimate is the median of the densest window, 2 noise sd wide, of each pixel's
# values (noise from the frame-to-frame differences).


@njit(nogil=True, cache=True)
def background_mode_kernel(stack, width, out):
    """``out[y, x]``: median of the values of ``stack[:, y, x]`` inside the ``width``-wide window
    holding most of them (the first such window, from the dark end, on a tie), rounded."""
    n, h, w = stack.shape
    rows = np.empty((w, n), np.int64)  # one image row, transposed: each pixel's values contiguous
    counts = np.zeros(4096, np.int64)
    for y in range(h):
        for i in range(n):
            for x in range(w):
                rows[x, i] = stack[i, y, x]
        for x in range(w):
            v = rows[x]
            lo = v[0]
            hi = v[0]
            for i in range(1, n):
                lo = min(lo, v[i])
                hi = max(hi, v[i])
            if hi - lo < 4096:  # a pixel's values span a few tens of grey levels: counting sort
                for i in range(n):
                    counts[v[i] - lo] += 1
                k = 0
                for c in range(hi - lo + 1):
                    for _ in range(counts[c]):
                        v[k] = lo + c
                        k += 1
                    counts[c] = 0
            else:
                v.sort()
            # two pointers: v[i:j] is the longest run starting at v[i] within the width
            best = 0
            start = 0
            j = 0
            for i in range(n):
                if j < i:
                    j = i
                while j < n and v[j] <= v[i] + width:
                    j += 1
                if j - i > best:
                    best = j - i
                    start = i
            mid = start + (best - 1) // 2
            med = v[mid] if best % 2 else 0.5 * (v[mid] + v[mid + 1])
            out[y, x] = np.floor(med + 0.5)


def temporal_noise_sd(stack: np.ndarray) -> float:
    """Camera noise sd (grey levels) from frame-to-frame differences, robust to moving cells:
    a MAD first guess, then the RMS of the differences within 4 sd of it."""
    if len(stack) < 2:
        return 0.0
    if stack.dtype.kind in "ui" and stack.dtype.itemsize <= 2:
        # the same statistics from a histogram of |d|: exact for integers and ~5x faster than
        # the median of a few million values (this runs while the first frames of a run queue up)
        a = np.abs(np.diff(stack.astype(np.int32), axis=0)).ravel()
        counts = np.bincount(a)
        cum = np.cumsum(counts)
        m = a.size
        lo = int(np.searchsorted(cum, (m - 1) // 2, side="right"))
        hi = int(np.searchsorted(cum, m // 2, side="right"))
        s0 = max(1.4826 * (0.5 * (lo + hi)) / math.sqrt(2.0), 0.5)
        k = np.arange(counts.size, dtype=np.float64)
        keep = k <= 4.0 * math.sqrt(2.0) * s0
        n = float(counts[keep].sum())
        return math.sqrt(float((counts[keep] * k[keep] ** 2).sum()) / n / 2.0) if n else s0
    d = np.diff(stack.astype(np.int32 if stack.dtype.itemsize <= 2 else np.float64), axis=0).ravel()
    a = np.abs(d)
    s0 = max(1.4826 * float(np.median(a)) / math.sqrt(2.0), 0.5)
    d = d[a <= 4.0 * math.sqrt(2.0) * s0].astype(np.float64)
    return math.sqrt(float(np.mean(d * d)) / 2.0) if d.size else s0


#: frame-to-frame brightness changes (95th percentile) beyond this share of the segmentation
#: threshold make whole stretches of channel pass for cells (simulated: 3 of 6 grey levels gave
#: as many phantom cells as real ones, 5 gave 30 times as many)
FLICKER_SHARE = 0.5
#: camera noise sd beyond this share of the threshold is found as cells (sd 4 of 6: 20% phantom
#: cells, sd 5: 80%; sd 3: none)
NOISE_SHARE = 0.6
#: share of the first frames' pixels at the camera's top grey level said as overexposure (a speck
#: of glare on RT-DC's shared example files: 0.2%)
SATURATED_SHARE = 0.01


@dataclass(frozen=True, slots=True)
class Illumination:
    """What the first frames of a run say about its light, in 8-bit grey levels."""

    flicker: float  # whole frames brighter or darker than the background from one frame to the next (95th percentile)
    noise: float  # camera noise sd
    saturated: float = 0.0  # share of the pixels at the top 8-bit grey level of the camera's range

    def flickers(self, threshold: float) -> bool:
        """Is the flicker enough to make stretches of channel pass for cells at ``threshold``?"""
        return self.flicker >= FLICKER_SHARE * abs(float(threshold))

    def notes(self, threshold: float, corrected: bool) -> list[str]:
        """Flicker or noise that would break segmentation at ``threshold``, said in words;
        ``corrected``: the tracker compares each frame with the background scaled by its light."""
        t = abs(float(threshold))
        notes = []
        if self.flickers(t):
            said = (f"the illumination flickers: whole frames are {self.flicker:.0f} grey levels (8-bit, 95th "
                    f"percentile) brighter or darker than the background from one frame to the next, against a "
                    f"segmentation threshold of {t:g}")
            if corrected:
                notes.append(f"{said}. Each frame is compared with the background scaled by the frame's own light "
                             f"(tracking.flicker_correction; each event's bg_off says by how much), but steadier light (an LED on a DC "
                             f"supply, or a flash synchronised to the exposure) measures cells better")
            else:
                notes.append(f"{said}: stretches of channel will be found as cells. Steady the light (an LED on a DC "
                             f"supply, or a flash synchronised to the exposure), set tracking.flicker_correction = "
                             f"true or raise |tracking.threshold|")
        if self.noise >= NOISE_SHARE * t:
            notes.append(f"the camera's noise (sd {self.noise:.1f} grey levels, 8-bit) is close to the segmentation "
                         f"threshold of {t:g}: noise will be found as cells. More light or a longer exposure lowers "
                         f"it, or raise |tracking.threshold|")
        if self.saturated >= SATURATED_SHARE:
            # a saturated channel hides the cells' bright interiors and halos: masks lose them where
            # |tracking.threshold| is used, and bright_* and the model's crops are clipped
            notes.append(f"{100 * self.saturated:.0f}% of the first frames' pixels are at the camera's top grey level "
                         f"(overexposed): cells there are not seen whole and their brightness (bright_*, the crops "
                         f"the model sees) is clipped. Shorten the exposure or dim the lamp")
        return notes


def measure_illumination(stack: np.ndarray, background: np.ndarray, grey: float = 1.0) -> Illumination | None:
    """Lamp flicker (the whole frame brighter or darker than the background from one frame to the
    next) and camera noise in a run's first frames (``grey``: levels of the frames per 8-bit
    level); None from fewer than 4 frames. Both broke tracking with nothing said."""
    if len(stack) < 4:
        return None
    h, w = background.shape
    step = max(1, int(math.sqrt(h * w / 16384)))  # a sample of ~16k pixels a frame is plenty
    sample = np.asarray(stack)[:, ::step, ::step]
    diff = (sample.astype(np.float32) - background[::step, ::step]) / grey
    off = np.median(diff.reshape(len(diff), -1), axis=1)
    flicker = float(np.percentile(np.abs(off - np.median(off)), 95))
    d = np.diff(diff - off[:, None, None], axis=0)
    noise = 1.4826 * float(np.median(np.abs(d))) / math.sqrt(2.0)
    # the top 8-bit level of the range: a 12-bit camera's data shifted up to 16 bits tops out at 65520
    top = 256.0 * grey - grey
    return Illumination(flicker, noise, float(np.mean(sample >= top)))


def estimate_background(stack: np.ndarray, *, kernels: str = "numba") -> np.ndarray:
    """The empty channel from a ``(n, H, W)`` integer frame stack: per pixel, the median of its
    densest 2-noise-sd window of values (see the comment above :func:`background_mode_kernel`).
    Equals the per-pixel median where cells cover a pixel in less than about half of the frames,
    and stays right where they cover it more often."""
    stack = np.asarray(stack)
    if stack.ndim != 3 or stack.shape[0] < 1:
        raise DataFormatError(f"background needs a (n, H, W) frame stack, got shape {stack.shape}")
    if stack.dtype.kind not in "ui":
        raise DataFormatError(f"background needs integer frames, got {stack.dtype}")
    width = max(2.0 * temporal_noise_sd(stack), 1.0)
    kernel = pure_python(background_mode_kernel) if kernels == "python" else background_mode_kernel
    out = np.empty(stack.shape[1:], stack.dtype)
    kernel(np.ascontiguousarray(stack), width, out)
    return out


def estimate_steady_background(stack: np.ndarray, background: np.ndarray, clip: float, *, passes: int = 2,
                               kernels: str = "numba") -> np.ndarray:
    """The empty channel from a ``(n, H, W)`` stack taken under a flickering lamp, from a first
    :func:`estimate_background` of it: each frame divided by its own light against the estimate
    (:func:`frame_light` over the whole frame, fitted to pixels within ``clip``), and the estimate
    taken again from those, ``passes`` times. Under strong flicker (20%) a pixel's values pile
    up at both extremes of the lamp's cycle, and the densest window of each pixel picked either:
    a patchwork that the per-frame gain cannot undo, found as cells in every frame."""
    light = pure_python(frame_light) if kernels == "python" else frame_light
    stack = np.asarray(stack)
    top = np.iinfo(stack.dtype).max
    steady = np.empty_like(stack)
    bg = background
    for _ in range(passes):
        for i, frame in enumerate(stack):
            gain, _ = light(frame, bg, 0, bg.shape[0], float(clip))
            np.clip(np.rint(frame / gain), 0, top, out=steady[i], casting="unsafe") if gain > 0 else \
                np.copyto(steady[i], frame)
        bg = estimate_background(steady, kernels=kernels)
    return bg

