"""Data: datalists for folders, MSD ``dataset.json`` and DICOM series; synthetic datasets (the embedded default).

Knows nothing of networks. Bundle configs call these as ``"$monai_unet.data.<name>(...)"`` after
``"imports": ["$import monai_unet", "$import monai_unet.data"]`` (MONAI binds ``import a.b`` to the name
``a.b``, so the first line is what makes ``monai_unet`` a name; the second loads the subpackage).
"""

from __future__ import annotations

from monai_unet.data.datalists import (
    membrane_datalist,
    split_datalist,
    split_tiff_stack,
    tiff_stack_datalist,
    volume_datalist,
)
from monai_unet.data.labels import isbi_label_from_membrane, isbi_membrane_label
from monai_unet.data.prepare import datalist, make_datalists, prepare_dataset
from monai_unet.data.readers import DICOM_READER, MEMBRANE_READER, VOLUME_READER, load_image_kwargs
from monai_unet.data.synthetic import em_section, make_em_dataset, make_volume_dataset, volume_sample

__all__ = [
    "DICOM_READER",
    "MEMBRANE_READER",
    "VOLUME_READER",
    "datalist",
    "em_section",
    "isbi_label_from_membrane",
    "isbi_membrane_label",
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
