"""Per-tile preprocessing of the larger-than-RAM predict path equals the bundle's whole-image preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from monai.transforms import Compose, EnsureTyped, NormalizeIntensityd, ScaleIntensityd, ScaleIntensityRanged

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
