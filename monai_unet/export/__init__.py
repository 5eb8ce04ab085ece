"""Export a bundle's trained U-Net to other ecosystems: a bioimage.io model package (Fiji/deepImageJ, ilastik,
QuPath, napari) with :func:`export_bioimageio` (``monai-unet export``). Needs the ``bioimageio`` extra."""

from __future__ import annotations

from monai_unet.export.bioimageio import export_bioimageio, write_bioimageio_package
from monai_unet.export.processing import UnsupportedTransformError

__all__ = ["UnsupportedTransformError", "export_bioimageio", "write_bioimageio_package"]
