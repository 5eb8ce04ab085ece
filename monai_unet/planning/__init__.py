"""Planning a valid U-Net for a dataset, nnU-Net style: ``monai-unet plan``.

- :mod:`~monai_unet.planning.fingerprint`: each case read as the bundle reads it (spacing, shape, nonzero crop,
  classes, foreground intensities); bad data raises :class:`PlanError` naming the case.
- :mod:`~monai_unet.planning.rules`: the rules (target spacing, kernels and strides, features, normalisation,
  oversampling, batch), each with its reason.
- :mod:`~monai_unet.planning.network`: the network and tiles from a memory budget (nnU-Net's shrinking loop on the
  valid network's size rules).
- :mod:`~monai_unet.planning.budget`: memory budgets, the training memory estimate, timing real steps.
- :mod:`~monai_unet.planning.plan`: the plan as a bundle config overlay, its table, writing it.
"""

from __future__ import annotations

from monai_unet.planning.fingerprint import CaseFingerprint, DatasetFingerprint, PlanError, fingerprint_dataset
from monai_unet.planning.plan import PLAN_KEYS, PlanOptions, format_plan, make_plan, write_plan
from monai_unet.planning.rules import (
    Topology,
    choose_batch_size,
    choose_normalization,
    foreground_oversampling,
    plan_features,
    plan_topology,
    target_spacing,
)

__all__ = [
    "PLAN_KEYS",
    "CaseFingerprint",
    "DatasetFingerprint",
    "PlanError",
    "PlanOptions",
    "Topology",
    "choose_batch_size",
    "choose_normalization",
    "fingerprint_dataset",
    "foreground_oversampling",
    "format_plan",
    "make_plan",
    "plan_features",
    "plan_topology",
    "target_spacing",
    "write_plan",
]
