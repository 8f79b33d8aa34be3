"""Preprocessing built only from a :class:`~inference.spec.ModelSpec`: crops → ``image``, features → ``features``.

Training (inference.training) and sorting (inference.classifier) both call this module, so what a
model saw in training is exactly what it sees at the microscope.

Images: for each channel the named crop (first/last) is brought to the model's physical scale —
the central ``crop_size_um`` of the crop at the event's pixel size, cut or padded (edge pixels,
which are background in tracker crops) to a square of ``round(crop_size_um / pixel_size)`` pixels
— then resampled to height × width (area averaging when shrinking, bilinear when enlarging) and
normalised. Features: taken in the spec's order, scaled, NaN replaced by the spec's fill value and
clipped.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from mimlsort.errors import ModelError

from .spec import ModelSpec

__all__ = ["Preprocessor"]


class Preprocessor:
    """Turns cell events (or arrays of crops and raw features) into the model's two inputs."""

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
        pn = spec.pixel_norm
        self._per_image = pn.mode == "per_image"
        self._pmean = np.float32(pn.mean)
        self._pinv = np.float32(1.0 / pn.std)
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
                raise ModelError(
                    f"event {getattr(e, 'index', i)}: lacks feature {err.args[0]!r} that the model needs "
                    f"(model features: {list(self.feature_names)})") from None
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

    # -- images -----------------------------------------------------------------------------------

    def field_pixels(self, pixel_size_um: float | None) -> int | None:
        """Side (pixels at ``pixel_size_um``) of the field the model sees; None: the whole crop."""
        im = self.spec.image
        if not im.physical:
            return None
        if pixel_size_um is None or not np.isfinite(pixel_size_um) or pixel_size_um <= 0:
            raise ModelError(
                f"the model sees a {im.crop_size_um:g} µm field (trained at {im.pixel_size_um:g} µm/pixel): "
                f"the crops' pixel size must be known, got {pixel_size_um}")
        return max(1, int(round(im.crop_size_um / pixel_size_um)))

    def _one(self, crop: np.ndarray, n: int | None, out: np.ndarray) -> None:
        crop = np.asarray(crop)
        if crop.ndim != 2:
            raise ModelError(f"crops must be 2-D grey images, got shape {crop.shape}")
        if crop.dtype not in (np.uint8, np.uint16, np.float32):
            crop = crop.astype(np.float32)
        if n is not None:
            crop = _center_square(crop, n)
        h, w = self.out_hw
        interp = cv2.INTER_AREA if crop.shape[0] >= h and crop.shape[1] >= w else cv2.INTER_LINEAR
        if crop.shape == (h, w):
            out[...] = crop
        else:
            out[...] = cv2.resize(crop, (w, h), interpolation=interp)

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
            for j, ch in enumerate(self.channels):
                self._one(first[i] if ch == "first" else last[i], field, out[i, j])
        return self._normalise(out)

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

    def arrays(self, first: np.ndarray, last: np.ndarray, raw_features: np.ndarray,
               pixel_size_um: float | Sequence[float] | None) -> tuple[np.ndarray, np.ndarray]:
        """The model inputs from stacked crops and a raw feature matrix already in the spec's order."""
        return self.images(first, last, pixel_size_um), self.scale_features(raw_features)


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
