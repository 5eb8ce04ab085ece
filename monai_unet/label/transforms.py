"""Transforms the MONAI Label tasks add to the bundles' own: 2D images from any reader, labels in either convention.

3D Slicer sends 2D images and corrected labels as single-slice volumes (NIfTI ``(W, H, 1)``), while the 2D bundle
reads PNG/TIFF pages ``(W, H)``; and a label that comes back from Slicer holds segment indices (1 = membrane), while
ISBI 2012 label files hold 0 = membrane, 255 = cell. These transforms let the 2D bundle read both.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import torch
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.transforms import LoadImage, MapTransform

from monai_unet.data.labels import isbi_membrane_label
from monai_unet.io.formats import STUDY_SUFFIXES_2D, VOLUME_SUFFIXES, read_image_information, suffix_of

__all__ = ["TWO_D_SUFFIXES", "LoadImage2Dd", "image_channels", "image_spatial_dims", "membrane_classes"]

TWO_D_SUFFIXES = STUDY_SUFFIXES_2D


def image_spatial_dims(path: str | Path) -> int:
    """Number of spatial dimensions of an image file with more than one pixel along them (2 or 3), from its header.

    PNG/JPEG/TIFF/BMP files are 2D; NIfTI and NRRD volumes with a single slice (``(W, H, 1)``, as 3D Slicer saves
    2D images and labels) count as 2D too; a folder (a DICOM series) is 3D.

    Raises:
        ValueError: the file type is not one MONAI Label's local datastore serves.
    """
    name = str(path).lower()
    if Path(path).is_dir():  # a DICOM series
        return 3
    if name.endswith(TWO_D_SUFFIXES):
        return 2
    if not suffix_of(name, VOLUME_SUFFIXES):
        raise ValueError(f"{path}: unknown image type; give PNG/TIFF/JPEG (2D) or NIfTI/NRRD/MHA (3D) files.")
    shape, _ = read_image_information(path)
    return 2 if len(shape) < 3 or shape[2] == 1 else 3


def image_channels(path: str | Path) -> int:
    """Number of channels of a volume file from its header: the 4th dimension of a 4D NIfTI (MSD/BraTS style,
    ``(X, Y, Z, C)``), the components of a vector image, 1 for a plain volume or a folder (one DICOM series).

    Raises:
        ValueError: the header cannot be read.
    """
    if Path(path).is_dir():
        return 1
    shape, components = read_image_information(path)
    return (shape[3] if len(shape) > 3 else 1) * components


def membrane_classes(label: NdarrayOrTensor) -> NdarrayOrTensor:
    """Membrane class map (1 = membrane, 0 = cell) from a label in either convention, same type and shape.

    A label whose values are all 0 or 1 is already a class map (MONAI Label's and 3D Slicer's: 1 is the
    ``membrane`` segment); one with larger values is an ISBI 2012 label file (0 = membrane, 255 = cell).
    """
    top = float(label.max()) if (label.numel() if isinstance(label, torch.Tensor) else label.size) else 0.0
    return isbi_membrane_label(label) if top > 1 else (label > 0.5) * 1.0


class LoadImage2Dd(MapTransform):
    """Load 2D images with the reader their file type needs, channel first, as ``(C, W, H)``.

    PNG/TIFF pages load as ``(C, W, H)`` (MONAI's x-first order); single-slice volumes ``(C, W, H, 1)`` lose their
    last axis; anything with more than one slice is an error that names the file.

    Args:
        keys: keys of the file paths to load.
        allow_missing_keys: don't raise when a key is missing.
    """

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self._loader = LoadImage(image_only=True, ensure_channel_first=True)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            path = d[key]
            img = self._loader(path)
            if img.ndim == 4 and img.shape[-1] == 1:
                img = img[..., 0]
            if img.ndim != 3:
                raise ValueError(
                    f"{path}: a 2D model needs a 2D image, got spatial shape {tuple(img.shape[1:])}; give a PNG/TIFF "
                    f"page or a single-slice volume."
                )
            d[key] = img
        return d
