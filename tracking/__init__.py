"""Tracking: background, numba segmentation/measurement kernels, the tracker, feature definitions, geometry."""
