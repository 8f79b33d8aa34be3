"""The background the segmentation compares frames against.

The initial estimate is a per-pixel median of a frame stack: passing cells cover any pixel for a
few frames only, so the median is the empty channel. During a run the model follows slow drifts
(illumination, focus, debris settling) with a running average that leaves out pixels differing
from the model by more than ``threshold`` — those are cells, and averaging them in would darken the
channel exactly where cells pass. Cells therefore never leak into the background, while a real
step change larger than ``threshold`` is never learned (re-estimate the model for that).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from mimlsort.errors import ConfigError, DataFormatError
from tracking._pure import pure_python
from mimlsort.settings import require

_KERNELS = ("numba", "python")


@njit(nogil=True, cache=True)
def update_kernel(images, slots, stride, alpha, threshold, acc, image):
    """Running update of ``acc`` (float32) from every ``stride``-th frame of ``images[slots]``;
    ``image`` (frame dtype) receives the rounded model. Pixels with |frame - model| > threshold
    are left out. Returns the number of frames used."""
    n = slots.shape[0]
    h, w = acc.shape
    used = 0
    for f in range(0, n, stride):
        img = images[slots[f]]
        for y in range(h):
            for x in range(w):
                a = acc[y, x]
                d = np.float32(img[y, x]) - a
                if abs(d) <= threshold:
                    acc[y, x] = a + alpha * d
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
                 kernels: str = "numba"):
        if kernels not in _KERNELS:
            raise ConfigError("tracking.kernels", f"must be 'numba' or 'python', got {kernels!r}")
        image = np.asarray(image)
        if image.ndim != 2 or image.dtype.kind not in "ui":
            raise DataFormatError(f"background must be a 2-D integer image, got {image.dtype} {image.shape}")
        require(0 < alpha <= 1, "tracking.background.alpha", f"must be in (0, 1], got {alpha}")
        require(stride >= 1, "tracking.background.stride", f"must be >= 1, got {stride}")
        require(threshold > 0, "tracking.background.threshold", f"must be > 0, got {threshold}")
        self.image = np.ascontiguousarray(image).copy()
        self._acc = self.image.astype(np.float32)
        self.alpha = float(alpha)
        self.stride = int(stride)
        self.threshold = float(threshold)
        self._kernel = pure_python(update_kernel) if kernels == "python" else update_kernel
        self._phase = 0  # frames since the last used one, so stride holds across batches

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
    def estimate(stack: np.ndarray) -> np.ndarray:
        """Per-pixel median of a ``(n, H, W)`` stack, rounded to the frames' dtype."""
        stack = np.asarray(stack)
        if stack.ndim != 3 or stack.shape[0] < 1:
            raise DataFormatError(f"background needs a (n, H, W) frame stack, got shape {stack.shape}")
        if stack.dtype.kind not in "ui":
            raise DataFormatError(f"background needs integer frames, got {stack.dtype}")
        med = np.median(stack, axis=0)
        return np.floor(med + 0.5).astype(stack.dtype)

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
                                np.float32(self.threshold), self._acc, self.image))
