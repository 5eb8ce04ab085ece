"""Images larger than RAM, read lazily: a plain or pyramidal (OME-)TIFF, or an OME-Zarr image, as a ``(rows,
columns)`` array whose reads decode only the tiles or chunks they touch, with its physical pixel size.

Knows nothing of networks; the per-tile preprocessing and the block pipeline of the larger-than-RAM prediction path
live in :mod:`monai_unet.predict.large_image`; the label output stores in :mod:`monai_unet.io.ome_zarr` and
:mod:`monai_unet.io.ome_tiff`.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any

__all__ = ["LargeImage", "PixelSize", "is_ome_zarr", "open_large_image", "open_tiff_lazily"]

# OME-XML unit symbols and the NGFF (UDUNITS-2) names of the same lengths
_OME_TO_NGFF = {
    "Å": "angstrom",
    "nm": "nanometer",
    "µm": "micrometer",
    "um": "micrometer",
    "mm": "millimeter",
    "cm": "centimeter",
    "m": "meter",
}
_NGFF_TO_OME = {v: k for k, v in _OME_TO_NGFF.items() if k != "um"}
_IMAGEJ_UNITS = {"micron": "micrometer", "um": "micrometer", "µm": "micrometer", "nm": "nanometer", "mm": "millimeter"}


@dataclasses.dataclass(frozen=True)
class PixelSize:
    """The physical size of one pixel along rows (``y``) and columns (``x``), in ``unit`` (an NGFF/UDUNITS-2 name
    such as ``"micrometer"``)."""

    y: float
    x: float
    unit: str = "micrometer"

    @property
    def ome_unit(self) -> str:
        """The unit as OME-XML writes it (``"µm"``)."""
        return _NGFF_TO_OME.get(self.unit, "µm")

    def scaled(self, factor: float) -> PixelSize:
        return PixelSize(self.y * factor, self.x * factor, self.unit)


@dataclasses.dataclass
class LargeImage:
    """A lazily read 2D image: ``array`` ``(rows, columns)`` or ``(rows, columns, samples)`` with numpy slicing,
    ``pixel_size`` when the file says it, and the ``path`` it came from."""

    array: Any
    path: Path
    pixel_size: PixelSize | None = None


def is_ome_zarr(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a zarr group folder (``.zattrs``/``.zgroup`` of zarr v2 or ``zarr.json`` of v3)."""
    p = Path(path)
    return p.is_dir() and any((p / n).is_file() for n in (".zgroup", ".zattrs", "zarr.json"))


def _need_zarr() -> Any:
    from monai.utils import optional_import

    zarr, has_zarr = optional_import("zarr")
    if not has_zarr:
        raise ImportError('reading images larger than memory needs zarr: pip install "monai-unet[large]".')
    return zarr


def open_tiff_lazily(path: str | os.PathLike, page: int = 0) -> Any:
    """A read-only zarr array over one page (``(rows, columns)`` or ``(rows, columns, samples)``) of a TIFF; for a
    pyramidal TIFF, its full-resolution level."""
    import tifffile

    zarr = _need_zarr()
    store = tifffile.imread(os.fspath(path), aszarr=True, key=page)
    arr = zarr.open(store, mode="r")
    if not hasattr(arr, "shape"):  # a pyramid opens as a group: take the full-resolution level
        arr = arr["0"]
    return arr


class _Plane:
    """A ``(rows, columns)`` view of an array with more axes, each other axis held at index 0 (length 1)."""

    def __init__(self, array: Any, yx: tuple[int, int]) -> None:
        self.array, self.yx = array, yx
        self.shape = (int(array.shape[yx[0]]), int(array.shape[yx[1]]))
        self.dtype = array.dtype
        chunks = getattr(array, "chunks", None)
        self.chunks = (chunks[yx[0]], chunks[yx[1]]) if chunks else (256, 256)
        self.ndim = 2

    def __getitem__(self, key: Any) -> Any:
        key = key if isinstance(key, tuple) else (key,)
        rows, cols = (*key, slice(None))[:2]
        full: list[Any] = [0] * len(self.array.shape)
        full[self.yx[0]], full[self.yx[1]] = rows, cols
        return self.array[tuple(full)]


def _plane(array: Any, axes: str, path: Path) -> Any:
    """The ``(rows, columns[, samples])`` view of ``array`` with ``axes`` (tifffile's or NGFF's letters, e.g.
    ``"CYX"``, ``"tczyx"``), or ``ValueError`` naming the file when another axis is longer than one."""
    axes = axes.upper()
    if "Y" not in axes or "X" not in axes:
        raise ValueError(f"{path}: the image has axes {axes!r}, not an image (no Y and X axes).")
    extra = {a: int(n) for a, n in zip(axes, array.shape) if a not in "YXS" and int(n) != 1}
    if extra:
        what = ", ".join(f"{a}={n}" for a, n in extra.items())
        raise ValueError(
            f"{path}: the image has {what} beside Y and X; the larger-than-RAM path segments single-channel 2D "
            "images: give one plane (one channel, one Z, one T)."
        )
    if axes.endswith("YXS"):
        if len(axes) == 3:
            return array
        raise ValueError(f"{path}: an RGB image with axes {axes!r}; give a single-channel 2D image.")
    y, x = axes.index("Y"), axes.index("X")
    if len(axes) == 2 and (y, x) == (0, 1):
        return array
    return _Plane(array, (y, x))


def _ome_pixel_size(xml: str) -> PixelSize | None:
    m = re.search(r"<(?:\w+:)?Pixels\b([^>]*)>", xml)
    if m is None:
        return None
    attrs = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
    if "PhysicalSizeX" not in attrs or "PhysicalSizeY" not in attrs:
        return None
    unit = attrs.get("PhysicalSizeXUnit", "µm")
    return PixelSize(float(attrs["PhysicalSizeY"]), float(attrs["PhysicalSizeX"]), _OME_TO_NGFF.get(unit, "micrometer"))


def _tiff_pixel_size(tf: Any) -> PixelSize | None:
    """OME-XML physical sizes, else ImageJ's unit and resolution, else a resolution in pixels per centimetre (a
    resolution per inch is taken only when it is not a screen default: 72 or 96 dpi)."""
    if tf.is_ome and tf.ome_metadata:
        size = _ome_pixel_size(tf.ome_metadata)
        if size is not None:
            return size
    page = tf.pages.first
    xres, yres, runit = page.tags.get("XResolution"), page.tags.get("YResolution"), page.tags.get("ResolutionUnit")
    if xres is None or yres is None:
        return None
    (xn, xd), (yn, yd) = xres.value, yres.value
    if not (xn and yn and xd and yd):
        return None
    per_x, per_y = xn / xd, yn / yd  # pixels per unit
    ij = tf.imagej_metadata or {}
    unit = str(ij.get("unit", "")).strip().lower()
    if unit in _IMAGEJ_UNITS:
        return PixelSize(1.0 / per_y, 1.0 / per_x, _IMAGEJ_UNITS[unit])
    code = int(runit.value) if runit is not None else 2
    if code == 3:
        return PixelSize(1e4 / per_y, 1e4 / per_x)
    if code == 2 and per_x not in (72.0, 96.0):
        return PixelSize(25400.0 / per_y, 25400.0 / per_x)
    return None


def _open_tiff(path: Path) -> LargeImage:
    import tifffile

    zarr = _need_zarr()
    with tifffile.TiffFile(os.fspath(path)) as tf:
        series = tf.series[0]
        axes = series.axes
        pixel = _tiff_pixel_size(tf)
    store = tifffile.imread(os.fspath(path), aszarr=True, series=0, level=0)
    arr = zarr.open(store, mode="r")
    if not hasattr(arr, "shape"):
        arr = arr["0"]
    return LargeImage(_plane(arr, axes, path), path, pixel)


def _ngff_attrs(group: Any) -> dict:
    attrs = dict(group.attrs)
    return dict(attrs.get("ome", attrs))  # NGFF 0.5 nests its metadata under "ome"


def _open_ome_zarr(path: Path) -> LargeImage:
    zarr = _need_zarr()
    group = zarr.open_group(os.fspath(path), mode="r")
    attrs = _ngff_attrs(group)
    if "multiscales" not in attrs:
        raise ValueError(
            f"{path}: a zarr group without NGFF 'multiscales' metadata; give an OME-Zarr image (its folder)."
        )
    ms = attrs["multiscales"][0]
    axes_meta = ms.get("axes") or [{"name": a} for a in "tczyx"[-len(group[ms["datasets"][0]["path"]].shape) :]]
    names = [a["name"] if isinstance(a, dict) else str(a) for a in axes_meta]
    first = ms["datasets"][0]
    array = group[first["path"]]
    if len(names) != len(array.shape):
        raise ValueError(f"{path}: NGFF axes {names} do not match the array's shape {tuple(array.shape)}.")
    pixel = None
    scales = [t["scale"] for t in first.get("coordinateTransformations", []) if t.get("type") == "scale"]
    lower = [n.lower() for n in names]
    if scales and "y" in lower and "x" in lower:
        y, x = lower.index("y"), lower.index("x")
        units = {a.get("name", "").lower(): a.get("unit") for a in axes_meta if isinstance(a, dict)}
        pixel = PixelSize(float(scales[0][y]), float(scales[0][x]), units.get("x") or "micrometer")
    return LargeImage(_plane(array, "".join(lower), path), path, pixel)


def open_large_image(path: str | os.PathLike) -> LargeImage:
    """Open a TIFF (plain, tiled, pyramidal OME-TIFF: the full-resolution level of its first series) or an OME-Zarr
    image folder (NGFF 0.4 or 0.5: its first, full-resolution dataset) lazily.

    Raises:
        ValueError: the file cannot be read as such, or holds more than one plane (names the file).
        ImportError: zarr is missing (names the extra to install).
    """
    path = Path(path)
    try:
        if is_ome_zarr(path):
            return _open_ome_zarr(path)
        return _open_tiff(path)
    except (ImportError, ValueError):
        raise
    except Exception as e:
        kind = "OME-Zarr image" if path.is_dir() else "TIFF"
        raise ValueError(f"{path}: cannot read the {kind}: {' '.join(str(e).split()) or type(e).__name__}") from e
