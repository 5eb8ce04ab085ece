"""Inferers: overlap-tile inference for networks with a halo (and a drop-in for padded ones)."""

from __future__ import annotations

from monai_unet.inferers.overlap_tile import (
    OverlapTileInferer,
    auto_tile_size,
    choose_tile_size,
    overlap_tile_inference,
)

__all__ = ["OverlapTileInferer", "auto_tile_size", "choose_tile_size", "overlap_tile_inference"]
