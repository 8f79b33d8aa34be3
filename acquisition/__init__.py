"""Acquisition: frames, the frame ring, the camera contract and its backends, raw recording."""

from acquisition.camera import BACKENDS, Camera, CameraInfo, CameraState, GrabResult, camera_class, make_camera
from acquisition.frame import Frame, FrameBatch, FrameRing, RingReader

__all__ = [
    "BACKENDS",
    "Camera",
    "CameraInfo",
    "CameraState",
    "Frame",
    "FrameBatch",
    "FrameRing",
    "GrabResult",
    "RingReader",
    "camera_class",
    "make_camera",
]
