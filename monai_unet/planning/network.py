"""The network and its tiles from a memory budget: nnU-Net's planning loop for a valid U-Net.

nnU-Net starts from a patch as large as the median case, derives the topology from it, and while the network's
estimated memory exceeds the budget shrinks the patch along one axis and derives the topology again. Here the
region shrunk is the *output* the tile must cover (a valid network's input is its output plus twice the halo);
the topology is derived from it (:func:`~monai_unet.planning.rules.plan_topology`), the tile is the smallest valid
input whose output covers it (:meth:`AxisRule.input_for <monai_unet.networks.sizes.AxisRule.input_for>`), and the
memory is the training estimate (:func:`~monai_unet.planning.budget.estimate_training_bytes`). The axis shrunk is
the one whose output is longest in millimetres, so the tile stays as close to isotropic in space as the data
allows (nnU-Net's starting patch is isotropic in millimetres for the same reason).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from monai_unet.inferers.tiling import SizeRules, estimate_activation_bytes
from monai_unet.planning.budget import estimate_training_bytes, size_rules_for
from monai_unet.planning.rules import Topology, plan_features, plan_topology

__all__ = ["NetworkPlan", "plan_infer_tile", "plan_network"]

MIB = 2**20


@dataclass(frozen=True)
class NetworkPlan:
    """The planned network and training tile.

    Attributes:
        topology: kernels and strides per level.
        features: channels per level.
        rules: the network's size rules (halo, valid sizes, estimates).
        tile: the training tile (a valid input size); ``output``: its output.
        batch: tiles per step the memory was fitted for.
        estimate_bytes: the training memory estimate of one step.
        target: the region the output was planned to cover (voxels; the median case shape unless memory was
            short).
        shrunk: whether memory made the covered region smaller than the median case.
    """

    topology: Topology
    features: tuple[int, ...]
    rules: SizeRules
    tile: tuple[int, ...]
    output: tuple[int, ...]
    batch: int
    estimate_bytes: int
    target: tuple[int, ...]
    shrunk: bool

    @property
    def halo(self) -> tuple[int, ...]:
        assert self.rules.halo is not None
        return self.rules.halo


def plan_network(
    spacing: Sequence[float],
    median_shape: Sequence[int],
    budget_bytes: int,
    batch: int,
    base_features: int,
    max_features: int,
    in_channels: int,
    out_channels: int,
    norm: bool = True,
    min_feature_map: int = 4,
    max_pools: int = 5,
    flat: Sequence[int] = (),
) -> NetworkPlan:
    """The deepest network (up to the feature-map rule) with the largest training tile that fits the budget.

    Args:
        spacing: target spacing (mm per axis).
        median_shape: the median case in target-spacing voxels: the output should cover it.
        budget_bytes: memory of one training step.
        batch: tiles per step.
        base_features, max_features: channels of the top level and the cap (doubling per level).
        in_channels, out_channels: of the network.
        norm: whether the network normalises (more memory kept for backward).
        min_feature_map, max_pools, flat: see :func:`~monai_unet.planning.rules.plan_topology`.

    Raises:
        ValueError: even the smallest valid tile of the smallest network does not fit ``budget_bytes``.
    """
    dims = len(spacing)
    median = [max(1, int(s)) for s in median_shape]
    size = list(median)
    while True:
        topology = plan_topology(spacing, size, min_feature_map, max_pools, flat=flat)
        features = plan_features(topology.levels, base_features, max_features)
        rules = size_rules_for(topology.kernel_size, topology.strides, features, in_channels, out_channels)
        assert rules.axes is not None
        tile = tuple(r.input_for(s) for r, s in zip(rules.axes, size))
        estimate = estimate_training_bytes(rules, tile, batch, norm)
        if estimate <= budget_bytes:
            break
        smaller = [a for a in range(dims) if size[a] > 1]
        if not smaller:
            raise ValueError(
                f"a memory budget of {budget_bytes // MIB} MiB is too small: the smallest valid tile "
                f"{'x'.join(map(str, tile))} of the smallest planned network (features {list(features)}) needs about "
                f"{estimate // MIB} MiB for a batch of {batch}; raise --memory-mb or lower --base-features."
            )
        axis = max(smaller, key=lambda a: (size[a] * spacing[a], size[a] / median[a]))
        r = rules.axes[axis]
        below = tile[axis] - r.step
        size[axis] = max(1, min(size[axis] - 1, r.output(below) if below >= r.first else 1))
    tile, estimate = _grow(rules, tile, estimate, median, spacing, budget_bytes, batch, norm)
    output = tuple(r.output(t) for r, t in zip(rules.axes, tile))
    return NetworkPlan(
        topology=topology,
        features=features,
        rules=rules,
        tile=tile,
        output=output,
        batch=batch,
        estimate_bytes=estimate,
        target=tuple(size),
        shrunk=any(o < m for o, m in zip(output, median)),
    )


def _grow(
    rules: SizeRules,
    tile: tuple[int, ...],
    estimate: int,
    median: Sequence[int],
    spacing: Sequence[float],
    budget_bytes: int,
    batch: int,
    norm: bool,
) -> tuple[tuple[int, ...], int]:
    """Use what shrinking left of the budget: with the topology fixed, add valid steps to the axis whose output is
    shortest in millimetres while the step fits and the tile does not outgrow the one covering the median case."""
    assert rules.axes is not None
    limit = [r.input_for(m) for r, m in zip(rules.axes, median)]
    grown = list(tile)
    full: set[int] = set()
    while True:
        axes = [a for a, r in enumerate(rules.axes) if a not in full and grown[a] + r.step <= limit[a]]
        if not axes:
            return tuple(grown), estimate
        axis = min(axes, key=lambda a: (rules.axes[a].output(grown[a]) * spacing[a], a))
        trial = list(grown)
        trial[axis] += rules.axes[axis].step
        cost = estimate_training_bytes(rules, trial, batch, norm)
        if cost <= budget_bytes:
            grown, estimate = trial, cost
        else:
            full.add(axis)


def plan_infer_tile(
    rules: SizeRules,
    largest_shape: Sequence[int],
    spacing: Sequence[float],
    budget_bytes: int,
    train_tile: Sequence[int],
) -> tuple[tuple[int, ...], int]:
    """The inference tile: the smallest valid tile whose output covers the largest case (one tile per case), made
    smaller (the axis longest in millimetres first, one valid step at a time) until one forward without autograd
    (:func:`~monai_unet.inferers.tiling.estimate_activation_bytes`, one tile at a time) fits ``budget_bytes``;
    never smaller than the training tile.

    Returns:
        ``(tile, estimated bytes)``.
    """
    assert rules.axes is not None
    tile = [max(r.input_for(s), t) for r, s, t in zip(rules.axes, largest_shape, train_tile)]
    while True:
        estimate = estimate_activation_bytes(rules, tile, 1)
        if estimate <= budget_bytes:
            break
        smaller = [a for a, r in enumerate(rules.axes) if tile[a] - r.step >= max(train_tile[a], r.first)]
        if not smaller:
            break
        axis = max(smaller, key=lambda a: (rules.axes[a].output(tile[a]) * spacing[a], tile[a]))
        tile[axis] -= rules.axes[axis].step
    return tuple(tile), estimate


def receptive_field(halo: Sequence[int], spacing: Sequence[float]) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """The receptive field of one output voxel: ``2 * halo + 1`` voxels per axis, and in millimetres."""
    vox = tuple(2 * h + 1 for h in halo)
    return vox, tuple(round(v * s, 1) for v, s in zip(vox, spacing))


def out_voxels(output: Sequence[int]) -> int:
    return math.prod(output)
