"""The planning rules on synthetic fingerprints: spacing, topology, features, tiles and memory, normalisation,
oversampling, batch."""

from __future__ import annotations

import pytest
import torch

from monai_unet.inferers.tiling import estimate_activation_bytes
from monai_unet.networks import UNet
from monai_unet.planning.budget import estimate_training_bytes, size_rules_for
from monai_unet.planning.network import plan_infer_tile, plan_network
from monai_unet.planning.rules import (
    choose_batch_size,
    choose_normalization,
    foreground_oversampling,
    plan_features,
    plan_topology,
    random_tile_hit_rate,
    target_spacing,
)

MIB = 2**20

# --------------------------------------------------------------------------------------------------------- spacing


def test_target_spacing_is_the_median() -> None:
    spacing, reason = target_spacing([(1.0, 1.0, 1.0), (0.8, 0.8, 1.2), (1.2, 1.2, 1.5)], [(100, 100, 100)] * 3)
    assert spacing == (1.0, 1.0, 1.2)
    assert "median" in reason and "anisotropic" not in reason


def test_anisotropic_axis_takes_the_10th_percentile() -> None:
    spacings = [(0.7, 0.7, 5.0), (0.7, 0.7, 6.0), (0.7, 0.7, 6.5), (0.7, 0.7, 7.0), (0.7, 0.7, 8.0)]
    shapes = [(300, 300, 24)] * 5
    spacing, reason = target_spacing(spacings, shapes)
    assert spacing[:2] == (0.7, 0.7)
    assert spacing[2] == pytest.approx(5.4)  # numpy's 10th percentile of 5, 6, 6.5, 7, 8 (median 6.5)
    assert "z is anisotropic" in reason and "10th percentile" in reason


def test_anisotropic_axis_never_finer_than_in_plane() -> None:
    # z is > 3x coarser in the median, but a few cases are finer than in-plane: the percentile is clipped
    spacings = [(2.0, 2.0, 1.0), (2.0, 2.0, 1.0), (2.0, 2.0, 8.0), (2.0, 2.0, 8.0), (2.0, 2.0, 8.0)]
    spacing, _ = target_spacing(spacings, [(200, 200, 20)] * 5)
    assert spacing == (2.0, 2.0, 2.0)


def test_coarse_axis_with_many_voxels_keeps_the_median() -> None:
    """nnU-Net's rule needs both: > 3x coarser *and* > 3x fewer voxels."""
    spacings = [(0.7, 0.7, 5.0), (0.7, 0.7, 6.5), (0.7, 0.7, 8.0)]
    spacing, reason = target_spacing(spacings, [(300, 300, 200)] * 3)
    assert spacing == (0.7, 0.7, 6.5) and "anisotropic" not in reason


def test_same_spacing_along_an_axis_says_no_resampling() -> None:
    spacings = [(0.6875, 0.6875, 6.5)] * 3 + [(0.4297, 0.4297, 6.5)]
    spacing, reason = target_spacing(spacings, [(260, 320, 24), (260, 320, 25), (280, 320, 22), (512, 512, 24)])
    assert spacing == (0.6875, 0.6875, 6.5)
    assert "no resampling along it" in reason and "along z" in reason


# -------------------------------------------------------------------------------------------------------- topology


def test_anisotropic_topology_is_nnunets() -> None:
    """0.6875 x 0.6875 x 6.5 mm: kernel 1 along z in the first three levels, z pooled first at the fourth
    down-sampling, once the in-plane spacing is within 2x of z's (nnU-Net's 1x3x3 for three stages)."""
    topo = plan_topology((0.6875, 0.6875, 6.5), (270, 320, 24))
    kz = [k[2] for k in topo.kernel_size]
    sz = [s[2] for s in topo.strides]
    assert kz[:3] == [1, 1, 1] and all(k == 3 for k in kz[3:])
    assert all(k[:2] == (3, 3) for k in topo.kernel_size)
    first_z = sz.index(2)
    assert first_z == 4 and sz[:4] == [1, 1, 1, 1]
    assert all(s[:2] == (2, 2) for s in topo.strides[1:5])
    # z is pooled only when the in-plane spacing of the level before is within 2x of z's
    before = topo.spacings[first_z - 1]
    assert before[2] / before[0] < 2 and topo.spacings[first_z - 2][2] / topo.spacings[first_z - 2][0] >= 2
    # a 1-wide kernel along z loses nothing along z in those levels
    halo_z = topo.axis_rules[2].halo
    assert halo_z < topo.axis_rules[0].halo


@pytest.mark.parametrize("size", [(64, 64), (140, 100), (512, 512), (30, 200)])
def test_feature_map_minimum_holds_at_the_planned_tile(size: tuple[int, int]) -> None:
    """Every level's map at the smallest valid tile whose output covers ``size`` is >= 4 pixels wide after its
    convolutions (a real forward with hooks), and one more pooling would break it along a pooled axis."""
    topo = plan_topology((1.0, 1.0), size)
    net = UNet(2, 1, 2, [2] * topo.levels, kernel_size=topo.kernel_size, strides=topo.strides, dropout=0.0)
    tile = net.input_size(size)
    shapes = []
    hooks = [m.register_forward_hook(lambda _m, _i, o: shapes.append(o.shape[2:])) for m in (*net.encoders, net.bottom)]
    with torch.no_grad():
        net(torch.zeros(1, 1, *tile))
    for h in hooks:
        h.remove()
    assert len(shapes) == topo.levels
    assert all(min(s) >= 4 for s in shapes[1:]), (size, tile, shapes)
    deeper = plan_topology((1.0, 1.0), size, max_pools=topo.levels)  # the cap is not what stopped it
    assert deeper.levels == topo.levels


def test_max_pools_caps_the_depth() -> None:
    assert plan_topology((1.0, 1.0), (2000, 2000), max_pools=3).levels == 4
    assert plan_topology((1.0, 1.0), (2000, 2000), max_pools=5).levels == 6
    assert plan_topology((1.0, 1.0), (6, 6)).levels == 1  # too small to pool at all


def test_features_double_and_cap() -> None:
    assert plan_features(6, 32, 320) == (32, 64, 128, 256, 320, 320)
    assert plan_features(3, 8, 128) == (8, 16, 32)
    with pytest.raises(ValueError, match="max_features"):
        plan_features(3, 16, 8)


# ------------------------------------------------------------------------------------------------ tile and memory


def _net(plan) -> UNet:
    return UNet(
        len(plan.tile),
        1,
        2,
        plan.features,
        kernel_size=plan.topology.kernel_size,
        strides=plan.topology.strides,
        norm="instance",
    )


def test_tile_covers_the_median_case_when_memory_allows() -> None:
    plan = plan_network((0.6875, 0.6875, 6.5), (270, 320, 24), 64 * 2**30, 2, 8, 128, 1, 2)
    net = _net(plan)
    assert net.is_valid_size(plan.tile)
    assert net.output_size(plan.tile) == plan.output
    assert all(o >= m for o, m in zip(plan.output, (270, 320, 24))) and not plan.shrunk
    assert net.input_size((270, 320, 24)) == plan.tile  # the smallest such tile
    assert all(t - o == 2 * h for t, o, h in zip(plan.tile, plan.output, net.halo))


@pytest.mark.parametrize("budget_mb", [256, 600, 1024])
def test_tile_fits_the_memory_budget(budget_mb: int) -> None:
    plan = plan_network((0.6875, 0.6875, 6.5), (270, 320, 24), budget_mb * MIB, 1, 8, 128, 1, 2)
    net = _net(plan)
    assert net.is_valid_size(plan.tile) and plan.shrunk
    assert plan.estimate_bytes <= budget_mb * MIB
    assert plan.estimate_bytes == estimate_training_bytes(plan.rules, plan.tile, 1)
    # one valid step more along any axis would not fit, or would outgrow the tile that covers the median case
    cover = net.input_size((270, 320, 24))
    for axis, r in enumerate(net.axis_rules):
        bigger = list(plan.tile)
        bigger[axis] += r.step
        assert estimate_training_bytes(plan.rules, bigger, 1) > budget_mb * MIB or bigger[axis] > cover[axis]


def test_too_small_a_budget_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"too small.*--memory-mb"):
        plan_network((1.0, 1.0, 1.0), (64, 64, 64), 1 * MIB, 2, 8, 128, 1, 2)


def test_training_estimate_grows_with_tile_batch_and_norm() -> None:
    rules = size_rules_for([[3, 3, 3]] * 3, [[1, 1, 1], [2, 2, 2], [2, 2, 2]], (8, 16, 32), 1, 2)
    a = estimate_training_bytes(rules, (60, 60, 60), 1)
    assert estimate_training_bytes(rules, (76, 76, 76), 1) > a
    assert estimate_training_bytes(rules, (60, 60, 60), 2) > a
    assert estimate_training_bytes(rules, (60, 60, 60), 1, norm=False) < a
    assert a > estimate_activation_bytes(rules, (60, 60, 60), 1)  # training keeps the graph


def test_infer_tile_is_valid_larger_and_fits() -> None:
    plan = plan_network((0.6875, 0.6875, 6.5), (270, 320, 24), 600 * MIB, 1, 8, 128, 1, 2)
    tile, est = plan_infer_tile(plan.rules, (320, 320, 25), (0.6875, 0.6875, 6.5), 600 * MIB, plan.tile)
    net = _net(plan)
    assert net.is_valid_size(tile) and all(t >= s for t, s in zip(tile, plan.tile))
    assert est == estimate_activation_bytes(plan.rules, tile, 1) <= 600 * MIB
    small, est_small = plan_infer_tile(plan.rules, (320, 320, 25), (0.6875, 0.6875, 6.5), 100 * MIB, plan.tile)
    assert net.is_valid_size(small) and all(s <= t for s, t in zip(small, tile))
    assert est_small <= est


# --------------------------------------------------------------------------------- normalisation, oversampling, batch


def test_ct_is_clipped_and_zscored_with_foreground_statistics() -> None:
    stats = {"mean": 50.0, "std": 20.0, "p00_5": -100.0, "p99_5": 250.0}
    schemes, reasons = choose_normalization(["CT", "MR"], [stats, stats], 0.95)
    assert schemes[0] == {"scheme": "ct", "clip": [-100.0, 250.0], "mean": 50.0, "std": 20.0}
    assert schemes[1] == {"scheme": "zscore", "nonzero": False}
    assert "CT" in reasons[0] and "z-score" in reasons[1]
    with pytest.raises(ValueError, match="CT"):
        choose_normalization(["CT"], [None], 1.0)


def test_mr_zscore_inside_nonzero_mask_when_skull_stripped() -> None:
    schemes, reasons = choose_normalization(["MR"], [None], 0.6)
    assert schemes == [{"scheme": "zscore", "nonzero": True}] and "skull-stripped" in reasons[0]
    schemes, _ = choose_normalization(["T2"], [None], 0.8)
    assert schemes == [{"scheme": "zscore", "nonzero": False}]


def test_oversampling_rises_when_foreground_is_rare() -> None:
    share, reason = foreground_oversampling(0.9, 0.2)
    assert share == 0.33 and "33%" in reason
    share, reason = foreground_oversampling(0.1, 0.02)
    assert share > 0.33 and share + (1 - share) * 0.1 >= 0.5 - 1e-9 and "2.000%" in reason
    share, reason = foreground_oversampling(0.1, 0.001)  # rare: 90% of the tiles hold some
    assert share + (1 - share) * 0.1 >= 0.9 - 1e-9 and share + (1 - share) * 0.1 < 0.92 and "0.100%" in reason
    assert foreground_oversampling(0.0, 0.0)[0] == 0.5


def test_random_tile_hit_rate() -> None:
    assert random_tile_hit_rate((100, 100), [(100, 100)], [(5, 5)]) == 1.0
    assert random_tile_hit_rate((10, 10), [(100, 100)], [(10, 10)]) == pytest.approx(0.04)
    assert random_tile_hit_rate((10, 10), [(100, 100), (100, 100)], [(10, 10), None]) == pytest.approx(0.02)


def test_batch_is_capped_at_5_percent_of_the_dataset() -> None:
    assert choose_batch_size(2, 1000, 1e6)[0] == 2
    assert choose_batch_size(12, 1000, 1e5)[0] == 5
    batch, reason = choose_batch_size(2, 500_000, 8.5e6)
    assert batch == 1 and "5%" in reason


def test_flat_axes_are_neither_convolved_nor_pooled() -> None:
    topo = plan_topology((1.375, 1.375, 6.5), (135, 160, 4), max_pools=3, flat=(2,))
    assert topo.levels == 4
    assert all(k == (3, 3, 1) for k in topo.kernel_size)
    assert all(s[2] == 1 for s in topo.strides) and all(s[:2] == (2, 2) for s in topo.strides[1:])
    # planned as a volume, z gets 3-wide kernels once the in-plane spacing comes near its 6.5 mm
    assert any(k[2] == 3 for k in plan_topology((1.375, 1.375, 6.5), (135, 160, 24)).kernel_size)
    with pytest.raises(ValueError, match="at least one"):
        plan_topology((1.0, 1.0), (64, 64), flat=(0, 1))
