"""Ignite handlers for the ISBI metrics, for a bundle evaluator's ``key_val_metric`` / ``additional_metrics``."""

from __future__ import annotations

from collections.abc import Callable

from monai.handlers import IgniteMetricHandler
from monai.utils import MetricReduction

from monai_unet.metrics.isbi import PixelErrorMetric, RandErrorMetric

__all__ = ["PixelError", "RandError"]


class PixelError(IgniteMetricHandler):
    """Mean ISBI pixel error over the images of an epoch (handler of :class:`PixelErrorMetric`; lower is better).

    Args:
        reduction: reduction of the per-image values, ``"mean"`` by default.
        output_transform: extracts ``(y_pred, y)`` from ``engine.state.output``, e.g.
            ``monai.handlers.from_engine(["pred", "label"])``.
        save_details: keep the per-image values in ``engine.state.metric_details``.
    """

    def __init__(
        self,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        output_transform: Callable = lambda x: x,
        save_details: bool = True,
    ) -> None:
        super().__init__(
            metric_fn=PixelErrorMetric(reduction=reduction),
            output_transform=output_transform,
            save_details=save_details,
        )


class RandError(IgniteMetricHandler):
    """Mean ISBI Rand error over the images of an epoch (handler of :class:`RandErrorMetric`; lower is better).

    As a ``key_val_metric`` give the evaluator ``metric_cmp_fn=lambda current, best: current < best`` so that the
    lowest error counts as the best.

    Args:
        object_class: class whose connected components are the objects (0: cell interior, membrane being 1).
        connectivity: component connectivity (1: faces only).
        reduction: reduction of the per-image values, ``"mean"`` by default.
        output_transform: extracts ``(y_pred, y)`` from ``engine.state.output``.
        save_details: keep the per-image values in ``engine.state.metric_details``.
    """

    def __init__(
        self,
        object_class: int = 0,
        connectivity: int = 1,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        output_transform: Callable = lambda x: x,
        save_details: bool = True,
    ) -> None:
        super().__init__(
            metric_fn=RandErrorMetric(object_class=object_class, connectivity=connectivity, reduction=reduction),
            output_transform=output_transform,
            save_details=save_details,
        )
