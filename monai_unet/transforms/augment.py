"""The paper's augmentation as configurations of MONAI transforms, for code and bundle configs.

- :func:`paper_elastic_2d`: the paper's deformation (displacements on a coarse 3x3 grid, normal with 10 px
  standard deviation, bicubic interpolation to every pixel) as MONAI's ``Rand2DElasticd``.
- :func:`recommended_augmentations`: the recommended pipeline: shift (random crop, mirrored padding), flips and
  rotations, the elastic deformation (:class:`RandCoarseElasticd` in 3D), grey-value changes (contrast, scale,
  shift, noise). Images are expected scaled to about ``[0, 1]`` (e.g. ``ScaleIntensityd`` before it).

In a bundle config, as an item of the training ``Compose``::

    {"_target_": "monai_unet.transforms.recommended_augmentations", "keys": ["image", "label"],
     "spatial_size": "@patch_size"}

or ``{"_target_": "monai_unet.transforms.paper_elastic_2d", "keys": ["image", "label"], "spatial_size": 572}``.
(A ``$monai_unet.transforms...`` expression needs both ``"$import monai_unet"`` and
``"$import monai_unet.transforms"`` in ``imports``: MONAI binds ``import a.b`` to the name ``"a.b"`` only.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from monai.config import KeysCollection
from monai.transforms import (
    Compose,
    Rand2DElasticd,
    RandAdjustContrastd,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandRotate90d,
    RandScaleIntensityd,
    RandShiftIntensityd,
    RandSpatialCropd,
    SpatialPadd,
)
from monai.utils import ensure_tuple, ensure_tuple_rep

from monai_unet.transforms.elastic import RandCoarseElasticd

__all__ = ["paper_elastic_2d", "recommended_augmentations"]


def _modes(keys: tuple, image_keys: tuple, image_mode: str, label_mode: str) -> tuple[str, ...]:
    return tuple(image_mode if k in image_keys else label_mode for k in keys)


def paper_elastic_2d(
    keys: KeysCollection = ("image", "label"),
    spatial_size: Sequence[int] | int = 572,
    sigma: float = 10.0,
    grid_points: int = 3,
    prob: float = 1.0,
    image_keys: KeysCollection = ("image",),
    rotate_range: float | None = None,
    padding_mode: str = "reflection",
) -> Rand2DElasticd:
    """The paper's 2D elastic deformation as MONAI's ``Rand2DElasticd``.

    MONAI draws one normal offset per control point scaled by a magnitude from ``magnitude_range``; a fixed
    magnitude ``(sigma, sigma)`` makes the offsets normal with standard deviation ``sigma`` pixels. The control
    spacing ``size / (grid_points - 1)`` gives the density of a ``grid_points`` x ``grid_points`` grid spanning the
    tile (MONAI centres its lattice on the tile and adds control points outside it, so that the bicubic
    interpolation, of the grid itself, is defined up to the borders).

    Args:
        keys: keys moved together by the same field.
        spatial_size: the tile size the transform will see (``(H, W)`` or one int), which sets the grid spacing.
        sigma: standard deviation of the displacements in pixels (10 in the paper).
        grid_points: control points per axis across the tile (3 in the paper).
        prob: probability of deforming a sample.
        image_keys: keys interpolated bilinearly; the others (labels) by nearest neighbour, keeping their values.
        rotate_range: optional random rotation in radians, ``uniform[-r, r]``, folded into the same resampling.
        padding_mode: how values outside the tile are found (``"reflection"`` mirrors, as the paper's tiles do).

    Returns:
        a configured ``monai.transforms.Rand2DElasticd``.
    """
    if grid_points < 2:
        raise ValueError(f"grid_points must be at least 2, got {grid_points}.")
    if sigma < 0:
        raise ValueError(f"sigma must be non-negative, got {sigma}.")
    size = ensure_tuple_rep(spatial_size, 2)
    spacing = tuple(max(1.0, s / (grid_points - 1)) for s in size)
    keys = ensure_tuple(keys)
    return Rand2DElasticd(
        keys=keys,
        spacing=spacing,
        magnitude_range=(sigma, sigma),
        prob=prob,
        rotate_range=None if rotate_range is None else (rotate_range,),
        mode=_modes(keys, ensure_tuple(image_keys), "bilinear", "nearest"),
        padding_mode=padding_mode,
    )


def recommended_augmentations(
    keys: KeysCollection = ("image", "label"),
    spatial_size: Sequence[int] | int = 572,
    spatial_dims: int = 2,
    image_keys: KeysCollection = ("image",),
    elastic_sigma: Sequence[float] | float = 10.0,
    elastic_prob: float = 0.9,
    rotate: bool = True,
    intensity_prob: float = 0.3,
    intensity_scale: float = 0.1,
    channel_wise: bool = False,
    noise_std: float = 0.05,
    rotate_range: Sequence[float] | float | None = None,
    scale_range: Sequence[float] | float | None = None,
    affine_prob: float = 0.2,
) -> Compose:
    """The recommended training augmentation, from MONAI transforms (one ``Compose``).

    In order: mirror-pad to at least ``spatial_size`` and crop a random ``spatial_size`` tile (shift); random flips
    along every axis and 90-degree rotations in the first two axes (when they have equal sizes); the elastic
    deformation (2D: :func:`paper_elastic_2d` with a random rotation folded in when ``rotate``; 3D and more:
    :class:`RandCoarseElasticd` with per-axis ``elastic_sigma`` in voxels); on ``image_keys`` only: gamma contrast
    (0.7-1.5), intensity scale (+-``intensity_scale``, 10%) and shift (+-``intensity_scale``), each drawn per channel
    with ``channel_wise`` (as nnU-Net's brightness and contrast: one MR sequence brighter, another not), Gaussian
    noise. In 3D, ``rotate_range`` and ``scale_range`` add nnU-Net's random rotation and scaling (MONAI's
    ``RandAffined``, mirrored borders) before the elastic deformation: for a slice-by-slice (``2d``) plan, any
    angle about the slice axis and +-30% in plane, e.g. ``rotate_range=(0, 0, 3.1416)``, ``scale_range=(0.3, 0.3,
    0)``.

    Args:
        keys: image and label keys (labels: every key not in ``image_keys``; nearest-neighbour interpolation).
        spatial_size: the network's input tile, e.g. ``network.input_size(...)`` or a valid size.
        spatial_dims: 2 or 3.
        image_keys: keys whose grey values are changed and which are interpolated bilinearly.
        elastic_sigma: displacement standard deviation in pixels/voxels (one value or one per axis in 3D).
        elastic_prob: probability of the elastic deformation.
        rotate: add random rotations (any angle in 2D, folded into the elastic resampling; 90-degree steps).
        intensity_prob: probability of each grey-value change.
        intensity_scale: the largest relative intensity scale and the largest shift (in normalised grey values).
        channel_wise: draw the scale and the shift per channel (multi-sequence images) rather than one for all.
        noise_std: maximum standard deviation of the Gaussian noise.
        rotate_range: 3D only: rotation angles in radians about each axis, ``uniform[-r, r]`` (``None``: none).
        scale_range: 3D only: zoom per axis, a factor ``1 + uniform[-s, s]`` (``None``: none).
        affine_prob: probability of the rotation and scaling (nnU-Net: 0.2 each).

    Returns:
        ``monai.transforms.Compose`` of dictionary transforms; weight maps are best made after it, from the
        deformed label (:class:`monai_unet.transforms.BorderWeightMapd`).
    """
    if spatial_dims < 2:
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
    if not 0.0 <= intensity_scale < 1.0:
        raise ValueError(f"intensity_scale must be in [0, 1), got {intensity_scale}.")
    if spatial_dims == 2 and (rotate_range is not None or scale_range is not None):
        raise ValueError(
            "rotate_range and scale_range are for 3D; in 2D the rotation is folded into the elastic deformation "
            "(rotate=True)."
        )
    keys = ensure_tuple(keys)
    image_keys = tuple(k for k in ensure_tuple(image_keys) if k in keys)
    size = ensure_tuple_rep(spatial_size, spatial_dims)
    transforms: list = [
        SpatialPadd(keys=keys, spatial_size=size, mode="reflect"),
        RandSpatialCropd(keys=keys, roi_size=size, random_size=False),
    ]
    transforms += [RandFlipd(keys=keys, prob=0.5, spatial_axis=axis) for axis in range(spatial_dims)]
    if rotate and size[0] == size[1]:
        transforms.append(RandRotate90d(keys=keys, prob=0.5, max_k=3, spatial_axes=(0, 1)))
    if spatial_dims == 2:
        sigma = ensure_tuple(elastic_sigma)[0]
        transforms.append(
            paper_elastic_2d(
                keys,
                size,
                sigma=sigma,
                prob=elastic_prob,
                image_keys=image_keys,
                rotate_range=math.pi if rotate else None,
            )
        )
    else:
        if any(ensure_tuple(rotate_range or 0.0)) or any(ensure_tuple(scale_range or 0.0)):
            transforms.append(
                RandAffined(
                    keys=keys,
                    prob=affine_prob,
                    spatial_size=size,
                    rotate_range=None if rotate_range is None else ensure_tuple_rep(rotate_range, spatial_dims),
                    scale_range=None if scale_range is None else ensure_tuple_rep(scale_range, spatial_dims),
                    mode=_modes(keys, image_keys, "bilinear", "nearest"),
                    padding_mode="reflection",
                )
            )
        transforms.append(
            RandCoarseElasticd(
                keys=keys,
                sigma=elastic_sigma,
                control_points=3,
                prob=elastic_prob,
                mode=_modes(keys, image_keys, "bilinear", "nearest"),
            )
        )
    if image_keys:
        transforms += [
            RandAdjustContrastd(keys=image_keys, prob=intensity_prob, gamma=(0.7, 1.5)),
            RandScaleIntensityd(
                keys=image_keys, factors=intensity_scale, prob=intensity_prob, channel_wise=channel_wise
            ),
            RandShiftIntensityd(
                keys=image_keys, offsets=intensity_scale, prob=intensity_prob, channel_wise=channel_wise
            ),
            RandGaussianNoised(keys=image_keys, prob=intensity_prob, std=noise_std),
        ]
    return Compose(transforms)
