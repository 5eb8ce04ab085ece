"""Images larger than RAM, read lazily: a TIFF page as a zarr array whose reads decode only the tiles they touch.

Knows nothing of networks; the per-tile preprocessing and the output sinks of the larger-than-RAM prediction path
live in :mod:`monai_unet.predict.large_image`.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["open_tiff_lazily"]


def open_tiff_lazily(path: str | os.PathLike, page: int = 0) -> Any:
    """A read-only zarr array over one page (``(rows, columns)`` or ``(rows, columns, samples)``) of a TIFF."""
    import tifffile
    from monai.utils import optional_import

    zarr, has_zarr = optional_import("zarr")
    if not has_zarr:
        raise ImportError('reading TIFFs larger than memory needs zarr: pip install "monai-unet[large]".')
    store = tifffile.imread(os.fspath(path), aszarr=True, key=page)
    arr = zarr.open(store, mode="r")
    if not hasattr(arr, "shape"):  # a pyramid opens as a group: take the full-resolution level
        arr = arr["0"]
    return arr
