"""A pyramidal OME-TIFF of a label map from its OME-Zarr label store, without decoding a pixel.

The store's chunks are zlib-compressed, which is TIFF's Deflate (compression 8): tifffile writes their bytes as the
TIFF's tiles (level 0 in the main IFD, the downsampled levels as its SubIFDs, the layout QuPath, Fiji/Bio-Formats
and napari's tifffile reader open as a pyramid), with the physical pixel size in the OME-XML and the resolution tags.
"""

from __future__ import annotations

import os
from pathlib import Path

from monai_unet.io.atomic import atomic_output
from monai_unet.io.large_image import PixelSize
from monai_unet.io.ome_zarr import LabelStore, pyramid_shapes

__all__ = ["write_pyramidal_ome_tiff"]


def write_pyramidal_ome_tiff(store: LabelStore, path: str | os.PathLike, pixel_size: PixelSize | None = None) -> Path:
    """Write the finished ``store`` (its pyramid built) as a tiled, pyramidal OME-TIFF at ``path``, atomically."""
    import tifffile

    shapes = pyramid_shapes(store.shape, store.chunks)
    metadata: dict = {"axes": "YX", "Name": "segmentation"}
    resolution = None
    if pixel_size is not None:
        metadata.update(
            PhysicalSizeY=pixel_size.y,
            PhysicalSizeX=pixel_size.x,
            PhysicalSizeYUnit=pixel_size.ome_unit,
            PhysicalSizeXUnit=pixel_size.ome_unit,
        )
        if pixel_size.unit == "micrometer":
            resolution = (1e4 / pixel_size.x, 1e4 / pixel_size.y)  # pixels per centimetre
    common = {"dtype": store.dtype, "tile": store.chunks, "compression": "zlib", "photometric": "minisblack"}
    with atomic_output(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=True, ome=True) as tif:
        for k, shape in enumerate(shapes):
            extra: dict = {}
            if resolution is not None:
                extra = {"resolution": (resolution[0] / 2**k, resolution[1] / 2**k), "resolutionunit": "CENTIMETER"}
            if k == 0:
                extra.update(subifds=len(shapes) - 1, metadata=metadata)
            else:
                extra.update(subfiletype=1, metadata=None)
            tif.write(store.encoded_chunks(k), shape=shape, **common, **extra)
    return Path(path)
