"""Losses MONAI lacks: the paper's pixel-weighted cross-entropy, Tversky + cross-entropy, nnU-Net's deep supervision
weights (the others come from ``monai.losses``)."""

from __future__ import annotations

from monai_unet.losses.deep_supervision import (
    StackedDeepSupervisionLoss,
    deep_supervision_loss,
    deep_supervision_weights,
)
from monai_unet.losses.tversky_ce import TverskyCELoss
from monai_unet.losses.weighted_ce import WeightedCrossEntropyLoss, split_weight

__all__ = [
    "StackedDeepSupervisionLoss",
    "TverskyCELoss",
    "WeightedCrossEntropyLoss",
    "deep_supervision_loss",
    "deep_supervision_weights",
    "split_weight",
]
