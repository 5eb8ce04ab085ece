"""Tversky + cross-entropy: Dice + cross-entropy (nnU-Net's loss) with the Dice term leaning towards recall.

The Tversky index ``TP / (TP + alpha FP + beta FN)`` is the Dice coefficient at ``alpha = beta = 0.5``; ``beta >
alpha`` charges a missed foreground voxel more than a false one (Salehi et al., 2017, "Tversky loss function for
image segmentation using 3D fully convolutional deep networks": ``alpha = 0.3, beta = 0.7`` for small lesions). MONAI
has the Tversky term (:class:`monai.losses.TverskyLoss`) and :class:`monai.losses.DiceCELoss`, but no Tversky with
cross-entropy; this is that sum. At ``alpha = beta = 0.5`` it is ``DiceCELoss`` with the same ``include_background``,
``to_onehot_y``, ``softmax`` and ``batch`` (up to the smoothing constants, about 1e-7), so a bundle's loss entry
changes by its target and the two weights::

    "loss": {"_target_": "monai_unet.losses.TverskyCELoss", "to_onehot_y": true, "softmax": true,
             "include_background": false, "batch": true, "alpha": 0.3, "beta": 0.7}
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import TverskyLoss
from torch.nn.modules.loss import _Loss

__all__ = ["TverskyCELoss"]


class TverskyCELoss(_Loss):
    """``lambda_tversky * Tversky + lambda_ce * cross-entropy`` for softmax outputs with ``C >= 2`` channels.

    Args:
        include_background: count channel 0 in the Tversky term (cross-entropy always covers every class).
        to_onehot_y: the target holds class indices ``(B, 1, *S)``; otherwise it is one-hot ``(B, C, *S)``.
        softmax: apply a softmax to the input in the Tversky term (the cross-entropy always takes logits).
        alpha: weight of false positives in the Tversky index.
        beta: weight of false negatives in the Tversky index.
        batch: sum the Tversky index over the batch before dividing (as ``DiceCELoss(batch=True)``).
        lambda_tversky: weight of the Tversky term.
        lambda_ce: weight of the cross-entropy term.
    """

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        softmax: bool = True,
        alpha: float = 0.3,
        beta: float = 0.7,
        batch: bool = False,
        lambda_tversky: float = 1.0,
        lambda_ce: float = 1.0,
    ) -> None:
        super().__init__()
        if lambda_tversky < 0 or lambda_ce < 0:
            raise ValueError(f"lambda_tversky and lambda_ce must be >= 0, got {lambda_tversky} and {lambda_ce}.")
        self.tversky = TverskyLoss(
            include_background=include_background,
            to_onehot_y=to_onehot_y,
            softmax=softmax,
            alpha=alpha,
            beta=beta,
            batch=batch,
        )
        self.to_onehot_y = to_onehot_y
        self.lambda_tversky = lambda_tversky
        self.lambda_ce = lambda_ce

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``input``: logits ``(B, C, *S)``; ``target``: ``(B, 1, *S)`` class indices or ``(B, C, *S)`` one-hot."""
        if input.shape[1] < 2:
            raise ValueError(f"TverskyCELoss needs C >= 2 softmax channels, got input of shape {tuple(input.shape)}.")
        if input.dim() != target.dim():
            raise ValueError(
                f"input {tuple(input.shape)} and target {tuple(target.shape)} must have the same number of dimensions."
            )
        if self.to_onehot_y or target.shape[1] == 1:
            ce = F.cross_entropy(input, target[:, 0].long())
        else:  # one-hot or soft labels: class probabilities, as DiceCELoss passes them
            ce = F.cross_entropy(input, target.to(input.dtype))
        return self.lambda_tversky * self.tversky(input, target) + self.lambda_ce * ce
