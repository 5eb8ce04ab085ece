"""The one set of atomic writers (predictions, generated datasets): NIfTI, PNG, TIFF (multi-page), JSON, and
tile-streamed OME-TIFF from zarr.

Every writer goes through :func:`~monai_unet.io.atomic.atomic_output`: a kill at any moment leaves the complete
file or none. Arrays are given in the file's own axis order (rows, columns for 2D images; X, Y, Z for NIfTI).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from monai_unet.io.atomic import atomic_output

__all__ = ["write_json", "write_nifti", "write_ome_tiff_from_array", "write_png", "write_tiff"]


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON."""
    import json

    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")
    return Path(path)


def write_nifti(array: np.ndarray, affine: np.ndarray, path: str | os.PathLike) -> Path:
    """Write ``array`` ``(X, Y, Z)`` or ``(X, Y, Z, C)`` with the 4x4 RAS ``affine`` as NIfTI (qform = sform).

    A channel axis (class probabilities) goes to the fifth NIfTI dimension (intent "vector") so that
    the first three axes keep the geometry.
    """
    import nibabel as nib

    array = np.asarray(array)
    if array.ndim == 4:
        array = array[:, :, :, None, :]
    img = nib.Nifti1Image(array, np.asarray(affine, dtype=np.float64))
    img.set_qform(np.asarray(affine, dtype=np.float64), code=1)
    img.set_sform(np.asarray(affine, dtype=np.float64), code=1)
    if array.ndim == 5:
        img.header.set_intent("vector")
    img.header.set_xyzt_units("mm", "sec")
    with atomic_output(path) as tmp:
        nib.save(img, tmp)
    return Path(path)


def write_png(array: np.ndarray, path: str | os.PathLike) -> Path:
    """Write a 2D ``(rows, columns)`` uint8/uint16 array as PNG."""
    from PIL import Image

    array = np.ascontiguousarray(array)
    if array.dtype not in (np.uint8, np.uint16):
        array = array.astype(np.uint16 if array.max(initial=0) > 255 else np.uint8)
    with atomic_output(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")
    return Path(path)


def write_tiff(array: np.ndarray, path: str | os.PathLike, compression: str | None = "zlib") -> Path:
    """Write ``(rows, columns)``, or ``(pages, rows, columns)`` as a multi-page TIFF (one page per image)."""
    import tifffile

    array = np.ascontiguousarray(array)
    with atomic_output(path) as tmp:
        tifffile.imwrite(tmp, array, compression=compression, photometric="minisblack")
    return Path(path)


def _tiles(array: Any, tile: tuple[int, int]) -> Iterator[np.ndarray]:
    """Tiles of a lazily read ``(rows, columns)`` array in row-major order, padded to full tiles."""
    rows, cols = (int(s) for s in array.shape)
    for r in range(0, rows, tile[0]):
        for c in range(0, cols, tile[1]):
            block = np.asarray(array[r : min(rows, r + tile[0]), c : min(cols, c + tile[1])])
            if block.shape != tile:
                padded = np.zeros(tile, dtype=block.dtype)
                padded[: block.shape[0], : block.shape[1]] = block
                block = padded
            yield block


def write_ome_tiff_from_array(
    array: Any, path: str | os.PathLike, tile: tuple[int, int] = (512, 512), compression: str | None = "zlib"
) -> Path:
    """Stream a lazily read 2D ``(rows, columns)`` array (zarr, memmap) into a tiled OME-TIFF, tile by tile.

    Only one tile is in memory at a time, so the output may be larger than RAM.
    """
    import tifffile

    shape = tuple(int(s) for s in array.shape)
    if len(shape) != 2:
        raise ValueError(f"write_ome_tiff_from_array needs a 2D (rows, columns) array, got shape {shape}.")
    with atomic_output(path) as tmp:
        tifffile.imwrite(
            tmp,
            _tiles(array, tile),
            shape=shape,
            dtype=np.dtype(array.dtype),
            tile=tile,
            compression=compression,
            photometric="minisblack",
            ome=True,
            metadata={"axes": "YX"},
        )
    return Path(path)
