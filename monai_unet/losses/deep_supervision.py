"""nnU-Net's deep supervision weights around any loss.

A network built with ``UNet(deep_supervision=n)`` returns, in training mode, its top output and those of the ``n``
decoder levels below it stacked along dimension 1, ``(B, 1 + n, C, *S)`` (MONAI's ``DynUNet`` convention), each level
cropped to the top output's region and repeated to its size. :func:`deep_supervision_loss` unstacks them and sums
the loss of each against the label with nnU-Net's weights: level ``k`` by ``1 / 2^k``, normalised to sum to 1
(``nnunetv2``'s ``_build_loss``), so the loss keeps the scale of the plain loss (MONAI's
:class:`~monai.losses.DeepSupervisionLoss` does the sum). nnU-Net scores a level against the label down-sampled to
it; here the level's prediction, repeated, is scored against the full label, which counts every label voxel under
a coarse voxel rather than one of them. A bundle wraps its ``loss`` entry with it::

    "loss_function": {"_target_": "monai_unet.losses.deep_supervision_loss", "loss": "@loss",
                      "levels": "@deep_supervision"}
"""

from __future__ import annotations

import torch
from monai.losses import DeepSupervisionLoss
from torch.nn.modules.loss import _Loss

__all__ = ["StackedDeepSupervisionLoss", "deep_supervision_loss", "deep_supervision_weights"]


def deep_supervision_weights(levels: int) -> list[float]:
    """nnU-Net's weights for the top output and ``levels`` supervised levels below it: ``1 / 2^k``, summing to 1."""
    raw = [0.5**k for k in range(int(levels) + 1)]
    return [w / sum(raw) for w in raw]


class StackedDeepSupervisionLoss(_Loss):
    """``loss`` of each output stacked along dimension 1, weighted and summed (MONAI's ``DeepSupervisionLoss``).

    An input with the target's number of dimensions (one output, as in evaluation mode) gets ``loss`` alone.
    """

    def __init__(self, loss: _Loss, levels: int) -> None:
        super().__init__()
        self.loss = loss
        self.levels = int(levels)
        self.summed = DeepSupervisionLoss(loss, weights=deep_supervision_weights(levels))

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if input.dim() == target.dim():
            return self.loss(input, target)
        if input.dim() != target.dim() + 1 or input.shape[1] != self.levels + 1:
            raise ValueError(
                f"deep supervision of {self.levels} level(s) expects outputs stacked as (B, {self.levels + 1}, C, "
                f"*spatial) for a target of {target.dim()} dimensions, got {tuple(input.shape)}."
            )
        return self.summed(list(torch.unbind(input, dim=1)), target)


def deep_supervision_loss(loss: _Loss, levels: int) -> _Loss:
    """``loss`` itself for ``levels == 0``; otherwise :class:`StackedDeepSupervisionLoss` with nnU-Net's weights."""
    if int(levels) < 0:
        raise ValueError(f"deep supervision levels must be >= 0, got {levels}.")
    if int(levels) == 0:
        return loss
    return StackedDeepSupervisionLoss(loss, levels)
