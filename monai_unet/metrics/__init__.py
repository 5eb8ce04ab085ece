"""Metrics MONAI lacks: the ISBI 2012 pixel and Rand errors, as MONAI metrics and ignite handlers."""

from __future__ import annotations

from monai_unet.metrics.handlers import PixelError, RandError
from monai_unet.metrics.isbi import (
    PixelErrorMetric,
    RandErrorMetric,
    class_map,
    compute_pixel_error,
    compute_rand_error,
)

__all__ = [
    "PixelError",
    "PixelErrorMetric",
    "RandError",
    "RandErrorMetric",
    "class_map",
    "compute_pixel_error",
    "compute_rand_error",
]
