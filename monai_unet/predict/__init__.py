"""``monai-unet predict``: segment folders of DICOM series, NIfTI/NRRD/MHA volumes and 2D PNG/TIFF images.

The modules depend one way: :mod:`~monai_unet.predict.inputs` (what to segment, the options, output names) and
:mod:`~monai_unet.predict.runner` (the bundle's ``inference.json`` run on one image) know nothing of each other;
:mod:`~monai_unet.predict.formats` (volumes, 2D images, stacks) and :mod:`~monai_unet.predict.large_image` (the
larger-than-RAM path, with its blocks and pipeline in :mod:`~monai_unet.predict.large_blocks`) use both;
:mod:`~monai_unet.predict.distributed` runs blocks and inputs on a Dask cluster; :mod:`~monai_unet.predict.batch`
(the loop, results, sharding, the summary, signals) uses all of them.
"""

from __future__ import annotations

from monai_unet.predict.batch import Result, predict, predict_one, resolve_shard, shard_items
from monai_unet.predict.inputs import (
    DEFAULT_LARGE_THRESHOLD,
    InputItem,
    PredictOptions,
    discover_inputs,
    output_paths,
)
from monai_unet.predict.runner import BundleRunner, InputError

__all__ = [
    "DEFAULT_LARGE_THRESHOLD",
    "BundleRunner",
    "InputError",
    "InputItem",
    "PredictOptions",
    "Result",
    "discover_inputs",
    "output_paths",
    "predict",
    "predict_one",
    "resolve_shard",
    "shard_items",
]
