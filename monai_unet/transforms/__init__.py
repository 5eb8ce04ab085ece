"""MONAI-style transforms MONAI lacks: the border weight map, coarse-grid elastic deformation in N-d, and the
paper's augmentation as configurations of MONAI's own transforms."""

from __future__ import annotations

from monai_unet.transforms.augment import paper_elastic_2d, recommended_augmentations
from monai_unet.transforms.elastic import (
    RandCoarseElastic,
    RandCoarseElasticd,
    coarse_displacement_field,
    coarse_elastic_deform,
)
from monai_unet.transforms.weight_map import BorderWeightMap, BorderWeightMapd, border_weight_map, object_labels

__all__ = [
    "BorderWeightMap",
    "BorderWeightMapd",
    "RandCoarseElastic",
    "RandCoarseElasticd",
    "border_weight_map",
    "coarse_displacement_field",
    "coarse_elastic_deform",
    "object_labels",
    "paper_elastic_2d",
    "recommended_augmentations",
]
