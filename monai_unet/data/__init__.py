"""Data: datalists for folders, MSD ``dataset.json`` and DICOM series; synthetic datasets (the embedded default).

Knows nothing of networks. Bundle configs call these as ``"$monai_unet.data.<name>(...)"`` after
``"$import monai_unet.data"``.
"""

from __future__ import annotations

from monai_unet.data.datalists import (
    membrane_datalist,
    split_datalist,
    split_tiff_stack,
    tiff_stack_datalist,
    volume_datalist,
)
from monai_unet.data.prepare import datalist, make_datalists, prepare_dataset
from monai_unet.data.readers import DICOM_READER, MEMBRANE_READER, VOLUME_READER, load_image_kwargs
from monai_unet.data.synthetic import em_section, make_em_dataset, make_volume_dataset, volume_sample

__all__ = [
    "DICOM_READER",
    "MEMBRANE_READER",
    "VOLUME_READER",
    "datalist",
    "em_section",
    "load_image_kwargs",
    "make_datalists",
    "make_em_dataset",
    "make_volume_dataset",
    "membrane_datalist",
    "prepare_dataset",
    "split_datalist",
    "split_tiff_stack",
    "tiff_stack_datalist",
    "volume_datalist",
    "volume_sample",
]
