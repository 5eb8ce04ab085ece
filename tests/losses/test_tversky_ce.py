"""TverskyCELoss: at alpha = beta = 0.5 it is MONAI's DiceCELoss; beta > alpha charges a miss more than a false mark."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss

from monai_unet.losses import TverskyCELoss

SPATIAL = {2: (7, 9), 3: (5, 6, 4)}


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("batch", [False, True])
def test_half_and_half_is_dice_ce(spatial_dims, batch):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, *SPATIAL[spatial_dims], generator=g)
    index = torch.randint(0, 3, (2, 1, *SPATIAL[spatial_dims]), generator=g).float()
    kwargs = {"to_onehot_y": True, "softmax": True, "include_background": False, "batch": batch}
    expected = DiceCELoss(**kwargs)(logits, index)
    torch.testing.assert_close(TverskyCELoss(alpha=0.5, beta=0.5, **kwargs)(logits, index), expected)
    onehot = F.one_hot(index[:, 0].long(), 3).movedim(-1, 1).float()  # the one-hot target gives the same loss
    onehot_kwargs = {**kwargs, "to_onehot_y": False}
    torch.testing.assert_close(TverskyCELoss(alpha=0.5, beta=0.5, **onehot_kwargs)(logits, onehot), expected)


def test_recall_leaning_charges_a_miss_more_than_a_false_mark():
    target = torch.zeros(1, 1, 16, 16)
    target[..., 4:12, 4:12] = 1  # 64 tumour pixels
    under = torch.zeros_like(target)
    under[..., 4:12, 4:10] = 1  # 16 missed
    over = torch.zeros_like(target)
    over[..., 4:12, 4:14] = 1  # 16 false

    def logits(mask):  # a confident network's logits for a mask
        return torch.cat([-8 * (mask - 0.5), 8 * (mask - 0.5)], 1)

    recall = TverskyCELoss(to_onehot_y=True, include_background=False, alpha=0.3, beta=0.7, lambda_ce=0.0)
    dice = TverskyCELoss(to_onehot_y=True, include_background=False, alpha=0.5, beta=0.5, lambda_ce=0.0)
    dice_ratio = float(dice(logits(under), target) / dice(logits(over), target))  # 1.29: Dice's own lean
    recall_ratio = float(recall(logits(under), target) / recall(logits(over), target))  # 2.7
    assert recall_ratio > 1.5 * dice_ratio
    assert float(recall(logits(target), target)) < 0.01  # a perfect mark costs (almost) nothing


def test_errors_name_the_shapes():
    loss = TverskyCELoss(to_onehot_y=True)
    with pytest.raises(ValueError, match="C >= 2"):
        loss(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="same number of dimensions"):
        loss(torch.zeros(1, 2, 4, 4), torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match=">= 0"):
        TverskyCELoss(lambda_ce=-1.0)
