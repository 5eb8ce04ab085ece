"""The ISBI 2012 EM segmentation metrics MONAI lacks: pixel error and Rand error, as MONAI metrics.

Input convention (as MONAI's metrics): ``y_pred`` and ``y`` batch-first ``(B, C, *S)`` (or lists of channel-first
``(C, *S)``), each either one-hot/probabilities with ``C >= 2`` channels (the class is the arg-max channel) or a
class-index map with ``C = 1`` (the class is the rounded value, so a binary probability map also works). The
bundles train membrane as class 1 and cell interior as class 0; a raw ISBI label (0 membrane, 255 cell) must be
mapped to that first.
"""

from __future__ import annotations

import torch
from monai.metrics import CumulativeIterationMetric
from monai.metrics.utils import do_metric_reduction
from monai.utils import MetricReduction
from scipy import ndimage as ndi
from skimage.metrics import adapted_rand_error

__all__ = ["PixelErrorMetric", "RandErrorMetric", "class_map", "compute_pixel_error", "compute_rand_error"]


def class_map(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, *S)`` one-hot/probabilities (``C >= 2``, arg-max) or class indices (``C = 1``) -> ``(B, *S)`` int64."""
    if x.dim() < 3:
        raise ValueError(f"expected a batch-first map (B, C, *spatial); got shape {tuple(x.shape)}.")
    if x.shape[1] == 1:
        return torch.round(x[:, 0]).long()
    return torch.argmax(x, dim=1)


def _check(y_pred: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    pred, true = class_map(torch.as_tensor(y_pred)), class_map(torch.as_tensor(y))
    if pred.shape != true.shape:
        raise ValueError(
            f"y_pred {tuple(y_pred.shape)} and y {tuple(y.shape)} must have the same batch and spatial sizes."
        )
    return pred, true


def compute_pixel_error(y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Fraction of pixels whose class differs (1 - accuracy of the membrane map), per image: ``(B, 1)`` float."""
    pred, true = _check(y_pred, y)
    return (pred != true).flatten(1).float().mean(dim=1, keepdim=True)


def compute_rand_error(
    y_pred: torch.Tensor, y: torch.Tensor, object_class: int = 0, connectivity: int = 1
) -> torch.Tensor:
    """Rand error (1 - F-score of the adapted Rand index) of the objects, per image: ``(B, 1)`` float.

    Objects are the connected components of the pixels of class ``object_class`` (cell interior, class 0, when
    membrane is class 1), found in prediction and label alike. The index is scikit-image's
    ``adapted_rand_error``: pixels outside the label's objects are ignored; predicted non-object pixels inside
    them count as one extra segment. NaN for an image whose label has no object (left out by the reduction).

    Args:
        y_pred: ``(B, C, *S)`` prediction (see the module docstring).
        y: ``(B, C', *S)`` label.
        object_class: the class whose components are the objects.
        connectivity: 1 = components connected through faces only (4-neighbours in 2D).
    """
    pred, true = _check(y_pred, y)
    structure = ndi.generate_binary_structure(pred.dim() - 1, connectivity)
    errors = []
    for p, t in zip(pred.cpu().numpy(), true.cpu().numpy()):
        true_ids, n_true = ndi.label(t == object_class, structure=structure)
        pred_ids, _ = ndi.label(p == object_class, structure=structure)
        if n_true == 0 or (true_ids > 0).sum() < 2:
            errors.append(float("nan"))
            continue
        errors.append(float(adapted_rand_error(true_ids, pred_ids, ignore_labels=(0,))[0]))
    return torch.tensor(errors, dtype=torch.float32, device=pred.device).unsqueeze(1)


class _ErrorMetric(CumulativeIterationMetric):
    def __init__(self, reduction: MetricReduction | str = MetricReduction.MEAN, get_not_nans: bool = False) -> None:
        super().__init__()
        self.reduction = reduction
        self.get_not_nans = get_not_nans

    def aggregate(
        self, reduction: MetricReduction | str | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Reduce the per-image values of all iterations (``reduction`` overrides the constructor's)."""
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise ValueError(f"the data to aggregate must be a PyTorch Tensor, got {type(data)}.")
        f, not_nans = do_metric_reduction(data, reduction or self.reduction)
        return (f, not_nans) if self.get_not_nans else f


class PixelErrorMetric(_ErrorMetric):
    """ISBI 2012 pixel error: the fraction of misclassified pixels (lower is better).

    Args:
        reduction: MONAI metric reduction of the per-image values (``"mean"``, ``"none"``, ...).
        get_not_nans: also return the count of non-NaN values from :meth:`aggregate`.

    ``__call__(y_pred, y)``: ``(B, C, *S)`` each -> ``(B, 1)`` per image; ``aggregate()`` reduces all of them.
    """

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        if y is None:
            raise ValueError("PixelErrorMetric needs both y_pred and y.")
        return compute_pixel_error(y_pred, y)


class RandErrorMetric(_ErrorMetric):
    """ISBI 2012 Rand error: 1 - F-score of the adapted Rand index of connected objects (lower is better).

    Args:
        object_class: class whose connected components are the objects (0: cell interior, membrane being 1).
        connectivity: component connectivity (1: faces only).
        reduction: MONAI metric reduction of the per-image values.
        get_not_nans: also return the count of non-NaN values from :meth:`aggregate`.

    ``__call__(y_pred, y)``: ``(B, C, *S)`` each -> ``(B, 1)``; computed on the CPU with scipy and scikit-image.
    """

    def __init__(
        self,
        object_class: int = 0,
        connectivity: int = 1,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
    ) -> None:
        super().__init__(reduction=reduction, get_not_nans=get_not_nans)
        self.object_class = object_class
        self.connectivity = connectivity

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        if y is None:
            raise ValueError("RandErrorMetric needs both y_pred and y.")
        return compute_rand_error(y_pred, y, self.object_class, self.connectivity)
