"""MONAI-style transforms MONAI lacks: the border weight map, coarse-grid elastic deformation in N-d, the paper's
augmentation as configurations of MONAI's own transforms, and a plan's per-channel intensity normalisation."""

from __future__ import annotations

from monai_unet.transforms.augment import paper_elastic_2d, recommended_augmentations
from monai_unet.transforms.elastic import (
    RandCoarseElastic,
    RandCoarseElasticd,
    coarse_displacement_field,
    coarse_elastic_deform,
)
from monai_unet.transforms.normalize import PlannedNormalize, PlannedNormalized, normalize_channel
from monai_unet.transforms.weight_map import BorderWeightMap, BorderWeightMapd, border_weight_map, object_labels

__all__ = [
    "BorderWeightMap",
    "BorderWeightMapd",
    "PlannedNormalize",
    "PlannedNormalized",
    "RandCoarseElastic",
    "RandCoarseElasticd",
    "border_weight_map",
    "coarse_displacement_field",
    "coarse_elastic_deform",
    "normalize_channel",
    "object_labels",
    "paper_elastic_2d",
    "recommended_augmentations",
]
