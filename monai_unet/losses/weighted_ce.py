"""Pixel-weighted cross-entropy: the loss of the U-Net paper, with the weight map carried in the label.

Inside MONAI's ``SupervisedTrainer`` the loss is called as ``loss_function(pred, label)``. The weight map reaches it
as an extra, last channel of the label, made in the data pipeline with MONAI's transforms::

    BorderWeightMapd(keys="label", weight_keys="weight")          # (1, *S) weight map
    ConcatItemsd(keys=["label", "weight"], name="label")          # label becomes (2, *S): class index, weight
    CenterSpatialCropd(keys="label", roi_size=network.output_size(patch_size))

and :class:`WeightedCrossEntropyLoss` (``weight_in_target=True``, the default) splits it off. No engine fork and no
custom ``prepare_batch`` are needed. A weight can also be given explicitly: ``loss(pred, label, weight=w)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.utils import LossReduction
from torch.nn.modules.loss import _Loss

__all__ = ["WeightedCrossEntropyLoss", "split_weight"]


def split_weight(target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a label that carries its weight map as the last channel.

    Args:
        target: ``(B, K + 1, *S)``.

    Returns:
        ``(label, weight)`` of shapes ``(B, K, *S)`` and ``(B, 1, *S)``.
    """
    if target.dim() < 3 or target.shape[1] < 2:
        raise ValueError(
            "expected a label with the weight map as its last channel, (B, K + 1, *spatial) with K >= 1; got shape "
            f"{tuple(target.shape)}. Add the weight channel with ConcatItemsd(keys=['label', 'weight'], name='label'), "
            "or pass weight= explicitly with weight_in_target=False."
        )
    return target[:, :-1], target[:, -1:]


class WeightedCrossEntropyLoss(_Loss):
    """Cross-entropy weighted per pixel: ``mean_x w(x) * CE(x)`` (the energy of the U-Net paper).

    Softmax cross-entropy for ``C >= 2`` output channels, sigmoid (binary) cross-entropy with logits for ``C = 1``.

    Args:
        weight_in_target: the weight map is the last channel of ``target`` when no ``weight`` is passed (the way
            it travels through ``SupervisedTrainer``, see the module docstring). ``False``: the target holds only
            the label and, without ``weight``, every pixel weighs 1.
        reduction: ``"mean"`` (over batch and pixels), ``"sum"`` or ``"none"`` (per-pixel ``(B, 1, *S)``).

    Shapes (``weight_in_target=False`` or ``weight`` given):
        - ``input``: logits ``(B, C, *S)``.
        - ``target``: class indices ``(B, 1, *S)`` (values in ``[0, C)``; for ``C = 1`` values 0/1), or, for
          ``C >= 2``, one-hot/probabilities ``(B, C, *S)``.
        - ``weight``: ``(B, 1, *S)`` or ``(B, *S)``.
        With ``weight_in_target=True`` and no ``weight``, ``target`` is ``(B, 2, *S)`` (class index, weight) or
        ``(B, C + 1, *S)`` (one-hot, weight).
    """

    def __init__(self, weight_in_target: bool = True, reduction: LossReduction | str = LossReduction.MEAN) -> None:
        super().__init__(reduction=LossReduction(reduction).value)
        self.weight_in_target = weight_in_target

    def forward(self, input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Loss of logits ``input`` ``(B, C, *S)`` against ``target`` (see the class docstring)."""
        if input.dim() < 3:
            raise ValueError(f"input must be logits of shape (B, C, *spatial); got shape {tuple(input.shape)}.")
        if weight is None and self.weight_in_target:
            target, weight = split_weight(target)
        n_classes = input.shape[1]
        if target.dim() != input.dim() or target.shape[0] != input.shape[0] or target.shape[2:] != input.shape[2:]:
            raise ValueError(
                f"target shape {tuple(target.shape)} does not match input shape {tuple(input.shape)} (batch and "
                "spatial sizes must agree). For an unpadded (valid) UNet crop the label and weight map to the network "
                "output with CenterSpatialCropd(roi_size=network.output_size(patch_size))."
            )
        if target.shape[1] not in (1, n_classes):
            raise ValueError(
                f"target has {target.shape[1]} channels; expected 1 (class indices) or {n_classes} (one-hot) for "
                f"{n_classes} output channels" + (" plus the weight channel" if self.weight_in_target else "") + "."
            )
        if weight is None:
            weight = torch.ones_like(input[:, :1])
        if weight.dim() == input.dim() - 1:
            weight = weight.unsqueeze(1)
        if weight.shape != (input.shape[0], 1, *input.shape[2:]):
            raise ValueError(
                f"weight shape {tuple(weight.shape)} does not match input shape {tuple(input.shape)}; expected "
                f"{(input.shape[0], 1, *input.shape[2:])}."
            )
        if n_classes == 1:
            pixel = F.binary_cross_entropy_with_logits(input, target.to(input.dtype), reduction="none")
        elif target.shape[1] == 1:
            index = target[:, 0].long()
            if index.numel() and (int(index.min()) < 0 or int(index.max()) >= n_classes):
                raise ValueError(
                    f"class indices must lie in [0, {n_classes}); got values from {int(index.min())} to "
                    f"{int(index.max())}. Map raw label values (e.g. 0/255) to class indices first."
                )
            pixel = F.cross_entropy(input, index, reduction="none").unsqueeze(1)
        else:
            pixel = -(target.to(input.dtype) * F.log_softmax(input, dim=1)).sum(dim=1, keepdim=True)
        loss = pixel * weight.to(input.dtype)
        if self.reduction == LossReduction.MEAN.value:
            return loss.mean()
        if self.reduction == LossReduction.SUM.value:
            return loss.sum()
        return loss
