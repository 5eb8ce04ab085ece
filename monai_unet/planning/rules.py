"""The planning rules, as plain functions of a dataset's numbers (nnU-Net v2's rules, adapted to a valid network).

Each rule returns its choice and a reason string that states the numbers it used, so a plan can say why. Nothing
here reads files or builds a network: the size arithmetic of a valid U-Net is asked of
:class:`monai_unet.networks.sizes.AxisRule`.

- :func:`target_spacing`: the median spacing; along an anisotropic axis the 10th percentile (nnU-Net's
  ``determine_fullres_target_spacing``).
- :func:`plan_topology`: kernel sizes and strides per level (nnU-Net's ``get_pool_and_conv_props``), with the
  feature-map minimum checked on the shrinking maps of a valid network.
- :func:`plan_features`: channels per level, doubling from a base up to a cap.
- :func:`choose_normalization`: per channel, CT clipping + dataset z-score or per-image z-score (in the nonzero
  mask for skull-stripped data).
- :func:`foreground_oversampling`: how many training tiles are centred on foreground.
- :func:`choose_batch_size`: nnU-Net's reference batch, capped at 5% of the dataset's voxels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from monai_unet.networks.sizes import AxisRule

__all__ = [
    "ANISOTROPY_THRESHOLD",
    "MIN_FEATURE_MAP",
    "NNUNET_OVERSAMPLING",
    "NONZERO_MASK_THRESHOLD",
    "Topology",
    "choose_batch_size",
    "choose_normalization",
    "foreground_oversampling",
    "plan_features",
    "plan_topology",
    "target_spacing",
]

ANISOTROPY_THRESHOLD = 3.0  # nnU-Net: an axis is anisotropic when > 3x coarser and with > 3x fewer voxels
MIN_FEATURE_MAP = 4  # nnU-Net: UNet_featuremap_min_edge_length
NNUNET_OVERSAMPLING = 0.33  # nnU-Net: nnUNetTrainer.oversample_foreground_percent
RARE_FOREGROUND = 0.01  # foreground under this share of the voxels is rare: RARE_TARGET of the tiles should hold it
RARE_TARGET = 0.9
NONZERO_MASK_THRESHOLD = 0.75  # nnU-Net: z-score inside the nonzero mask when cropping leaves < 3/4 of the image
AXES = "xyz"


def _fmt(values: Sequence[float], digits: int = 4) -> str:
    return " x ".join(f"{float(v):.{digits}g}" for v in values)


def axis_name(axis: int, dims: int) -> str:
    """``x``/``y``/``z`` (RAS axes after ``Orientationd``); 2D images have ``x``/``y``."""
    return AXES[axis] if dims <= 3 else str(axis)


# ----------------------------------------------------------------------------------------------------------- spacing


def target_spacing(
    spacings: Sequence[Sequence[float]],
    shapes: Sequence[Sequence[int]],
    threshold: float = ANISOTROPY_THRESHOLD,
) -> tuple[tuple[float, ...], str]:
    """The spacing every case is resampled to, nnU-Net's rule.

    The median spacing of the cases; but when the coarsest axis of the median is more than ``threshold`` times
    coarser than the finest other axis *and* has more than ``threshold`` times fewer voxels (median shape), its
    target is the 10th percentile of that axis' spacings, never finer than the coarsest other axis: resampling
    thick slices to the median would invent slices for most cases.

    Args:
        spacings: per case, the spacing (mm) of each spatial axis.
        shapes: per case, the shape (voxels) of each spatial axis (nnU-Net: after cropping to the nonzero region).
        threshold: the anisotropy ratio.

    Returns:
        ``(spacing, reason)``.
    """
    sp = np.asarray(spacings, dtype=np.float64)
    sh = np.asarray(shapes, dtype=np.float64)
    if sp.ndim != 2 or len(sp) == 0 or sp.shape != sh.shape:
        raise ValueError(f"spacings and shapes need one row per case of equal length, got {sp.shape} and {sh.shape}.")
    target = np.median(sp, axis=0)
    median_shape = np.median(sh, axis=0)
    dims = sp.shape[1]
    reason = f"the median spacing of {len(sp)} case(s), {_fmt(target)} mm"
    worst = int(np.argmax(target))
    others = [a for a in range(dims) if a != worst]
    if others:
        coarse = target[worst] > threshold * target[others].min()
        few = median_shape[worst] * threshold < median_shape[others].min()
        name, median_worst = axis_name(worst, dims), float(target[worst])
        if coarse and few:
            p10 = float(np.percentile(sp[:, worst], 10))
            floor = float(target[others].max())
            target[worst] = max(p10, floor)
            reason += (
                f"; {name} is anisotropic ({median_worst:.4g} mm > {threshold:g}x {target[others].min():.4g} mm, "
                f"median {median_shape[worst]:.0f} voxels < 1/{threshold:g} of {median_shape[others].min():.0f}): "
                f"its target is the 10th percentile of its spacings ({p10:.4g} mm), never finer than the in-plane "
                f"{floor:.4g} mm (nnU-Net's rule)"
            )
    same = [a for a in range(dims) if np.allclose(sp[:, a], target[a], rtol=1e-3)]
    if same:
        axes = ", ".join(axis_name(a, dims) for a in same)
        reason += f"; every case already has this spacing along {axes}: no resampling along it"
    return tuple(float(v) for v in target), reason


# ---------------------------------------------------------------------------------------------------------- topology


@dataclass(frozen=True)
class Topology:
    """Kernels and strides per level (DynUNet's names, as :class:`monai_unet.networks.UNet` takes them).

    Attributes:
        kernel_size: per level (top first), the kernel per axis.
        strides: per level, the down-sampling before it per axis (``strides[0]`` is all ones).
        spacings: per level, the voxel spacing of its feature maps (mm).
        sizes: per level, the feature-map size after its two convolutions, for the planning size.
        padding: ``"valid"`` or ``"same"``.
    """

    kernel_size: tuple[tuple[int, ...], ...]
    strides: tuple[tuple[int, ...], ...]
    spacings: tuple[tuple[float, ...], ...]
    sizes: tuple[tuple[int, ...], ...]
    padding: str = "valid"

    @property
    def levels(self) -> int:
        return len(self.kernel_size)

    @property
    def axis_rules(self) -> tuple[AxisRule, ...]:
        """The size rules of each axis of a U-Net with this topology."""
        dims = len(self.kernel_size[0])
        return tuple(
            AxisRule(tuple(k[a] for k in self.kernel_size), tuple(s[a] for s in self.strides), self.padding)
            for a in range(dims)
        )

    def table(self) -> list[str]:
        """One line per level: spacing, kernel, stride, feature-map size."""
        return [
            f"level {lv}: stride {'x'.join(map(str, s))}, kernel {'x'.join(map(str, k))}, spacing "
            f"{_fmt(sp, 3)} mm, map {'x'.join(map(str, m))}"
            for lv, (k, s, sp, m) in enumerate(zip(self.kernel_size, self.strides, self.spacings, self.sizes))
        ]


def _kernel_for(spacing: Sequence[float], previous: Sequence[int], flat: Sequence[int] = ()) -> list[int]:
    """3 along axes within 2x of the finest spacing (and along any axis that already had 3), else 1; always 1
    along the ``flat`` axes."""
    finest = min(s for a, s in enumerate(spacing) if a not in flat)
    return [1 if a in flat else 3 if k == 3 or s / finest < 2 else 1 for a, (k, s) in enumerate(zip(previous, spacing))]


def plan_topology(
    spacing: Sequence[float],
    size: Sequence[int],
    min_feature_map: int = MIN_FEATURE_MAP,
    max_pools: int = 5,
    padding: str = "valid",
    flat: Sequence[int] = (),
) -> Topology:
    """Kernel sizes and strides per level from the spacing, nnU-Net's ``get_pool_and_conv_props`` for a valid net.

    Level by level: the kernel is 3 along an axis once its current spacing is within 2x of the finest (1 before:
    a 1-wide kernel along a coarse axis loses nothing along it), and an axis is pooled (stride 2) before the next
    level only while its spacing is within 2x of the finest among the axes that can still be pooled, it has been
    pooled fewer than ``max_pools`` times, and the feature map stays large enough. nnU-Net (same padding) pools
    while the pooled map is at least ``min_feature_map`` wide; in a valid network every level's two convolutions
    shrink the map by ``2 (k - 1)``, so here the map is followed through the valid convolutions from an input of
    ``size`` and an axis is pooled only if the next level's map *after its convolutions* is still at least
    ``min_feature_map`` wide (nnU-Net's extra rule holds too: a lone axis is pooled only from
    ``3 * min_feature_map``). A tile whose output covers ``size`` is larger than ``size`` (by twice the halo), so
    its maps are larger still: the minimum holds at every valid tile the planner picks.

    Args:
        spacing: the target spacing (mm) per axis.
        size: the region (voxels per axis) the tile's output should cover: the median case shape, or less when
            memory is short.
        min_feature_map: the narrowest feature map, per axis.
        max_pools: the most poolings along one axis (the depth cap).
        padding: ``"valid"`` or ``"same"``.
        flat: axes planned slice by slice (nnU-Net's ``2d`` configuration on a volume): kernel 1 and never
            pooled, so the network sees each slice on its own along them.

    Returns:
        The :class:`Topology`; its bottom level may be level 0 (no pooling) for a tiny ``size``.
    """
    dims = len(spacing)
    if len(size) != dims or min(spacing) <= 0 or min(size) < 1:
        raise ValueError(f"spacing {tuple(spacing)} and size {tuple(size)} need one positive value per axis.")
    valid = padding == "valid"
    cur_sp = [float(s) for s in spacing]
    cur = [int(s) for s in size]
    pools = [0] * dims
    flat = tuple(flat)
    if len(flat) >= dims:
        raise ValueError(f"flat axes {flat}: at least one of the {dims} axes must be planned.")
    kernel = _kernel_for(cur_sp, [1] * dims, flat)
    kernels: list[tuple[int, ...]] = []
    strides: list[tuple[int, ...]] = [(1,) * dims]
    spacings: list[tuple[float, ...]] = []
    sizes: list[tuple[int, ...]] = []

    def after_convs(s: Sequence[int], k: Sequence[int]) -> list[int]:
        return [v - 2 * (kk - 1) if valid else v for v, kk in zip(s, k)]

    while True:
        kernels.append(tuple(kernel))
        spacings.append(tuple(cur_sp))
        out = after_convs(cur, kernel)
        sizes.append(tuple(out))
        if len(kernels) > 64:  # unreachable in practice: every pooling halves a map
            break
        # the axes large enough to pool, then within 2x of the finest of those, then under the pooling cap
        axes = [a for a in range(dims) if a not in flat and out[a] >= 2 * min_feature_map and pools[a] < max_pools]
        if not axes:
            break
        finest = min(cur_sp[a] for a in axes)
        axes = [a for a in axes if cur_sp[a] / finest < 2]
        while axes:  # the next level's kernel depends on which axes are pooled: settle both together
            nxt_sp = [s * 2 if a in axes else s for a, s in enumerate(cur_sp)]
            nxt_kernel = _kernel_for(nxt_sp, kernel, flat)
            nxt = [v // 2 if a in axes else v for a, v in enumerate(out)]
            nxt_out = after_convs(nxt, nxt_kernel)
            keep = [a for a in axes if nxt_out[a] >= min_feature_map]
            if len(keep) == len(axes):
                break
            axes = keep
        if not axes or (len(axes) == 1 and out[axes[0]] < 3 * min_feature_map):
            break
        stride = tuple(2 if a in axes else 1 for a in range(dims))
        for a in axes:
            pools[a] += 1
            cur_sp[a] *= 2
        cur = [v // 2 if a in axes else v for a, v in enumerate(out)]
        strides.append(stride)
        kernel = _kernel_for(cur_sp, kernel, flat)
    return Topology(tuple(kernels), tuple(strides), tuple(spacings), tuple(sizes), padding)


def plan_features(levels: int, base: int, maximum: int) -> tuple[int, ...]:
    """Channels per level: ``base`` doubling per level, capped at ``maximum`` (nnU-Net: 32 doubling to 320)."""
    if base < 1 or maximum < base:
        raise ValueError(f"base_features must be >= 1 and max_features >= base_features, got {base} and {maximum}.")
    return tuple(min(base * 2**level, maximum) for level in range(levels))


# ----------------------------------------------------------------------------------------------------- normalisation


def choose_normalization(
    modalities: Sequence[str],
    foreground_stats: Sequence[Mapping[str, float] | None],
    relative_size_after_crop: float,
) -> tuple[list[dict], list[str]]:
    """Per channel, the intensity normalisation (the ``normalization`` key of a plan), nnU-Net's rules.

    - CT (``modality`` ``"CT"``, from dataset.json or the DICOM Modality): clip to the 0.5-99.5 percentiles of the
      dataset's foreground voxels, then z-score with the foreground mean and std (Hounsfield units mean the same
      in every image): ``{"scheme": "ct", "clip": [lo, hi], "mean": m, "std": s}``.
    - Anything else (MR...): per-image z-score, ``{"scheme": "zscore", "nonzero": bool}``, inside the nonzero mask
      when cropping to the nonzero region left less than 3/4 of the median image (skull-stripped: the zeros are not
      tissue).

    Args:
        modalities: one name per channel (``"CT"``, ``"MR"``, ``"T1post"``...).
        foreground_stats: per channel, ``{"mean", "std", "p00_5", "p99_5"}`` over the foreground voxels of the
            dataset (``None`` when no case has foreground).
        relative_size_after_crop: the median over cases of (voxels after nonzero cropping / voxels).

    Returns:
        ``(schemes, reasons)``, one each per channel.
    """
    schemes, reasons = [], []
    masked = relative_size_after_crop < NONZERO_MASK_THRESHOLD
    for c, (modality, stats) in enumerate(zip(modalities, foreground_stats)):
        if str(modality).strip().upper() == "CT":
            if stats is None:
                raise ValueError(
                    f"channel {c} is CT but no case has foreground voxels to take the clipping percentiles from."
                )
            lo, hi = float(stats["p00_5"]), float(stats["p99_5"])
            mean, std = float(stats["mean"]), max(float(stats["std"]), 1e-8)
            schemes.append({"scheme": "ct", "clip": [lo, hi], "mean": mean, "std": std})
            reasons.append(
                f"channel {c} ({modality}): CT, so clip to the foreground's 0.5-99.5 percentiles [{lo:.5g}, {hi:.5g}] "
                f"and z-score with its mean {mean:.5g} and std {std:.5g} (nnU-Net's CTNormalization: the intensity "
                "scale is physical)"
            )
        else:
            schemes.append({"scheme": "zscore", "nonzero": bool(masked)})
            where = (
                f"inside the nonzero mask (cropping to the nonzero region leaves {relative_size_after_crop:.0%} of the "
                f"median image, < {NONZERO_MASK_THRESHOLD:.0%}: skull-stripped, the zeros are not tissue)"
                if masked
                else f"over the whole image (cropping to the nonzero region leaves {relative_size_after_crop:.0%} "
                f"of the median image, >= {NONZERO_MASK_THRESHOLD:.0%}: not skull-stripped)"
            )
            reasons.append(
                f"channel {c} ({modality}): not CT, intensities have no fixed scale: per-image z-score {where} "
                "(nnU-Net's ZScoreNormalization)"
            )
    return schemes, reasons


# ------------------------------------------------------------------------------------------------------ oversampling


def random_tile_hit_rate(
    output_size: Sequence[int], shapes: Sequence[Sequence[int]], extents: Sequence[Sequence[int] | None]
) -> float:
    """The mean over cases of the chance that a randomly placed output window overlaps the foreground's bounding
    box (per axis ``(out + extent) / shape``, at most 1; 0 for a case without foreground)."""
    rates = []
    for shape, extent in zip(shapes, extents):
        if extent is None:
            rates.append(0.0)
            continue
        p = 1.0
        for out, n, e in zip(output_size, shape, extent):
            p *= min(1.0, (out + e) / max(n, 1))
        rates.append(p)
    return float(np.mean(rates)) if rates else 0.0


def foreground_oversampling(
    hit_rate: float, foreground_fraction: float, minimum: float = NNUNET_OVERSAMPLING, target: float | None = None
) -> tuple[float, str]:
    """The share of training tiles centred on a foreground voxel (``RandCropByPosNegLabeld``'s ``pos``).

    nnU-Net forces foreground into a third of each batch and crops the rest at random. When the foreground is
    rare, random tiles hardly see it: the share is raised until at least ``target`` of all tiles hold foreground
    (``p + (1 - p) * hit_rate >= target``): half of them, and 90% when the foreground is under 1% of the voxels
    (:data:`RARE_FOREGROUND`). Measured on the brain tumours (0.1% foreground, slice-by-slice tiles of 100 x 100 x 4,
    6 minutes on 2 CPU cores): with 69% of the tiles holding tumour the network trained on PGBM-003 still marked
    nothing, with 94% it scored Dice 0.65 on the other patient; a rare class learns from the tiles that hold it.

    Args:
        hit_rate: the chance that a random tile's output overlaps foreground (:func:`random_tile_hit_rate`).
        foreground_fraction: foreground voxels / all voxels of the dataset.
        minimum: the share never goes below this (nnU-Net's 0.33).
        target: the share of tiles that should hold foreground (default: 0.9 for rare foreground, else 0.5).

    Returns:
        ``(share, reason)``.
    """
    if target is None:
        target = RARE_TARGET if 0 < foreground_fraction < RARE_FOREGROUND else 0.5
    need = (target - hit_rate) / (1.0 - hit_rate) if hit_rate < target else 0.0
    share = max(minimum, math.ceil(round(need * 100, 6)) / 100)  # in whole percent, rounded up
    seen = share + (1 - share) * hit_rate
    reason = (
        f"foreground is {foreground_fraction:.3%} of the voxels; a randomly placed tile's output overlaps it with "
        f"probability {hit_rate:.2f}"
    )
    if share > minimum:
        reason += (
            f": nnU-Net's {minimum:.0%} forced foreground tiles would leave "
            f"{minimum + (1 - minimum) * hit_rate:.0%} of the tiles with any, so {share:.0%} are centred on "
            f"foreground ({seen:.0%} hold some)"
        )
    else:
        reason += f": nnU-Net's {minimum:.0%} of the tiles centred on foreground gives {seen:.0%} with some"
    return share, reason


# ------------------------------------------------------------------------------------------------------------- batch


def choose_batch_size(
    reference: int, output_voxels: int, dataset_voxels: float, max_fraction: float = 0.05
) -> tuple[int, str]:
    """nnU-Net's reference batch (2 in 3D, 12 in 2D), capped so that a batch's outputs cover at most
    ``max_fraction`` of the dataset's voxels (an overfitting precaution), at least 1.

    nnU-Net keeps at least 2; a valid network learns from the output region only, and with instance normalisation
    (or none) nothing needs a second sample in the batch, so a small dataset gets one large tile per step (the paper's
    recipe) instead.

    Returns:
        ``(batch, reason)``.
    """
    allowed = max_fraction * dataset_voxels
    cap = math.floor(allowed / max(output_voxels, 1))
    batch = max(1, min(reference, cap))
    reason = (
        f"nnU-Net's reference {reference}, with at most {max_fraction:.0%} of the dataset's {dataset_voxels:.3g} "
        f"voxels ({allowed:.3g}) in a batch: a tile's output is {output_voxels} voxels"
    )
    if batch < reference:
        reason += (
            f", so {batch} (nnU-Net keeps at least 2; a valid network learns from the output region only, neither "
            "instance normalisation nor none needs a second sample, and one large tile per step is the paper's "
            "recipe)"
        )
    return batch, reason
