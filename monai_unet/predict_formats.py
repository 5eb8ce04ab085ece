"""Per-format work of ``monai-unet predict``: read one input, run the bundle, write its outputs atomically.

- 3D (NIfTI, NRRD, MHA/MHD, DICOM series): the bundle's loading step (MONAI's reader; ``ITKReader`` with the
  series identifier for a DICOM folder holding several series), then the bundle's pipeline, whose ``Invertd``
  returns the label map to the input's grid; written as NIfTI with the input's affine (RAS), optionally the
  class probabilities (NIfTI, classes on the fifth axis) and a DICOM-SEG referencing the source series.
- 2D PNG: the bundle's loading step; output PNG.
- 2D TIFF (also multi-page stacks and RGB): read with tifffile into the layout MONAI's ``PILReader`` gives
  (``(C, W, H)``, float32), one page at a time; output a TIFF with one page per input page.
- 2D TIFF larger than ``large_threshold`` pixels: read lazily tile by tile, preprocessed per tile, postprocessed
  per tile and written tile by tile to an on-disk zarr, streamed into an OME-TIFF (or kept as zarr).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monai_unet.predict_runner import InputError

__all__ = ["is_large_tiff", "predict_2d", "predict_large_tiff", "predict_volume", "tiff_pages"]


def _check_nifti_dims(path: Path, spatial_dims: int) -> None:
    import nibabel as nib

    try:
        shape = nib.load(str(path)).shape
    except Exception as e:
        raise InputError(f"cannot read the NIfTI header: {e}") from e
    extra = [s for s in shape[spatial_dims:] if s != 1]
    if len(shape) > spatial_dims and extra:
        fix = (
            "split the time/channel axis into separate volumes first"
            if spatial_dims == 3
            else "this bundle segments 2D images (PNG/TIFF): use a 3D bundle for volumes"
        )
        raise InputError(f"image is {len(shape)}D (shape {tuple(shape)}); {fix}.")


def predict_volume(runner: Any, item: Any, output_dir: Path, options: dict[str, Any]) -> list[Path]:
    """Segment a volume file or a DICOM series and write ``*_seg.nii.gz`` (and the optional outputs)."""
    from monai.data import ITKReader

    from monai_unet.io.writers import write_nifti
    from monai_unet.predict import output_paths

    outs = output_paths(item, output_dir, options)
    if runner.spatial_dims != 3:
        what = "a DICOM series" if item.kind == "dicom" else "a volume file"
        raise InputError(f"{what}; the bundle {runner.bundle.name} segments 2D images (PNG/TIFF): use a 3D bundle.")
    reader = None
    if item.kind == "dicom":
        reader = ITKReader(series_name=item.series or "")
    elif item.path.name.lower().endswith((".nii", ".nii.gz")):
        _check_nifti_dims(item.path, runner.spatial_dims)
    try:
        img = runner.loader({runner.image_key: str(item.path)}, reader)[runner.image_key]
    except Exception as e:
        raise InputError(f"cannot read the image: {e}") from e
    runner.check(img, item.key)
    affine = np.asarray(img.affine, dtype=np.float64)
    res = runner.run(img, probabilities=bool(options.get("probabilities")))
    pred = res["pred"]
    if tuple(pred.shape[1:]) != tuple(img.shape[1:]):
        raise RuntimeError(
            f"the bundle's postprocessing returned shape {tuple(pred.shape[1:])}, not the input's "
            f"{tuple(img.shape[1:])}: it needs an Invertd step to return to the input grid."
        )
    label = np.asarray(pred[0].detach().cpu()).astype(runner.output_dtype or np.uint8)
    written = [write_nifti(label, affine, outs[0])]
    k = 1
    if options.get("probabilities"):
        prob = np.asarray(res["prob"].detach().cpu(), dtype=np.float32)
        written.append(write_nifti(np.moveaxis(prob, 0, -1), affine, outs[k]))
        k += 1
    if options.get("dicom_seg") and item.kind == "dicom":
        from monai_unet.io.dicom import find_dicom_series
        from monai_unet.io.dicom_seg import write_dicom_seg

        series = next(s for s in find_dicom_series(item.path) if s.uid == item.series)
        written.append(write_dicom_seg(label, series.files, outs[k], n_classes=runner.out_channels))
    return written


def tiff_pages(path: Path) -> tuple[np.ndarray, int]:
    """All pages of a small TIFF as ``(P, C, rows, columns)`` and the channel count (samples per pixel)."""
    import tifffile

    try:
        with tifffile.TiffFile(str(path)) as tf:
            series = tf.series[0]
            axes, data = series.axes, series.asarray()
    except Exception as e:
        raise InputError(f"cannot read the TIFF: {e}") from e
    if "Y" not in axes or "X" not in axes:
        raise InputError(f"TIFF has axes {axes!r}, not an image (no Y and X axes).")
    order = [a for a in axes if a not in "YXS"] + [a for a in "SYX" if a in axes]
    data = np.transpose(data, [axes.index(a) for a in order])
    if "S" not in axes:
        data = data[..., None, :, :]
    data = data.reshape(-1, *data.shape[-3:])
    return data, int(data.shape[1])


def is_large_tiff(path: Path, threshold: int) -> bool:
    """Whether ``path`` is a single-page, single-channel TIFF with more than ``threshold`` pixels."""
    import tifffile

    try:
        with tifffile.TiffFile(str(path)) as tf:
            series = tf.series[0]
            shape, axes = series.shape, series.axes
    except Exception:
        return False
    spatial = math.prod(s for s, a in zip(shape, axes) if a in "YX")
    others = math.prod(s for s, a in zip(shape, axes) if a not in "YX")
    return others == 1 and spatial > threshold


def _tiff_page_tensor(page: np.ndarray, path: Path) -> Any:
    """A ``(C, rows, columns)`` page as the ``(C, W, H)`` float32 MetaTensor that ``PILReader`` would give."""
    from monai.data import MetaTensor

    x = torch.from_numpy(np.ascontiguousarray(np.swapaxes(page, -1, -2)).astype(np.float32))
    return MetaTensor(x, meta={"filename_or_obj": str(path), "spatial_shape": np.asarray(x.shape[1:])})


def predict_2d(runner: Any, item: Any, output_dir: Path, options: dict[str, Any]) -> list[Path]:
    """Segment a PNG or a (multi-page) TIFF; large TIFFs go to :func:`predict_large_tiff`."""
    from monai_unet.io.writers import write_png, write_tiff
    from monai_unet.predict import output_paths

    if options.get("large"):
        return predict_large_tiff(runner, item, output_dir, options)
    outs = output_paths(item, output_dir, options)
    probs = bool(options.get("probabilities"))
    dtype = runner.output_dtype or np.uint8
    if item.kind == "png":
        try:
            img = runner.loader({runner.image_key: str(item.path)})[runner.image_key]
        except Exception as e:
            raise InputError(f"cannot read the image: {e}") from e
        images = [img]
    else:
        pages, _ = tiff_pages(item.path)
        images = [_tiff_page_tensor(p, item.path) for p in pages]
    labels, prob_maps = [], []
    for n, img in enumerate(images):
        try:
            runner.check(img, item.key)
        except InputError as e:
            raise InputError(f"page {n}: {e}" if len(images) > 1 else str(e)) from e
        res = runner.run(img, probabilities=probs)
        labels.append(np.asarray(res["pred"][0].detach().cpu()).T.astype(dtype))
        if probs:
            prob_maps.append(np.swapaxes(np.asarray(res["prob"].detach().cpu(), dtype=np.float32), -1, -2))
    if item.kind == "png":
        written = [write_png(labels[0], outs[0])]
    else:
        written = [write_tiff(np.stack(labels) if len(labels) > 1 else labels[0], outs[0])]
    if probs:
        written.append(write_tiff(np.stack(prob_maps) if len(prob_maps) > 1 else prob_maps[0], outs[1]))
    return written


def _bounded_inferer(runner: Any, memory_mb: int, progress: bool) -> Any:
    """A copy of the bundle's inferer with ``progress`` and, for ``memory_mb > 0``, tiles no larger than the
    largest valid tile whose activations fit ``memory_mb`` (the result is the same for any tile size)."""
    import copy

    from monai_unet.inferers.tile_choice import choose_tile_size
    from monai_unet.inferers.tiling import size_rules_of

    inferer = copy.copy(runner.inferer)
    inferer.progress = progress
    if memory_mb > 0 and hasattr(inferer, "tile_size"):
        rules = size_rules_of(runner.network, getattr(inferer, "halo", None))
        if rules.depth is not None:
            cap = choose_tile_size(rules, runner.spatial_dims, memory_mb * 2**20, inferer.sw_batch_size)
            tile = inferer.tile_size
            if tile is None:
                inferer.tile_size = cap
            else:
                tile = (tile,) * runner.spatial_dims if isinstance(tile, int) else tuple(tile)
                inferer.tile_size = tuple(min(t, c) for t, c in zip(tile, cap))
    return inferer


def predict_large_tiff(runner: Any, item: Any, output_dir: Path, options: dict[str, Any]) -> list[Path]:
    """Segment a 2D TIFF larger than memory: lazy tiles in, tiles out (zarr), streamed to OME-TIFF.

    Preprocessing is re-expressed per tile (see :mod:`monai_unet.io.large_image`); the postprocessing must be
    pointwise. Tiles are capped so that their activations fit ``options["large_memory_mb"]`` (default 192 MiB),
    which bounds peak memory whatever the image size. Probabilities are not written on this path.
    """
    import zarr

    from monai_unet.io.atomic import atomic_output, scratch_path
    from monai_unet.io.large_image import (
        LazyImage,
        TileSink,
        limit_heap_fragmentation,
        open_tiff_lazily,
        pointwise_preprocessing,
    )
    from monai_unet.io.writers import write_ome_tiff_from_array
    from monai_unet.predict import output_paths

    out = output_paths(item, output_dir, options)[0]
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
    inferer = _bounded_inferer(runner, int(options.get("large_memory_mb") or 0), bool(options.get("progress")))
    limit_heap_fragmentation()

    def run_into(store: Path) -> Any:
        target = zarr.open_array(str(store), mode="w", shape=tuple(arr.shape), chunks=chunks, dtype=dtype)
        sink = TileSink(target, runner.out_channels, runner.run_tile_postprocessing)
        with torch.no_grad():
            inferer(LazyImage(arr, fn), runner.network, out=sink)
        return target

    if options.get("large_format") == "zarr":
        with atomic_output(out) as tmp:
            run_into(tmp)
        return [out]
    with scratch_path(out.with_name(out.name.replace(".ome.tif", ".zarr"))) as tmp:
        target = run_into(tmp)
        write_ome_tiff_from_array(target, out)
    return [out]
