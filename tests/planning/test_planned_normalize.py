"""``PlannedNormalize(d)``: the plan's per-channel schemes, done by MONAI's transforms (lives beside the planning
tests because the plan is what writes its settings)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import NormalizeIntensity, ScaleIntensityRangePercentilesd

from monai_unet.transforms import PlannedNormalize, PlannedNormalized

DEFAULT = [{"scheme": "percentile_range", "lower": 0.5, "upper": 99.5, "b_min": 0.0, "b_max": 1.0, "clip": True}]


def test_default_scheme_is_the_bundles_old_recipe() -> None:
    """The 3D bundle's default ``normalization`` gives exactly what ScaleIntensityRangePercentilesd gave."""
    img = MetaTensor(torch.randn(1, 24, 20, 9) * 40 + 300, affine=torch.diag(torch.tensor([2.0, 2.0, 3.0, 1.0])))
    old = ScaleIntensityRangePercentilesd("image", 0.5, 99.5, 0.0, 1.0, clip=True)({"image": img})["image"]
    new = PlannedNormalized("image", DEFAULT)({"image": img})["image"]
    assert isinstance(new, MetaTensor) and new.dtype == torch.float32
    torch.testing.assert_close(new.as_tensor(), old.as_tensor(), rtol=0, atol=0)
    torch.testing.assert_close(new.affine, img.affine)
    # the scheme's keys have these defaults
    torch.testing.assert_close(PlannedNormalize({"scheme": "percentile_range"})(img), new)


def test_zscore_per_channel_and_inside_the_nonzero_mask() -> None:
    rng = np.random.default_rng(0)
    img = np.stack([rng.normal(500, 80, (16, 16)), rng.normal(-3, 2, (16, 16))]).astype(np.float32)
    img[1, :4] = 0
    out = PlannedNormalize([{"scheme": "zscore"}, {"scheme": "zscore", "nonzero": True}])(img)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    assert abs(out[0].mean()) < 1e-5 and abs(out[0].std() - 1) < 1e-4
    assert np.all(out[1, :4] == 0)
    assert abs(out[1, 4:].mean()) < 1e-5 and abs(out[1, 4:].std() - 1) < 1e-4
    np.testing.assert_allclose(out[1:], NormalizeIntensity(nonzero=True)(img[1:]), rtol=1e-5, atol=1e-6)


def test_ct_clips_then_uses_the_datasets_statistics() -> None:
    img = torch.tensor([[[-2000.0, -100.0, 40.0, 90.0, 3000.0]]])
    out = PlannedNormalize({"scheme": "ct", "clip": [-100.0, 200.0], "mean": 50.0, "std": 25.0})(img)
    torch.testing.assert_close(out, torch.tensor([[[-6.0, -6.0, -0.4, 1.6, 6.0]]]))


def test_one_scheme_for_all_channels_or_one_each() -> None:
    img = torch.rand(3, 8, 8) * 10
    out = PlannedNormalize([{"scheme": "zscore"}])(img)
    assert out.shape == img.shape and torch.allclose(out.mean(dim=(1, 2)), torch.zeros(3), atol=1e-5)
    with pytest.raises(ValueError, match="3 channels but 2 normalisation schemes"):
        PlannedNormalize([{"scheme": "zscore"}, {"scheme": "none"}])(img)
    torch.testing.assert_close(PlannedNormalize({"scheme": "none"})(img), img)


@pytest.mark.parametrize(
    ("schemes", "message"),
    [
        ([], "got none"),
        ([{"scheme": "minmax"}], "one of"),
        ([{"scheme": "zscore", "nonzeros": True}], "unknown keys"),
        ([{"scheme": "ct", "clip": [0, 1]}], "needs 'clip'"),
        ([{"scheme": "ct", "clip": [5, 1], "mean": 0, "std": 1}], "lo <= hi"),
    ],
)
def test_bad_schemes_are_refused(schemes: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PlannedNormalize(schemes)
