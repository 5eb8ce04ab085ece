"""Inferers: overlap-tile inference for networks with a halo (and a drop-in for padded ones)."""

from __future__ import annotations

from monai_unet.inferers.overlap_tile import OverlapTileInferer, channels_last_weights, overlap_tile_inference
from monai_unet.inferers.precision import PRECISIONS, resolve_precision
from monai_unet.inferers.tile_choice import (
    DEFAULT_MEMORY_BUDGET,
    auto_tile_size,
    choose_tile_size,
    clear_tile_timings,
    default_memory_budget,
    default_tile_size,
)

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "PRECISIONS",
    "OverlapTileInferer",
    "auto_tile_size",
    "channels_last_weights",
    "choose_tile_size",
    "clear_tile_timings",
    "default_memory_budget",
    "default_tile_size",
    "overlap_tile_inference",
    "resolve_precision",
]
