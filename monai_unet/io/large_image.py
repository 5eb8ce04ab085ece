"""Images larger than RAM: lazy TIFF reading, per-tile-safe intensity preprocessing, and tile-wise output sinks.

A TIFF is opened as a zarr array over tifffile's store (only the tiles or strips a read touches are decoded).
The bundle's intensity preprocessing is re-expressed per tile: transforms that need whole-image statistics
(``ScaleIntensityd``: min and max) get them from one streaming pass over the image, after which every
supported transform is a pointwise function of the pixel, so a tile's input is exactly what the whole-image
preprocessing would give for those pixels. The same arithmetic as MONAI's transforms is used (float32, same
order of operations) so the tiled result equals in-memory inference of the bundle.

Axis convention: MONAI's ``PILReader`` (the 2D bundles' reader) returns ``(W, H)`` arrays, the transpose of the
file's ``(rows, columns)``; :class:`LazyImage` and :class:`TileSink` present that transposed view to the
inferer and write the transposed result back, so the network sees the same orientation in both paths.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "LazyImage",
    "TileSink",
    "limit_heap_fragmentation",
    "open_tiff_lazily",
    "pointwise_preprocessing",
    "streaming_min_max",
]


def limit_heap_fragmentation(threshold: int = 1 << 20) -> bool:
    """Serve allocations of ``threshold`` bytes or more by ``mmap`` (glibc ``mallopt(M_MMAP_THRESHOLD)``).

    glibc raises its mmap threshold each time a large block is freed, after which the per-tile activation
    tensors come from the heap and fragment it: over thousands of tiles the peak RSS creeps up with the image.
    A fixed threshold returns every large block to the system when freed, so the peak stays that of one tile
    (measured: 1412 -> 1241 MiB on a 4096^2 TIFF). Returns whether it was applied (glibc only).
    """
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-3, int(threshold)))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def open_tiff_lazily(path: str | os.PathLike, page: int = 0) -> Any:
    """A read-only zarr array over one page (``(rows, columns)`` or ``(rows, columns, samples)``) of a TIFF."""
    import tifffile

    try:
        import zarr
    except ImportError as e:  # pragma: no cover - zarr is a dependency of the large-image extra
        raise ImportError('reading TIFFs larger than memory needs zarr: pip install "monai-unet[large]"') from e
    store = tifffile.imread(os.fspath(path), aszarr=True, key=page)
    arr = zarr.open(store, mode="r")
    if not hasattr(arr, "shape"):  # a pyramid opens as a group: take the full-resolution level
        arr = arr["0"]
    return arr


def streaming_min_max(array: Any, rows_per_block: int | None = None) -> tuple[float, float]:
    """Min and max of a lazily read ``(rows, columns)`` array, one band of rows at a time.

    Raises:
        ValueError: the array holds NaN or infinite values (the message counts them).
    """
    rows = int(array.shape[0])
    if rows_per_block is None:
        chunk = int(getattr(array, "chunks", (256,))[0] or 256)
        rows_per_block = max(chunk, (2**24 // max(1, int(np.prod(array.shape[1:])))) // chunk * chunk)
    lo, hi, bad = np.inf, -np.inf, 0
    for r in range(0, rows, rows_per_block):
        band = np.asarray(array[r : min(rows, r + rows_per_block)])
        if band.dtype.kind == "f":
            finite = np.isfinite(band)
            if not finite.all():
                bad += int(band.size - finite.sum())
                continue
        if band.size:
            lo, hi = min(lo, float(band.min())), max(hi, float(band.max()))
    if bad:
        raise ValueError(f"the image holds {bad} NaN/infinite values; fix or mask them before segmenting.")
    return lo, hi


def _scale_fn(mn: float, mx: float, minv: float, maxv: float) -> Callable[[torch.Tensor], torch.Tensor]:
    # monai.transforms.utils.rescale_array with the whole image's min and max
    lo, hi = torch.tensor(mn, dtype=torch.float32), torch.tensor(mx, dtype=torch.float32)

    def fn(x: torch.Tensor) -> torch.Tensor:
        if lo == hi:
            return x * minv
        x = (x - lo) / (hi - lo)
        return x * (maxv - minv) + minv

    return fn


def _range_fn(a_min: float, a_max: float, b_min: float | None, b_max: float | None, clip: bool) -> Callable:
    # monai.transforms.ScaleIntensityRange
    def fn(x: torch.Tensor) -> torch.Tensor:
        if a_max - a_min == 0.0:
            return x - a_min if b_min is None else x - a_min + b_min
        x = (x - a_min) / (a_max - a_min)
        if b_min is not None and b_max is not None:
            x = x * (b_max - b_min) + b_min
        if clip:
            x = torch.clip(x, b_min, b_max)
        return x

    return fn


def pointwise_preprocessing(transforms: Sequence[Any], array: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """The bundle's preprocessing after loading, as one pointwise function of the pixel values.

    Supported: ``ScaleIntensityd`` (min/max from one streaming pass over ``array``), ``ScaleIntensityRanged``,
    ``EnsureTyped``/``CastToTyped`` (float dtypes). Whole-image statistics are propagated through earlier
    transforms, which are all monotone.

    Raises:
        ValueError: a transform that is not per-tile safe (resampling, cropping, percentiles...): the large-image
            path cannot reproduce it; segment the image in memory (raise ``--large-threshold``) instead.
    """
    from monai.transforms import CastToTyped, EnsureTyped, ScaleIntensityd, ScaleIntensityRanged

    stats: tuple[float, float] | None = None
    fns: list[Callable[[torch.Tensor], torch.Tensor]] = []

    def apply_all(x: torch.Tensor) -> torch.Tensor:
        for f in fns:
            x = f(x)
        return x

    for t in transforms:
        if isinstance(t, ScaleIntensityd):
            s = t.scaler
            if s.factor is not None or s.channel_wise or s.minv is None or s.maxv is None:
                raise ValueError("ScaleIntensityd with factor/channel_wise is not supported on the large-image path.")
            if stats is None:
                stats = streaming_min_max(array)
            lo, hi = (float(v) for v in apply_all(torch.tensor(stats, dtype=torch.float32)))
            fns.append(_scale_fn(lo, hi, float(s.minv), float(s.maxv)))
        elif isinstance(t, ScaleIntensityRanged):
            s = t.scaler
            fns.append(_range_fn(s.a_min, s.a_max, s.b_min, s.b_max, s.clip))
        elif isinstance(t, (EnsureTyped, CastToTyped)):
            continue  # tiles are float32 already
        else:
            raise ValueError(
                f"{type(t).__name__} in the bundle's preprocessing is not per-tile safe, so the large-image path "
                "cannot reproduce it; segment the image in memory instead (raise --large-threshold)."
            )
    return apply_all


class LazyImage:
    """The ``(1, W, H)`` channel-first, transposed, preprocessed view of a lazily read ``(rows, columns)`` array.

    ``view[box]`` with ``box`` ``(channel slice, W slice, H slice)`` reads only that block and returns float32.
    """

    def __init__(self, array: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        if len(array.shape) != 2:
            raise ValueError(f"the large-image path reads single-channel 2D images, got shape {tuple(array.shape)}.")
        self.array = array
        self.fn = fn
        self.shape = (1, int(array.shape[1]), int(array.shape[0]))
        self.dtype = np.dtype(np.float32)

    def __getitem__(self, box: tuple) -> np.ndarray:
        _, sw, sh = box
        block = torch.from_numpy(np.asarray(self.array[sh, sw]).T.astype(np.float32))
        return self.fn(block).to(torch.float32).numpy()[None]


class TileSink:
    """A ``(C_out, W, H)`` array for :class:`~monai_unet.inferers.OverlapTileInferer`'s ``out=``.

    Each written tile of logits goes through ``postprocess`` (``(C_out, w, h)`` tensor to ``(1, w, h)``), is
    transposed back and stored into ``target`` (``(rows, columns)``, e.g. an on-disk zarr array).
    """

    def __init__(self, target: Any, channels: int, postprocess: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.target = target
        self.postprocess = postprocess
        self.shape = (channels, int(target.shape[1]), int(target.shape[0]))
        self.dtype = np.dtype(np.float32)

    def __setitem__(self, idx: tuple, value: np.ndarray) -> None:
        _, sw, sh = idx
        pred = self.postprocess(torch.as_tensor(np.asarray(value)))
        pred = np.asarray(pred.detach().cpu() if isinstance(pred, torch.Tensor) else pred)
        self.target[sh, sw] = pred.reshape(pred.shape[-2:]).T.astype(self.target.dtype)

    def __getitem__(self, idx: tuple) -> np.ndarray:
        raise NotImplementedError("TileSink is write-only: use the inferer without extra overlap (overlap=0).")
