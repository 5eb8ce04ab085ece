"""The larger-than-RAM path of ``monai-unet predict``: a 2D TIFF read, preprocessed, segmented and written tile by tile.

The TIFF is opened lazily (:func:`monai_unet.io.large_image.open_tiff_lazily`: only the tiles or strips a read
touches are decoded). The bundle's intensity preprocessing is re-expressed per tile: transforms that need
whole-image statistics (``ScaleIntensityd``: min and max) get them from one streaming pass over the image and
become MONAI's own ``ScaleIntensityRange`` with those values, after which every supported transform is a pointwise
function of the pixel, so a tile's input is exactly what the whole-image preprocessing would give for those
pixels, and the tiled result equals in-memory inference of the bundle.

Axis convention: MONAI's ``PILReader`` (the 2D bundles' reader) returns ``(W, H)`` arrays, the transpose of the
file's ``(rows, columns)``; :class:`LazyImage` and :class:`TileSink` present that transposed view to the
inferer and write the transposed result back, so the network sees the same orientation in both paths.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monai_unet.predict.inputs import InputItem, PredictOptions
from monai_unet.predict.runner import BundleRunner, InputError

__all__ = [
    "LazyImage",
    "TileSink",
    "limit_heap_fragmentation",
    "pointwise_preprocessing",
    "predict_large_tiff",
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
    """``ScaleIntensity(minv, maxv)`` of the whole image, for one tile: MONAI's ``ScaleIntensityRange`` from the
    image's streamed ``[mn, mx]`` to ``[minv, maxv]`` (the same arithmetic as ``rescale_array``)."""
    from monai.transforms import ScaleIntensityRange

    if mn == mx:  # rescale_array of a constant image
        return lambda x: x * minv
    lo, hi = (float(v) for v in torch.tensor([mn, mx], dtype=torch.float32))
    return ScaleIntensityRange(a_min=lo, a_max=hi, b_min=minv, b_max=maxv, clip=False)


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
            fns.append(s)  # pointwise already
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


def _bounded_inferer(runner: BundleRunner, memory_mb: int, progress: bool) -> Any:
    """A copy of the bundle's inferer with ``progress`` and, for ``memory_mb > 0``, tiles no larger than the
    largest valid tile whose activations fit ``memory_mb`` (the result is the same for any tile size)."""
    from monai_unet.inferers.tile_choice import choose_tile_size
    from monai_unet.inferers.tiling import size_rules_of

    inferer = copy.copy(runner.inferer)
    inferer.progress = progress
    if memory_mb > 0 and hasattr(inferer, "tile_size"):
        rules = size_rules_of(runner.network, getattr(inferer, "halo", None))
        if rules.known:
            cap = choose_tile_size(rules, runner.spatial_dims, memory_mb * 2**20, inferer.sw_batch_size)
            tile = inferer.tile_size
            if tile is None:
                inferer.tile_size = cap
            else:
                tile = (tile,) * runner.spatial_dims if isinstance(tile, int) else tuple(tile)
                inferer.tile_size = tuple(min(t, c) for t, c in zip(tile, cap))
    return inferer


def predict_large_tiff(runner: BundleRunner, item: InputItem, out: Path, options: PredictOptions) -> list[Path]:
    """Segment a 2D TIFF larger than memory into ``out``: lazy tiles in, tiles out (zarr), streamed to OME-TIFF.

    Preprocessing is re-expressed per tile (:func:`pointwise_preprocessing`); the postprocessing must be
    pointwise. Tiles are capped so that their activations fit ``options.large_memory_mb`` (default 192 MiB),
    which bounds peak memory whatever the image size. Probabilities are not written on this path.
    """
    import zarr

    from monai_unet.io.atomic import atomic_output, scratch_path
    from monai_unet.io.large_image import open_tiff_lazily
    from monai_unet.io.writers import write_ome_tiff_from_array

    if len(runner.networks) > 1 or getattr(runner.inferer, "tta", False):
        raise InputError(
            "the larger-than-RAM path runs one network without flips; segment this image with one checkpoint and "
            "no --tta, or in memory (raise --large-threshold)."
        )
    if runner.spatial_dims != 2:
        raise InputError(f"a 2D TIFF cannot be segmented by the {runner.spatial_dims}D bundle {runner.bundle.name}.")
    try:
        arr = open_tiff_lazily(item.path)
    except Exception as e:
        raise InputError(f"cannot read the TIFF: {e}") from e
    channels = 1 if arr.ndim == 2 else int(arr.shape[-1])
    if arr.ndim != 2 or channels != runner.in_channels:
        raise InputError(
            f"image of shape {tuple(arr.shape)} has {channels} channel(s); the large-image path takes "
            f"single-channel 2D images and the bundle takes {runner.in_channels}."
        )
    if min(arr.shape) < 1:
        raise InputError(f"image is empty: shape {tuple(arr.shape)}.")
    fn = pointwise_preprocessing(runner.pre_transforms, arr)
    runner.check_pointwise_postprocessing()
    if float(getattr(runner.inferer, "overlap", 0.0)) > 0:
        raise ValueError("the large-image path needs the bundle's inferer with overlap=0 (disjoint output tiles).")
    dtype = runner.output_dtype or np.uint8
    chunks = (min(1024, arr.shape[0]), min(1024, arr.shape[1]))
    inferer = _bounded_inferer(runner, options.large_memory_mb, options.progress)
    limit_heap_fragmentation()

    def run_into(store: Path) -> Any:
        target = zarr.open_array(str(store), mode="w", shape=tuple(arr.shape), chunks=chunks, dtype=dtype)
        sink = TileSink(target, runner.out_channels, runner.run_tile_postprocessing)
        with torch.no_grad():
            inferer(LazyImage(arr, fn), runner.network, out=sink)
        return target

    if options.large_format == "zarr":
        with atomic_output(out) as tmp:
            run_into(tmp)
        return [out]
    with scratch_path(out.with_name(out.name.replace(".ome.tif", ".zarr"))) as tmp:
        target = run_into(tmp)
        write_ome_tiff_from_array(target, out)
    return [out]
