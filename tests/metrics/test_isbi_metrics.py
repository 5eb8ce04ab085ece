"""ISBI 2012 pixel and Rand errors on hand-made label pairs with answers worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from monai_unet.metrics import PixelErrorMetric, RandErrorMetric, compute_pixel_error, compute_rand_error


def onehot(index: torch.Tensor, n: int = 2) -> torch.Tensor:
    return F.one_hot(index[:, 0].long(), n).movedim(-1, 1).float()


def two_cells(n: int) -> torch.Tensor:
    """(1, 1, 3, 2n + 1) class map: two 3 x n cells (class 0) split by a membrane column (class 1)."""
    label = torch.zeros(1, 1, 3, 2 * n + 1)
    label[..., n] = 1
    return label


def test_pixel_error_counts_misclassified_pixels():
    label = torch.zeros(2, 1, 4, 4)
    pred = label.clone()
    pred[0, 0, 0, :3] = 1  # 3 of 16 pixels wrong in the first image, none in the second
    expected = torch.tensor([[3 / 16], [0.0]])
    torch.testing.assert_close(compute_pixel_error(pred, label), expected)
    torch.testing.assert_close(compute_pixel_error(onehot(pred), onehot(label)), expected)  # one-hot form
    torch.testing.assert_close(compute_pixel_error(torch.full_like(pred, 0.3) + pred * 0.5, label), expected)  # p
    metric = PixelErrorMetric()
    metric(pred, label)
    metric(label, label)
    assert metric.aggregate().item() == pytest.approx(3 / 16 / 4)  # mean over the 4 images of 2 iterations


def test_rand_error_is_zero_for_a_perfect_prediction():
    label = two_cells(5)
    assert compute_rand_error(label, label).item() == 0.0
    assert compute_rand_error(onehot(label), label).item() == 0.0


def test_rand_error_of_a_merge_by_hand():
    # the predicted membrane is missing: both cells (N = 3n pixels each) become one segment. Counting ordered
    # pixel pairs in one segment: sum_ij p(p-1) = 2N(N-1) (true and predicted agree), true 2N(N-1), predicted
    # 2N(2N-1) over the true cells' pixels (membrane pixels of the label are ignored). F = 2 * 2N(N-1) / (2N(N-1) +
    # 2N(2N-1)) = 2(N-1) / (3N-2).
    n = 4
    big_n = 3 * n
    error = compute_rand_error(torch.zeros_like(two_cells(n)), two_cells(n)).item()
    assert error == pytest.approx(1 - 2 * (big_n - 1) / (3 * big_n - 2))


def test_rand_error_of_a_split_by_hand():
    # the label is one cell of M = 27 pixels; the prediction draws a membrane through it, making two cells of 12
    # pixels and a 3-pixel segment of predicted membrane: sum p(p-1) = 2*12*11 + 3*2 = 270 (also the predicted
    # sum), true sum = 27*26 = 702, so F = 2*270 / (702 + 270).
    label = torch.zeros(1, 1, 3, 9)
    pred = two_cells(4)
    assert compute_rand_error(pred, label).item() == pytest.approx(1 - 540 / 972)


def test_rand_error_of_the_objects_class_and_nan_without_objects():
    membrane_is_zero = 1 - two_cells(4)  # objects are class 1 here
    merged = torch.ones_like(membrane_is_zero)
    assert compute_rand_error(merged, membrane_is_zero, object_class=1).item() == pytest.approx(
        1 - 2 * 11 / (3 * 12 - 2)
    )
    no_cells = torch.ones(1, 1, 3, 9)
    assert math.isnan(compute_rand_error(no_cells, no_cells).item())
    metric = RandErrorMetric(get_not_nans=True)
    metric(no_cells, no_cells)
    metric(two_cells(4), two_cells(4))
    value, not_nans = metric.aggregate()
    assert value.item() == 0.0 and not_nans.item() == 1  # the image without cells is left out


def test_mismatched_shapes_raise():
    with pytest.raises(ValueError, match="same batch and spatial"):
        compute_pixel_error(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 5))
    with pytest.raises(ValueError, match="batch-first"):
        compute_rand_error(torch.zeros(4, 4), torch.zeros(4, 4))
