"""Preprocessing built only from a :class:`~inference.spec.ModelSpec`: crops → ``image``, features → ``features``.

Training (inference.training) and sorting (inference.classifier) both call this module, so what a
model saw in training is exactly what it sees at the microscope.

Images: for each channel the named crop (first/last) is brought to the model's physical scale —
the central ``crop_size_um`` of the crop at the event's pixel size, cut or padded (edge pixels,
which are background in tracker crops) to a square of ``round(crop_size_um / pixel_size)`` pixels
— then resampled to height × width (area averaging when shrinking, bilinear when enlarging) and
normalised. Features: taken in the spec's order, scaled, NaN replaced by the spec's fill value and
clipped.

The resampling is OpenCV's ``cv2.resize`` (INTER_AREA / INTER_LINEAR) — the models were trained on
it, uint8 rounding included. For uint8 crops, which is what cameras and the tracker deliver, a numba
kernel reproduces it bit for bit (same tables, same float32/fixed-point arithmetic, same rounding;
tests hold it to cv2 over many sizes) and does centre-square, resampling and normalisation of both
channels in one pass: one call per cell instead of two cv2 calls and half a dozen NumPy temporaries.
The tables depend only on the crop shape and the field size, so they are built once per pixel size.
Other dtypes go through cv2 itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import cv2
import numpy as np

from mimlsort.errors import ModelError
from mimlsort.jit import njit

from .spec import ModelSpec

__all__ = ["Preprocessor", "ResamplePlan", "make_plan", "resample_reference"]

# resampling modes of the kernel, one per arithmetic cv2.resize uses for uint8
AREA = 0  # INTER_AREA, non-integer scale: float32 weights, rows accumulated, rint
AREA_2X2 = 1  # INTER_AREA, exactly 2× in both axes: integer sum, (s + 2) >> 2 (half up, not half even)
AREA_INT = 2  # INTER_AREA, other integer scales: integer sum × float32(1 / area), rint
LINEAR = 3  # INTER_LINEAR: 11-bit fixed-point weights, OpenCV's SIMD vertical pass rounding

_PLAN_CACHE_MAX = 64  # distinct (crop shape, field) pairs kept; a run has one or two


class ResamplePlan(NamedTuple):
    """Tables taking an (H0, W0) crop through centre-square and resampling to (h, w), separably.

    Output column ``dx`` sums crop columns ``x_idx[:, dx]`` with weights ``x_w[:, dx]`` (taps padded
    with zero weights at the end, which leaves every float sum unchanged); the horizontal pass runs
    once for each crop row in ``rows``; output row ``dy`` then combines rows ``rows[y_pos[:, dy]]``
    with weights ``y_w[:, dy]``. The centre-square cut/pad is folded into the indices.
    """

    mode: int
    rows: np.ndarray
    y_pos: np.ndarray
    y_w: np.ndarray
    x_idx: np.ndarray
    x_w: np.ndarray
    inv_area: np.float32


def _square_map(size: int, n: int | None) -> np.ndarray:
    """Crop index for each of the ``n`` field positions: the central n, edge-replicated where short."""
    if n is None or n == size:
        return np.arange(size, dtype=np.int64)
    if size > n:
        return np.arange(n, dtype=np.int64) + (size - n) // 2
    return np.clip(np.arange(n, dtype=np.int64) - (n - size) // 2, 0, size - 1)


def _area_taps(ssize: int, dsize: int) -> list[list[tuple[int, float]]]:
    """cv2's computeResizeAreaTab: the source cells (fractional at the ends) of each output pixel."""
    scale = 1.0 / (dsize / ssize)
    taps = []
    for dx in range(dsize):
        fsx1 = dx * scale
        fsx2 = fsx1 + scale
        cell = min(scale, ssize - fsx1)
        sx1, sx2 = math.ceil(fsx1), math.floor(fsx2)
        sx2 = min(sx2, ssize - 1)
        sx1 = min(sx1, sx2)
        t = []
        if sx1 - fsx1 > 1e-3:
            t.append((sx1 - 1, (sx1 - fsx1) / cell))
        for sx in range(sx1, sx2):
            t.append((sx, 1.0 / cell))
        if fsx2 - sx2 > 1e-3:
            t.append((sx2, min(min(fsx2 - sx2, 1.0), cell) / cell))
        taps.append(t)
    return taps


def _box_taps(dsize: int, k: int) -> list[list[tuple[int, float]]]:
    return [[(d * k + i, 1.0) for i in range(k)] for d in range(dsize)]


def _linear_taps(ssize: int, dsize: int, clamp_weights: bool) -> list[list[tuple[int, float]]]:
    """cv2's INTER_LINEAR coefficients as 11-bit integers. Columns clamp position and weight at the
    borders; rows keep the weight and clamp only the row index (that is what cv2 does)."""
    scale = 1.0 / (dsize / ssize)
    taps = []
    for d in range(dsize):
        f = np.float32((d + 0.5) * scale - 0.5)
        s = math.floor(f)
        f = np.float32(f - np.float32(s))
        if clamp_weights and s < 0:
            f, s = np.float32(0.0), 0
        if clamp_weights and s >= ssize - 1:
            f, s = np.float32(0.0), ssize - 1
        taps.append([(min(max(s, 0), ssize - 1), float(np.rint((np.float32(1.0) - f) * np.float32(2048.0)))),
                     (min(max(s + 1, 0), ssize - 1), float(np.rint(f * np.float32(2048.0))))])
    return taps


def _pack(taps: list[list[tuple[int, float]]], index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(T, n) source indices (through ``index``) and float32 weights, zero-weight padded to T taps."""
    t = max(len(x) for x in taps)
    idx = np.zeros((t, len(taps)), np.int64)
    w = np.zeros((t, len(taps)), np.float32)
    for d, x in enumerate(taps):
        for k, (i, wt) in enumerate(x):
            idx[k, d] = index[i]
            w[k, d] = np.float32(wt)
        idx[len(x):, d] = idx[0, d]  # padding reads a pixel it weights by zero
    return idx, w


def make_plan(crop_shape: tuple[int, int], field: int | None, out_hw: tuple[int, int]) -> ResamplePlan:
    """The tables for crops of ``crop_shape`` seen through a ``field``-pixel square (None: the whole
    crop) and resampled to ``out_hw`` the way cv2.resize does for uint8."""
    h0, w0 = crop_shape
    fh, fw = (h0, w0) if field is None else (field, field)
    rows, cols = _square_map(h0, field), _square_map(w0, field)
    h, w = out_hw
    inv_area = np.float32(1.0)
    if fh >= h and fw >= w:
        sy, sx = 1.0 / (h / fh), 1.0 / (w / fw)
        iy, ix = int(round(sy)), int(round(sx))
        if abs(sy - iy) < np.finfo(np.float64).eps and abs(sx - ix) < np.finfo(np.float64).eps:
            mode = AREA_2X2 if iy == 2 and ix == 2 else AREA_INT
            ytaps, xtaps = _box_taps(h, iy), _box_taps(w, ix)
            inv_area = np.float32(1.0 / (iy * ix))
        else:
            mode, ytaps, xtaps = AREA, _area_taps(fh, h), _area_taps(fw, w)
    else:
        mode, ytaps, xtaps = LINEAR, _linear_taps(fh, h, False), _linear_taps(fw, w, True)
    y_src, y_w = _pack(ytaps, rows)
    x_idx, x_w = _pack(xtaps, cols)
    used = np.unique(y_src)  # each crop row goes through the horizontal pass once
    y_pos = np.searchsorted(used, y_src)
    # unsigned indices spare numba's negative-index check on every pixel read (~13% of the kernel)
    return ResamplePlan(mode, used.astype(np.uint64), y_pos.astype(np.uint64), y_w, x_idx.astype(np.uint64), x_w, inv_area)


@njit(nogil=True, cache=True)
def _resample(src, mode, rows, y_pos, y_w, x_idx, x_w, inv_area, mean, inv, out):
    """One crop → one normalised float32 (h, w) channel, with cv2.resize's uint8 arithmetic.

    Every output value sees the same float32 operations in the same order as in cv2 (taps in
    increasing source order, starting from the first product); the loops over output pixels are
    what is vectorised, never a sum.
    """
    h, w = out.shape
    tx = x_idx.shape[0]
    ty = y_pos.shape[0]
    nr = rows.shape[0]
    if mode == AREA:
        hb = np.empty((nr, w), np.float32)
        for r in range(nr):
            s = src[rows[r]]
            hr = hb[r]
            for dx in range(w):
                hr[dx] = np.float32(s[x_idx[0, dx]]) * x_w[0, dx]
            for t in range(1, tx):
                for dx in range(w):
                    hr[dx] += np.float32(s[x_idx[t, dx]]) * x_w[t, dx]
        acc = np.empty(w, np.float32)
        for dy in range(h):
            b = y_w[0, dy]
            hr = hb[y_pos[0, dy]]
            for dx in range(w):
                acc[dx] = b * hr[dx]
            for t in range(1, ty):
                b = y_w[t, dy]
                hr = hb[y_pos[t, dy]]
                for dx in range(w):
                    acc[dx] += b * hr[dx]
            o = out[dy]
            for dx in range(w):
                o[dx] = (min(max(np.rint(acc[dx]), np.float32(0.0)), np.float32(255.0)) - mean) * inv
    elif mode == AREA_2X2 or mode == AREA_INT:
        hi = np.zeros((nr, w), np.int32)
        for r in range(nr):
            s = src[rows[r]]
            for t in range(tx):
                for dx in range(w):
                    hi[r, dx] += np.int32(s[x_idx[t, dx]])
        tot = np.empty(w, np.int32)
        for dy in range(h):
            for dx in range(w):
                tot[dx] = hi[y_pos[0, dy], dx]
            for t in range(1, ty):
                hr = hi[y_pos[t, dy]]
                for dx in range(w):
                    tot[dx] += hr[dx]
            o = out[dy]
            if mode == AREA_2X2:
                for dx in range(w):
                    o[dx] = (np.float32((tot[dx] + 2) >> 2) - mean) * inv
            else:
                for dx in range(w):
                    v = min(max(np.rint(np.float32(tot[dx]) * inv_area), np.float32(0.0)), np.float32(255.0))
                    o[dx] = (v - mean) * inv
    else:  # LINEAR: horizontal pass in integers (× 2048), vertical rounded as OpenCV's SIMD path does
        hi = np.empty((nr, w), np.int32)
        for r in range(nr):
            s = src[rows[r]]
            for dx in range(w):
                hi[r, dx] = (np.int32(s[x_idx[0, dx]]) * np.int32(x_w[0, dx])
                             + np.int32(s[x_idx[1, dx]]) * np.int32(x_w[1, dx]))
        for dy in range(h):
            h0 = hi[y_pos[0, dy]]
            h1 = hi[y_pos[1, dy]]
            b0 = np.int32(y_w[0, dy])
            b1 = np.int32(y_w[1, dy])
            o = out[dy]
            for dx in range(w):
                t = (((h0[dx] >> 4) * b0) >> 16) + (((h1[dx] >> 4) * b1) >> 16)
                o[dx] = (np.float32(min(max((t + 2) >> 2, 0), 255)) - mean) * inv


@njit(nogil=True, cache=True)
def _crops_to_image(first, last, chans, mode, rows, y_pos, y_w, x_idx, x_w, inv_area, mean, inv, out):
    """All channels of one cell into ``out`` (C, h, w): channel c is ``first`` if chans[c] == 0 else ``last``."""
    for c in range(chans.shape[0]):
        src = first if chans[c] == 0 else last
        _resample(src, mode, rows, y_pos, y_w, x_idx, x_w, inv_area, mean, inv, out[c])


def resample_reference(crop: np.ndarray, field: int | None, out_hw: tuple[int, int]) -> np.ndarray:
    """float32 (h, w): centre square + cv2.resize exactly as the preprocessing has always done it
    (the reference the kernel is held to, and the path for crops that are not uint8)."""
    crop = np.asarray(crop)
    if crop.dtype not in (np.uint8, np.uint16, np.float32):
        crop = crop.astype(np.float32)
    if field is not None:
        crop = _center_square(crop, field)
    h, w = out_hw
    if crop.shape == (h, w):
        return crop.astype(np.float32)
    interp = cv2.INTER_AREA if crop.shape[0] >= h and crop.shape[1] >= w else cv2.INTER_LINEAR
    return cv2.resize(crop, (w, h), interpolation=interp).astype(np.float32)


class Preprocessor:
    """Turns cell events (or arrays of crops and raw features) into the model's two inputs.

    Not thread-safe for :meth:`fill` into shared buffers; the rest keeps no per-call state except
    the plan cache (whose worst race is building a plan twice) and the :attr:`filled` counter.
    """

    def __init__(self, spec: ModelSpec):
        self.spec = spec
        self.channels = spec.image.channels
        self.out_hw = (spec.image.height, spec.image.width)
        f = spec.features
        self.feature_names = spec.feature_names
        self._offset = np.array([x.offset for x in f], np.float64)
        self._gain = np.array([x.gain for x in f], np.float64)
        self._fill = np.array([x.fill for x in f], np.float64)
        self._lo = np.array([x.clip[0] if x.clip else -np.inf for x in f], np.float64)
        self._hi = np.array([x.clip[1] if x.clip else np.inf for x in f], np.float64)
        # the same numbers as Python floats for the one-cell path (float64 either way: same results)
        self._feat_rows = tuple(zip(self.feature_names, self._offset.tolist(), self._gain.tolist(),
                                    self._fill.tolist(), self._lo.tolist(), self._hi.tolist()))
        pn = spec.pixel_norm
        self._per_image = pn.mode == "per_image"
        self._pmean = np.float32(pn.mean)
        self._pinv = np.float32(1.0 / pn.std)
        # the kernel normalises as it writes for fixed normalisation; per-image needs the whole channel first
        self._kmean = np.float32(0.0) if self._per_image else self._pmean
        self._kinv = np.float32(1.0) if self._per_image else self._pinv
        self._chans = np.array([0 if ch == "first" else 1 for ch in self.channels], np.int64)
        self._plans: dict[tuple, ResamplePlan] = {}
        #: how many missing (NaN) feature values were replaced by the spec's fill value so far
        self.filled = 0

    # -- features ---------------------------------------------------------------------------------

    def raw_features(self, events: Sequence) -> np.ndarray:
        """float64[N, F] of the events' features in the spec's order (unscaled)."""
        out = np.empty((len(events), len(self.feature_names)), np.float64)
        for i, e in enumerate(events):
            feats = e.features
            try:
                for j, name in enumerate(self.feature_names):
                    out[i, j] = feats[name]
            except KeyError as err:
                raise _missing_feature(e, i, err.args[0], self.feature_names) from None
        return out

    def scale_features(self, raw: np.ndarray) -> np.ndarray:
        """float32[N, F]: (raw − offset) · gain, NaN → fill, then clipped."""
        raw = np.asarray(raw, np.float64)
        if raw.ndim != 2 or raw.shape[1] != len(self.feature_names):
            raise ModelError(f"features must be (N, {len(self.feature_names)}) for {list(self.feature_names)}, got {raw.shape}")
        x = (raw - self._offset) * self._gain
        bad = ~np.isfinite(x)
        if bad.any():
            # a sorter must decide on every cell; a lost measurement becomes the neutral value and is counted
            self.filled += int(bad.sum())
            x = np.where(bad, self._fill, x)
        np.clip(x, self._lo, self._hi, out=x)
        return x.astype(np.float32)

    def _features_into(self, event, index: int, out: np.ndarray) -> None:
        """One event's scaled features into float32 ``out[F]``; the same float64 arithmetic as
        :meth:`scale_features` in plain Python, which for a handful of values beats NumPy's call overhead."""
        feats = event.features
        for j, (name, off, gain, fill, lo, hi) in enumerate(self._feat_rows):
            try:
                raw = feats[name]
            except KeyError:
                raise _missing_feature(event, index, name, self.feature_names) from None
            v = (math.nan if raw is None else float(raw) - off) * gain  # None: NaN, as NumPy stores it
            if not math.isfinite(v):
                self.filled += 1
                v = fill
            out[j] = min(max(v, lo), hi)

    # -- images -----------------------------------------------------------------------------------

    def field_pixels(self, pixel_size_um: float | None) -> int | None:
        """Side (pixels at ``pixel_size_um``) of the field the model sees; None: the whole crop."""
        im = self.spec.image
        if not im.physical:
            return None
        if pixel_size_um is None or not math.isfinite(pixel_size_um) or pixel_size_um <= 0:
            raise ModelError(
                f"the model sees a {im.crop_size_um:g} µm field (trained at {im.pixel_size_um:g} µm/pixel): "
                f"the crops' pixel size must be known, got {pixel_size_um}")
        return max(1, int(round(im.crop_size_um / pixel_size_um)))

    def plan(self, crop_shape: tuple[int, int], field: int | None) -> ResamplePlan:
        """The (cached) resampling tables for crops of ``crop_shape`` and a ``field``-pixel square."""
        key = (crop_shape, field)
        p = self._plans.get(key)
        if p is None:
            if len(self._plans) >= _PLAN_CACHE_MAX:
                self._plans.clear()
            p = self._plans[key] = make_plan(crop_shape, field, self.out_hw)
        return p

    def _cell_into(self, first, last, field: int | None, out: np.ndarray) -> None:
        """All channels of one cell into ``out`` (C, H, W), normalised unless per-image."""
        first = np.asarray(first)
        last = np.asarray(last)
        if first.ndim != 2 or last.ndim != 2:
            bad = first if first.ndim != 2 else last
            raise ModelError(f"crops must be 2-D grey images, got shape {bad.shape}")
        if first.size == 0 or last.size == 0:
            raise ModelError(f"crops must not be empty, got shapes {first.shape} and {last.shape}")
        if first.dtype == np.uint8 and last.dtype == np.uint8 and first.shape == last.shape:
            if not (first.flags.c_contiguous and last.flags.c_contiguous and first.flags.writeable and last.flags.writeable):
                # one array type for the kernel: compiled (or loaded from cache) at warm-up, never
                # for the first odd crop in the middle of a run
                first, last = np.array(first, order="C"), np.array(last, order="C")
            p = self.plan(first.shape, field)
            _crops_to_image(first, last, self._chans, p.mode, p.rows, p.y_pos, p.y_w, p.x_idx, p.x_w, p.inv_area,
                            self._kmean, self._kinv, out)
            return
        for j, ch in enumerate(self.channels):
            x = resample_reference(first if ch == "first" else last, field, self.out_hw)
            if not self._per_image:
                x -= self._pmean
                x *= self._pinv
            out[j] = x

    def images(self, first: Sequence[np.ndarray] | np.ndarray, last: Sequence[np.ndarray] | np.ndarray,
               pixel_size_um: float | Sequence[float] | None) -> np.ndarray:
        """float32[N, C, H, W] from the first and last crops of N cells (pixel size per cell or one for all)."""
        n = len(first)
        if len(last) != n:
            raise ModelError(f"{n} first crops but {len(last)} last crops")
        c = len(self.channels)
        h, w = self.out_hw
        out = np.empty((n, c, h, w), np.float32)
        sizes = pixel_size_um if isinstance(pixel_size_um, (list, tuple, np.ndarray)) else None
        field = None if sizes is not None else self.field_pixels(pixel_size_um)
        for i in range(n):
            if sizes is not None:
                try:
                    field = self.field_pixels(None if sizes[i] is None else float(sizes[i]))
                except ModelError as err:
                    raise ModelError(f"cell {i} of the batch: {err}") from None
            self._cell_into(first[i], last[i], field, out[i])
        if self._per_image:
            self._normalise(out)
        return out

    def _normalise(self, x: np.ndarray) -> np.ndarray:
        if self._per_image:
            mean = x.mean(axis=(2, 3), keepdims=True)
            std = x.std(axis=(2, 3), keepdims=True)
            x -= mean
            x /= np.maximum(std, 1e-6)
        else:
            x -= self._pmean
            x *= self._pinv
        return x

    # -- both ---------------------------------------------------------------------------------------

    def __call__(self, events: Sequence) -> tuple[np.ndarray, np.ndarray]:
        """(image float32[N, C, H, W], features float32[N, F]) for tracking.events.CellEvent objects."""
        events = list(events)
        feats = self.scale_features(self.raw_features(events))
        sizes = [e.crop_pixel_size_um for e in events]
        one = sizes[0] if sizes and all(s == sizes[0] for s in sizes) else sizes
        return self.images([e.first_crop for e in events], [e.last_crop for e in events], one), feats

    def fill(self, event, image: np.ndarray, features: np.ndarray, index: int = 0) -> None:
        """One event's inputs into preallocated ``image`` (C, H, W) and ``features`` (F,) float32 —
        the allocation-free path the classifier takes for a single cell; the same numbers as
        ``self([event])``."""
        self._features_into(event, index, features)
        px = event.crop_pixel_size_um
        self._cell_into(event.first_crop, event.last_crop, self.field_pixels(px) if self.spec.image.physical else None, image)
        if self._per_image:
            self._normalise(image[None])

    def arrays(self, first: np.ndarray, last: np.ndarray, raw_features: np.ndarray,
               pixel_size_um: float | Sequence[float] | None) -> tuple[np.ndarray, np.ndarray]:
        """The model inputs from stacked crops and a raw feature matrix already in the spec's order."""
        return self.images(first, last, pixel_size_um), self.scale_features(raw_features)


def _missing_feature(event, i: int, name: str, names) -> ModelError:
    return ModelError(f"event {getattr(event, 'index', i)}: lacks feature {name!r} that the model needs "
                      f"(model features: {list(names)})")


def _center_square(img: np.ndarray, n: int) -> np.ndarray:
    """The central n × n of ``img``, padded by edge replication where ``img`` is smaller."""
    out = img
    for axis in (0, 1):
        size = out.shape[axis]
        if size > n:
            s = (size - n) // 2
            out = out[s:s + n] if axis == 0 else out[:, s:s + n]
        elif size < n:
            before = (n - size) // 2
            pad = [(0, 0), (0, 0)]
            pad[axis] = (before, n - size - before)
            out = np.pad(out, pad, mode="edge")
    return out
