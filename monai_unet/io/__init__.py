"""I/O beyond MONAI's readers and writers: the suffix table, DICOM series, atomic writers, DICOM-SEG, images larger
than memory (lazy TIFF/OME-TIFF/OME-Zarr in, a resumable OME-Zarr label store, pyramidal OME-TIFF out).

Knows nothing of networks. Optional dependencies (zarr, highdicom) are imported inside the functions
that need them.
"""

from __future__ import annotations

from monai_unet.io.atomic import atomic_output, clean_stale_temporaries, is_temporary, scratch_path
from monai_unet.io.dicom import DicomSeries, find_dicom_series, looks_like_dicom
from monai_unet.io.large_image import LargeImage, PixelSize, open_large_image
from monai_unet.io.ome_tiff import write_pyramidal_ome_tiff
from monai_unet.io.ome_zarr import LabelStore
from monai_unet.io.writers import write_json, write_nifti, write_ome_tiff_from_array, write_png, write_tiff

__all__ = [
    "DicomSeries",
    "LabelStore",
    "LargeImage",
    "PixelSize",
    "atomic_output",
    "clean_stale_temporaries",
    "find_dicom_series",
    "is_temporary",
    "looks_like_dicom",
    "open_large_image",
    "scratch_path",
    "write_json",
    "write_nifti",
    "write_ome_tiff_from_array",
    "write_png",
    "write_pyramidal_ome_tiff",
    "write_tiff",
]
