"""WeightedCrossEntropyLoss: weight 1 is the plain loss, the weight channel travels in the label, clear errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from monai_unet.losses import WeightedCrossEntropyLoss, split_weight

SPATIAL = {2: (7, 9), 3: (5, 6, 4)}


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("n_classes", [2, 3])
def test_weight_one_equals_unweighted_softmax_ce(spatial_dims, n_classes):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, n_classes, *SPATIAL[spatial_dims], generator=g)
    index = torch.randint(0, n_classes, (2, 1, *SPATIAL[spatial_dims]), generator=g).float()
    plain = F.cross_entropy(logits, index[:, 0].long())
    ones = torch.ones_like(index)
    loss = WeightedCrossEntropyLoss()
    torch.testing.assert_close(loss(logits, torch.cat([index, ones], 1)), plain)  # weight as the last channel
    torch.testing.assert_close(loss(logits, index, weight=ones), plain)  # weight given explicitly
    torch.testing.assert_close(WeightedCrossEntropyLoss(weight_in_target=False)(logits, index), plain)
    onehot = F.one_hot(index[:, 0].long(), n_classes).movedim(-1, 1).float()
    torch.testing.assert_close(loss(logits, torch.cat([onehot, ones], 1)), plain)  # one-hot form


def test_binary_uses_sigmoid_and_weights_scale_pixels():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 1, 8, 8, generator=g)
    target = torch.randint(0, 2, (3, 1, 8, 8), generator=g).float()
    weight = torch.rand(3, 1, 8, 8, generator=g) * 10
    loss = WeightedCrossEntropyLoss(weight_in_target=False)
    torch.testing.assert_close(loss(logits, target), F.binary_cross_entropy_with_logits(logits, target))
    expected = (F.binary_cross_entropy_with_logits(logits, target, reduction="none") * weight).mean()
    torch.testing.assert_close(loss(logits, target, weight=weight), expected)
    per_pixel = WeightedCrossEntropyLoss(reduction="none")(logits, torch.cat([target, weight], 1))
    assert per_pixel.shape == (3, 1, 8, 8)
    torch.testing.assert_close(
        WeightedCrossEntropyLoss(reduction="sum")(logits, torch.cat([target, weight], 1)), per_pixel.sum()
    )


def test_weight_changes_the_gradient_where_it_is_large():
    logits = torch.zeros(1, 2, 4, 4, requires_grad=True)
    target = torch.zeros(1, 1, 4, 4)
    weight = torch.ones(1, 1, 4, 4)
    weight[..., 0, 0] = 10.0
    WeightedCrossEntropyLoss()(logits, torch.cat([target, weight], 1)).backward()
    grad = logits.grad.abs().sum(1)[0]
    assert grad[0, 0] == pytest.approx(10 * grad[1, 1].item())


def test_wrong_shapes_raise_clear_errors():
    loss = WeightedCrossEntropyLoss()
    logits = torch.randn(2, 2, 8, 8)
    with pytest.raises(ValueError, match="CenterSpatialCropd"):
        loss(logits, torch.zeros(2, 2, 10, 10))  # label not cropped to the valid output
    with pytest.raises(ValueError, match="channels"):
        loss(logits, torch.zeros(2, 4, 8, 8))
    with pytest.raises(ValueError, match="weight shape"):
        loss(logits, torch.zeros(2, 1, 8, 8), weight=torch.ones(2, 1, 6, 6))
    with pytest.raises(ValueError, match="ConcatItemsd"):
        split_weight(torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match=r"0/255"):
        loss(logits, torch.cat([torch.full((2, 1, 8, 8), 255.0), torch.ones(2, 1, 8, 8)], 1))
