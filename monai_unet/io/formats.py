"""The one table of file suffixes: which files are volumes, 2D images, TIFFs; and how a name's suffix is found.

Everything that decides by a file's name (datalists, ``monai-unet predict``, the MONAI Label app) asks here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "IMAGE_SUFFIXES_2D",
    "STUDY_SUFFIXES_2D",
    "TIFF_SUFFIXES",
    "VOLUME_SUFFIXES",
    "ZARR_SUFFIXES",
    "read_image_information",
    "strip_suffix",
    "suffix_of",
]

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
"""3D volume files MONAI's ITK/NiBabel readers load with their geometry."""
TIFF_SUFFIXES = (".tif", ".tiff")
IMAGE_SUFFIXES_2D = (".png", *TIFF_SUFFIXES)
"""2D images the 2D bundle reads and ``monai-unet predict`` segments."""
ZARR_SUFFIXES = (".ome.zarr", ".zarr")
"""Folders ``monai-unet predict`` reads as OME-Zarr images (on its larger-than-RAM path)."""
STUDY_SUFFIXES_2D = (*IMAGE_SUFFIXES_2D, ".jpg", ".jpeg", ".bmp")
"""2D images MONAI Label's local datastore serves (PIL reads them)."""


def suffix_of(name: str | os.PathLike, suffixes: Sequence[str]) -> str | None:
    """The first of ``suffixes`` that the file name ends with (case-insensitive), else ``None``."""
    lower = Path(name).name.lower()
    return next((s for s in suffixes if lower.endswith(s)), None)


def strip_suffix(name: str | os.PathLike, suffixes: Sequence[str]) -> str:
    """The file name without the first matching suffix of ``suffixes`` (``a.nii.gz`` -> ``a``), else its stem."""
    base = Path(name).name
    s = suffix_of(base, suffixes)
    return base[: -len(s)] if s else Path(base).stem


def read_image_information(path: str | os.PathLike) -> tuple[tuple[int, ...], int]:
    """``(size, components)`` of an image file from its header only (SimpleITK's ``ReadImageInformation``).

    ``size`` is in the file's own axis order (x, y[, z[, t]]), ``components`` the values per pixel (channels).
    Works for every format ITK reads (NIfTI, NRRD, MHA, PNG, TIFF...).

    Raises:
        ValueError: the header cannot be read (names the file and ITK's reason).
    """
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(os.fspath(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        why = next((ln.split("ERROR:", 1)[1].strip() for ln in lines if "ERROR:" in ln), lines[-1] if lines else "")
        raise ValueError(f"{path}: cannot read the image header: {why[:200]}; is it a valid image file?") from e
    return tuple(int(s) for s in reader.GetSize()), int(reader.GetNumberOfComponents())
