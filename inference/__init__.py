"""Inference: the MIML model contract (ONNX + spec), preprocessing and the ONNX Runtime classifier.

``from inference import Classifier, ModelSpec`` works; the names resolve on first use so that
importing a subpackage (``inference.training``) does not load ONNX Runtime.
"""

from __future__ import annotations

from mimlsort.lazy import lazy_exports

_LAZY = {
    "ModelSpec": "spec",
    "FeatureSpec": "spec",
    "ImageSpec": "spec",
    "PixelNorm": "spec",
    "Provenance": "spec",
    "read_spec": "spec",
    "Preprocessor": "preprocess",
    "Classifier": "classifier",
    "bundled_model": "classifier",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
