"""RandCoarseElastic(d): the coarse-grid deformation for N-d images, by its properties."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_unet.transforms import RandCoarseElastic, RandCoarseElasticd, coarse_displacement_field

SIZES = {2: (33, 40), 3: (21, 25, 10)}  # control points of (3, 4, 2) per axis fall on voxels


def ramps(size) -> torch.Tensor:
    """One channel per axis holding that axis' voxel coordinate: a warped ramp reads back ``x + u(x)``."""
    return torch.stack(torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in size], indexing="ij"))


def blocks(size, seed=0) -> torch.Tensor:
    """Integer label of random values on 4-voxel blocks."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(1, 50, size=[-(-s // 4) for s in size])
    for axis in range(len(size)):
        coarse = np.repeat(coarse, 4, axis=axis)
    return torch.as_tensor(coarse[tuple(slice(s) for s in size)][None].astype(np.float32))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_zero_displacement_is_the_identity(spatial_dims):
    size = SIZES[spatial_dims]
    image, label = torch.rand(2, *size), blocks(size)
    t = RandCoarseElasticd(keys=["image", "label"], sigma=0.0, prob=1.0, mode=("bilinear", "nearest"))
    out = t({"image": image, "label": label})
    torch.testing.assert_close(out["image"].as_tensor(), image, atol=1e-5, rtol=0)
    assert torch.equal(out["label"].as_tensor(), label)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_field_interpolates_the_control_points(spatial_dims):
    size = SIZES[spatial_dims]
    points = (3, 4, 2)[:spatial_dims]
    disp = torch.randn(spatial_dims, *points)
    field = coarse_displacement_field(disp, size)
    assert field.shape == (spatial_dims, *size)
    corners = [np.linspace(0, s - 1, p).round().astype(int) for s, p in zip(size, points)]
    torch.testing.assert_close(field[(slice(None), *np.ix_(*corners))], disp, atol=1e-5, rtol=0)
    assert coarse_displacement_field(torch.zeros(spatial_dims, *points), size).abs().max() == 0


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_image_and_label_move_together_and_labels_keep_their_values(spatial_dims):
    size = SIZES[spatial_dims]
    label = blocks(size)
    t = RandCoarseElasticd(
        keys=["image", "label"], sigma=3.0, prob=1.0, mode=("bilinear", "nearest"), padding_mode="border"
    )
    t.set_random_state(3)
    out = t({"image": MetaTensor(ramps(size)), "label": MetaTensor(label)})
    assert isinstance(out["label"], MetaTensor)
    source = out["image"].as_tensor()  # where each output voxel was read from
    grid = ramps(size)
    assert (source - grid).abs().max() > 1.0  # it did deform
    rounded = source.round()
    inside = ((source - rounded).abs() < 0.45).all(0)  # away from nearest-neighbour ties
    for axis, s in enumerate(size):
        inside &= (rounded[axis] >= 0) & (rounded[axis] <= s - 1)
    idx = rounded.long()
    expected = label[0][tuple(idx[a] for a in range(spatial_dims))]
    assert inside.float().mean() > 0.5
    assert torch.equal(out["label"][0][inside], expected[inside])
    assert set(torch.unique(out["label"]).tolist()) <= set(torch.unique(label).tolist())


def test_same_seed_same_result_and_prob():
    image = torch.rand(1, *SIZES[3])
    a = RandCoarseElastic(sigma=4.0, prob=1.0).set_random_state(7)(image)
    b = RandCoarseElastic(sigma=4.0, prob=1.0).set_random_state(7)(image)
    c = RandCoarseElastic(sigma=4.0, prob=1.0).set_random_state(8)(image)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert torch.equal(RandCoarseElastic(sigma=4.0, prob=0.0)(image), image)


def test_per_axis_sigma_for_anisotropic_volumes():
    size = SIZES[3]
    t = RandCoarseElastic(sigma=(4.0, 4.0, 0.0), control_points=(3, 3, 2), prob=1.0, padding_mode="border")
    t.set_random_state(0)
    source = t(ramps(size))
    grid = ramps(size)
    torch.testing.assert_close(source[2], grid[2], atol=1e-4, rtol=0)  # no movement across slices
    assert (source[:2] - grid[:2]).abs().max() > 1.0
    assert t.displacements.shape == (3, 3, 3, 2)
    assert t.displacements[:2].std() == pytest.approx(4.0, rel=0.5)


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="sigma"):
        RandCoarseElastic(sigma=-1.0)
    with pytest.raises(ValueError, match="control_points"):
        RandCoarseElastic(control_points=0)
    with pytest.raises(ValueError, match="spatial axes"):
        RandCoarseElastic(sigma=(1.0, 2.0), prob=1.0)(torch.rand(1, 8, 8, 8))
    with pytest.raises(ValueError, match="one spatial size"):
        RandCoarseElasticd(keys=["a", "b"], prob=1.0)({"a": torch.rand(1, 8, 8), "b": torch.rand(1, 8, 9)})
