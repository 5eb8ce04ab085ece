"""The bundle's MONAI pre- and postprocessing as bioimage.io operations: the operations compute what the transform
computes, and a transform without an equivalent is refused by name."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import (
    Activationsd,
    AsDiscreted,
    GaussianSmoothd,
    KeepLargestConnectedComponentd,
    LoadImaged,
    NormalizeIntensityd,
    ScaleIntensityd,
    ScaleIntensityRanged,
    ScaleIntensityRangePercentilesd,
    Spacingd,
)

pytest.importorskip("bioimageio.spec", reason='the bioimageio extra: pip install "monai-unet[bioimageio]"')

from monai_unet.export.processing import (
    UnsupportedTransformError,
    translate_postprocessing,
    translate_preprocessing,
)

AXES = ["y", "x"]


def apply_ops(ops: list, x: np.ndarray) -> np.ndarray:
    """The spec's operations on ``x`` ``(C, y, x)`` (one sample), as the spec defines them."""
    names = ["channel", *AXES]
    for op in ops:
        k = op.kwargs
        red = tuple(names.index(str(a)) for a in (k.axes or names)) if hasattr(k, "axes") else None
        if op.id == "ensure_dtype":
            x = x.astype(np.float32)
        elif op.id == "scale_range":
            lo = np.percentile(x, k.min_percentile, axis=red, keepdims=True)
            hi = np.percentile(x, k.max_percentile, axis=red, keepdims=True)
            x = (x - lo) / (hi - lo + k.eps)
        elif op.id == "scale_linear":
            x = x * k.gain + k.offset
        elif op.id == "clip":
            x = np.clip(x, k.min, k.max)
        elif op.id == "zero_mean_unit_variance":
            x = (x - x.mean(axis=red, keepdims=True)) / (x.std(axis=red, keepdims=True) + k.eps)
        elif op.id == "fixed_zero_mean_unit_variance":
            x = (x - k.mean) / (k.std + 1e-6)
        else:
            raise AssertionError(op.id)
    return x


PRE = {
    "scale_0_1": ScaleIntensityd("image", minv=0.0, maxv=1.0),
    "scale_-1_1_channel_wise": ScaleIntensityd("image", minv=-1.0, maxv=1.0, channel_wise=True),
    "percentiles_clip": ScaleIntensityRangePercentilesd("image", 0.5, 99.5, 0.0, 1.0, clip=True),
    "percentiles_to_-1_1": ScaleIntensityRangePercentilesd("image", 2, 98, -1.0, 1.0, clip=False),
    "range_ct": ScaleIntensityRanged("image", a_min=-1000, a_max=1000, b_min=0.0, b_max=1.0, clip=True),
    "zscore": NormalizeIntensityd("image"),
    "zscore_channel_wise": NormalizeIntensityd("image", channel_wise=True),
    "fixed": NormalizeIntensityd("image", subtrahend=100.0, divisor=50.0),
}


@pytest.mark.parametrize("name", sorted(PRE))
def test_preprocessing_computes_what_the_transform_computes(name: str) -> None:
    rng = np.random.default_rng(0)
    image = (rng.gamma(2.0, 300.0, size=(2, 40, 30)) - 400).astype(np.float32)
    proc = translate_preprocessing([LoadImaged("image"), PRE[name]], "image", AXES)
    assert proc.ops[0].id == "ensure_dtype" and proc.ops[-1].id == "ensure_dtype"
    want = np.asarray(PRE[name]({"image": torch.as_tensor(image)})["image"])
    np.testing.assert_allclose(apply_ops(proc.ops, image), want, rtol=1e-4, atol=1e-4)


def test_softmax_and_label_steps() -> None:
    from monai.transforms import Lambdad

    from monai_unet.data import isbi_label_from_membrane

    post = [
        Activationsd("pred", softmax=True),
        AsDiscreted("pred", argmax=True),
        Lambdad("pred", func=isbi_label_from_membrane),
    ]
    proc = translate_postprocessing(post)
    assert [o.id for o in proc.ops] == ["softmax", "ensure_dtype"] and proc.activation == "softmax"
    assert proc.applied == post[:1]  # the test output runs the activation only
    assert any("argmax" in n for n in proc.notes) and any("255 = cell" in n for n in proc.notes)
    proc = translate_postprocessing([Activationsd("pred", sigmoid=True), AsDiscreted("pred", threshold=0.5)])
    assert [o.id for o in proc.ops] == ["sigmoid", "binarize", "ensure_dtype"]


@pytest.mark.parametrize(
    ("transforms", "where", "name"),
    [
        ([GaussianSmoothd("image", sigma=1.0)], "pre", "GaussianSmoothd"),
        ([NormalizeIntensityd("image", nonzero=True)], "pre", "NormalizeIntensityd"),
        ([Spacingd("image", pixdim=(1.0, 1.0))], "pre", "Spacingd"),
        ([Activationsd("pred", softmax=True), KeepLargestConnectedComponentd("pred")], "post", "KeepLargest"),
        ([Activationsd("pred", softmax=True), AsDiscreted("pred", to_onehot=2)], "post", "AsDiscreted"),
    ],
)
def test_transform_without_equivalent_is_named(transforms: list, where: str, name: str) -> None:
    with pytest.raises(UnsupportedTransformError, match=name) as info:
        if where == "pre":
            translate_preprocessing(transforms, "image", AXES)
        else:
            translate_postprocessing(transforms)
    assert "no bioimage.io equivalent" in str(info.value)


def test_declared_spacing() -> None:
    proc = translate_preprocessing([Spacingd("image", pixdim=(2.0, 2.0, 3.0))], "image", ["z", "y", "x"], True)
    assert proc.spacing == (2.0, 2.0, 3.0) and "3 x 2 x 2 mm" in proc.notes[0]


def test_planned_normalisation() -> None:
    normalize = pytest.importorskip("monai_unet.transforms.normalize")
    rng = np.random.default_rng(1)
    image = rng.normal(300.0, 80.0, size=(1, 30, 20)).astype(np.float32)
    schemes = [
        {"scheme": "percentile_range", "lower": 0.5, "upper": 99.5, "b_min": 0.0, "b_max": 1.0, "clip": True},
        {"scheme": "zscore", "nonzero": False},
        {"scheme": "ct", "clip": [100.0, 500.0], "mean": 300.0, "std": 80.0},
    ]
    for scheme in schemes:
        t = normalize.PlannedNormalized("image", [scheme])
        ops = translate_preprocessing([t], "image", AXES).ops
        want = np.asarray(t({"image": torch.as_tensor(image)})["image"])
        np.testing.assert_allclose(apply_ops(ops, image), want, rtol=1e-4, atol=1e-4)
    with pytest.raises(UnsupportedTransformError, match="PlannedNormalized"):
        translate_preprocessing(
            [normalize.PlannedNormalized("image", [{"scheme": "zscore", "nonzero": True}])], "image", AXES
        )
