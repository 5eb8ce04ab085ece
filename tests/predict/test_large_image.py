"""Per-tile preprocessing of the larger-than-RAM predict path equals the bundle's whole-image preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from monai.transforms import Compose, EnsureTyped, NormalizeIntensityd, ScaleIntensityd, ScaleIntensityRanged

from monai_unet.inferers.tiling import size_rules_of
from monai_unet.io.large_image import open_tiff_lazily
from monai_unet.predict.large_image import LazyImage, pointwise_preprocessing, streaming_min_max


@pytest.fixture
def tiff(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.integers(7, 201, (300, 260), dtype=np.uint8)
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, a, tile=(64, 64), photometric="minisblack")
    return path, a


@pytest.mark.parametrize(
    "transforms",
    [
        [ScaleIntensityd(keys="image", minv=0.0, maxv=1.0), EnsureTyped(keys="image", dtype=torch.float32)],
        [ScaleIntensityRanged(keys="image", a_min=0, a_max=255, b_min=-1, b_max=1, clip=True)],
        [
            ScaleIntensityRanged(keys="image", a_min=0, a_max=100, b_min=0, b_max=1, clip=True),
            ScaleIntensityd(keys="image", minv=-1.0, maxv=2.0),
        ],
    ],
)
def test_tiles_equal_whole_image_preprocessing(tiff, transforms):
    path, a = tiff
    arr = open_tiff_lazily(path)
    view = LazyImage(arr, pointwise_preprocessing(transforms, arr))
    assert view.shape == (1, 260, 300)  # (C, W, H) like MONAI's PILReader
    whole = Compose(transforms)({"image": torch.from_numpy(a.T[None].astype(np.float32))})["image"]
    tile = view[(slice(None), slice(37, 151), slice(90, 300))]
    np.testing.assert_array_equal(tile, np.asarray(whole)[:, 37:151, 90:300])


def test_whole_image_statistics_are_streamed(tiff):
    path, a = tiff
    assert streaming_min_max(open_tiff_lazily(path), rows_per_block=64) == (float(a.min()), float(a.max()))
    b = np.ones((50, 40), np.float32)
    b[10, 3] = np.nan
    with pytest.raises(ValueError, match="1 NaN/infinite"):
        streaming_min_max(b, rows_per_block=8)


def test_transforms_needing_the_whole_image_are_refused(tiff):
    path, _ = tiff
    with pytest.raises(ValueError, match=r"NormalizeIntensityd .*not per-tile safe"):
        pointwise_preprocessing([NormalizeIntensityd(keys="image")], open_tiff_lazily(path))


# ---- blocks and the pipeline ----------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [37, 300, 1000, 4096])
def test_blocks_fit_the_tile_and_the_grid(size):
    from monai_unet.networks import UNet
    from monai_unet.predict.large_blocks import BlockPlan, block_sizes

    rules = size_rules_of(UNet(2, 1, 2, features=(4, 8, 16, 32, 64)))
    for tile in (252, 380, 860):
        block = block_sizes(rules, (size, size), (tile, tile))
        plan = BlockPlan.make(rules, (size, size), block)
        assert all(b % 16 == 0 for b in block)  # the pooling grid, and a TIFF tile
        assert all(t <= tile for t in plan.tile) or block == (16, 16)
        assert plan.grid[0] * block[0] >= size > (plan.grid[0] - 1) * block[0]  # covers, no empty block
        assert all(o >= b for o, b in zip((t - 2 * h for t, h in zip(plan.tile, plan.halo)), block))
        # as few blocks as the tile allows, and no larger than needed (the last one no sliver)
        largest = max(b for b in range(16, tile, 16) if rules.input_size(b) <= tile)
        assert plan.grid[0] == -(-size // largest)
        per_block = -(-size // plan.grid[0])
        assert block[0] == -(-per_block // 16) * 16


def test_pipeline_writes_everything_in_order_and_fails_cleanly():
    from monai_unet.predict.large_blocks import run_pipeline

    written = []
    assert run_pipeline(range(20), lambda i: i * 10, lambda x: x + 1, lambda i, y: written.append((i, y))) == 20
    assert written == [(i, i * 10 + 1) for i in range(20)]

    def bad_read(i):
        if i == 7:
            raise OSError("disk gone")
        return i

    written.clear()
    with pytest.raises(OSError, match="disk gone"):
        run_pipeline(range(20), bad_read, lambda x: x, lambda i, y: written.append(i))
    assert written == list(range(7))  # what was read and computed before the failure is kept

    def bad_compute(x):
        if x == 3:
            raise KeyboardInterrupt
        return x

    written.clear()
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(range(20), lambda i: i, bad_compute, lambda i, y: written.append(i))
    assert written == [0, 1, 2]

    def bad_write(i, y):
        if i == 5:
            raise RuntimeError("store full")
        written.append(i)

    written.clear()
    with pytest.raises(RuntimeError, match="store full"):
        run_pipeline(range(100), lambda i: i, lambda x: x, bad_write)
    assert written == [0, 1, 2, 3, 4]
