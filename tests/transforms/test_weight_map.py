"""BorderWeightMap: the paper's formula at hand-picked pixels, class balance, speed-up exactness on real ISBI labels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from monai.data import MetaTensor
from PIL import Image
from scipy import ndimage as ndi

from monai_unet.transforms import BorderWeightMap, BorderWeightMapd, border_weight_map, object_labels

W0, SIGMA = 10.0, 5.0


def border(d1: float, d2: float) -> float:
    return W0 * math.exp(-((d1 + d2) ** 2) / (2 * SIGMA**2))


def naive_border_term(ids: np.ndarray, spacing=None) -> np.ndarray:
    """The textbook way: one distance transform per object over the whole image, sorted per pixel."""
    n = int(ids.max())
    dist = np.sort(np.stack([ndi.distance_transform_edt(ids != k, sampling=spacing) for k in range(1, n + 1)]), 0)
    return W0 * np.exp(-((dist[0] + dist[1]) ** 2) / (2 * SIGMA**2)) * (ids == 0)


@pytest.fixture
def two_squares() -> np.ndarray:
    """15x25 binary label: squares A (rows 5-9, cols 2-6) and B (rows 5-9, cols 12-16)."""
    label = np.zeros((15, 25), dtype=np.uint8)
    label[5:10, 2:7] = 1
    label[5:10, 12:17] = 1
    return label


def test_two_objects_match_the_formula_by_hand(two_squares):
    weight = BorderWeightMap()(two_squares[None])[0]
    n = two_squares.size
    n_obj = 50
    w_obj, w_bg = n / (2 * n_obj), n / (2 * (n - n_obj))
    # (pixel, d1, d2) worked out by hand
    cases = [
        ((7, 9), 3.0, 3.0),  # half-way between the squares
        ((2, 9), math.sqrt(18), math.sqrt(18)),  # diagonally above the gap: corners (5, 6) and (5, 12)
        ((7, 20), 4.0, 14.0),  # right of B, A far behind it
        ((0, 0), math.sqrt(29), math.sqrt(25 + 144)),  # top-left corner: corners (5, 2) and (5, 12)
    ]
    for (r, c), d1, d2 in cases:
        assert weight[r, c] == pytest.approx(w_bg + border(d1, d2), rel=1e-5), (r, c)
    assert weight[7, 4] == pytest.approx(w_obj)  # inside an object: no border term
    assert weight[7, 14] == pytest.approx(w_obj)


def test_one_object_has_no_border_term(two_squares):
    one = two_squares.copy()
    one[:, 10:] = 0
    weight = BorderWeightMap()(one[None])[0]
    expected = np.where(one == 1, one.size / (2 * 25), one.size / (2 * (one.size - 25)))
    np.testing.assert_allclose(weight, expected, rtol=1e-6)
    assert (BorderWeightMap(class_balance=False)(one[None]) == 1).all()


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_class_balance_gives_equal_total_weight_per_class(spatial_dims):
    rng = np.random.default_rng(0)
    shape = (40, 36) if spatial_dims == 2 else (20, 18, 16)
    label = (ndi.gaussian_filter(rng.random(shape), 2) > 0.5).astype(np.uint8)
    weight = BorderWeightMap(w0=0.0)(label[None])[0]
    assert weight[label == 1].sum() == pytest.approx(weight[label == 0].sum(), rel=1e-5)
    assert weight.mean() == pytest.approx(1.0, rel=1e-5)


def test_fast_map_equals_the_naive_one_on_isbi(shared_data):
    label = np.array(Image.open(shared_data / "isbi2012" / "labels" / "train_03.png"))[:192, 160:352]
    ids, n = object_labels(label)
    assert n > 10
    fast = border_weight_map(ids, class_balance=False) - 1.0
    np.testing.assert_allclose(fast, naive_border_term(ids), atol=W0 * math.exp(-(5.0**2) / 2))


def test_isbi_conventions_give_one_map(shared_data):
    raw = np.array(Image.open(shared_data / "isbi2012" / "labels" / "train_00.png"))[None, :128, :128]
    membrane_is_one = (raw == 0).astype(np.float32)  # the bundles' convention: membrane class 1, cell class 0
    a = BorderWeightMap()(raw)
    np.testing.assert_array_equal(a, BorderWeightMap(foreground=255)(raw))
    np.testing.assert_array_equal(a, BorderWeightMap(foreground=0)(membrane_is_one))
    ids, _ = object_labels(raw[0])
    np.testing.assert_array_equal(a, BorderWeightMap(instance=True)((ids * 7)[None]))
    assert a.max() > 5  # thin membranes between cells get most of w0


def test_voxel_spacing_is_honoured_in_3d():
    label = np.zeros((1, 9, 9, 4), dtype=np.uint8)
    label[0, :, :, 0] = 1
    label[0, :, :, 3] = 1
    iso = BorderWeightMap(class_balance=False)(label)[0]
    aniso = BorderWeightMap(class_balance=False, spacing=(1.0, 1.0, 4.0))(label)[0]
    assert iso[4, 4, 1] == pytest.approx(1 + border(1, 2), rel=1e-5)
    assert aniso[4, 4, 1] == pytest.approx(1 + border(4, 8), rel=1e-5)
    meta = MetaTensor(torch.as_tensor(label), affine=torch.diag(torch.tensor([1.0, 1.0, 4.0, 1.0])))
    from_meta = BorderWeightMap(class_balance=False, spacing="pixdim")(meta)
    assert isinstance(from_meta, MetaTensor)
    np.testing.assert_allclose(from_meta[0].numpy(), aniso, rtol=1e-6)
    np.testing.assert_allclose(
        aniso - 1, naive_border_term(object_labels(label[0])[0], (1.0, 1.0, 4.0)), atol=W0 * math.exp(-12.5)
    )


def test_dictionary_version_and_types(two_squares):
    data = {"label": torch.as_tensor(two_squares[None]), "image": torch.zeros(1, 15, 25)}
    out = BorderWeightMapd(keys="label", weight_keys="weight")(data)
    assert out["weight"].dtype == torch.float32 and out["weight"].shape == (1, 15, 25)
    np.testing.assert_allclose(out["weight"].numpy(), BorderWeightMap()(two_squares[None]), rtol=1e-6)
    assert "label_weight" in BorderWeightMapd(keys="label")(data)


def test_bad_input_raises_clear_errors(two_squares):
    with pytest.raises(ValueError, match="one channel"):
        BorderWeightMap()(np.stack([two_squares, two_squares]))
    with pytest.raises(ValueError, match="sigma"):
        BorderWeightMap(sigma=0)
    with pytest.raises(ValueError, match="spacing"):
        BorderWeightMap(spacing=(1.0, 1.0, 1.0))(two_squares[None])
    with pytest.raises(ValueError, match="MetaTensor"):
        BorderWeightMap(spacing="pixdim")(two_squares[None])


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    spatial_dims=st.sampled_from([2, 3]),
    spacing_z=st.sampled_from([1.0, 2.5]),
    density=st.floats(0.3, 0.7),
)
def test_fast_map_equals_the_naive_one_on_random_labels(seed, spatial_dims, spacing_z, density):
    rng = np.random.default_rng(seed)
    shape = (30, 34) if spatial_dims == 2 else (14, 16, 9)
    spacing = (1.0,) * (spatial_dims - 1) + (spacing_z,)
    smooth = ndi.gaussian_filter(rng.random(shape), 1.5)
    label = smooth > np.quantile(smooth, 1 - density)
    ids, n = object_labels(label)
    fast = border_weight_map(ids, class_balance=False, spacing=spacing) - 1.0
    if n < 2:
        assert (fast == 0).all()
    else:
        np.testing.assert_allclose(fast, naive_border_term(ids, spacing), atol=W0 * math.exp(-(5.0**2) / 2) + 1e-6)
