"""Inference: the MIML model contract (ONNX + spec), preprocessing and the ONNX Runtime classifier.

``from inference import Classifier, ModelSpec`` works; the names resolve on first use so that
importing a subpackage (``inference.training``) does not load ONNX Runtime.
"""

from __future__ import annotations

import importlib

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


def __getattr__(name: str):
    try:
        module = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
