"""nnU-Net's deep supervision weights around any loss (MONAI's :class:`~monai.losses.DeepSupervisionLoss`).

A network built with ``UNet(deep_supervision=n)`` returns, in training mode, its top output and those of the ``n``
decoder levels below it, each cropped to the region of the top output. MONAI's wrapper scores each against the
label down-sampled to it (nearest neighbour) and sums the losses; nnU-Net weights level ``k`` by ``1 / 2^k``,
normalised to sum to 1 (``nnunetv2``'s ``_build_loss``), so the loss keeps the scale of the plain loss. A bundle
wraps its ``loss`` entry with it::

    "loss_function": "$monai_unet.losses.deep_supervision_loss(@loss, @deep_supervision)"
"""

from __future__ import annotations

from monai.losses import DeepSupervisionLoss
from torch.nn.modules.loss import _Loss

__all__ = ["deep_supervision_loss", "deep_supervision_weights"]


def deep_supervision_weights(levels: int) -> list[float]:
    """nnU-Net's weights for the top output and ``levels`` supervised levels below it: ``1 / 2^k``, summing to 1."""
    raw = [0.5**k for k in range(int(levels) + 1)]
    return [w / sum(raw) for w in raw]


def deep_supervision_loss(loss: _Loss, levels: int) -> _Loss:
    """``loss`` itself for ``levels == 0``; otherwise MONAI's ``DeepSupervisionLoss`` with nnU-Net's weights."""
    if int(levels) < 0:
        raise ValueError(f"deep supervision levels must be >= 0, got {levels}.")
    if int(levels) == 0:
        return loss
    return DeepSupervisionLoss(loss, weights=deep_supervision_weights(levels))
