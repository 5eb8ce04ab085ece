"""Per-format work of ``monai-unet predict``: read one input, run the bundle, write its outputs atomically.

- 3D (NIfTI, NRRD, MHA/MHD, DICOM series): the bundle's loading step (MONAI's reader; for a DICOM series,
  ``ITKReader`` on a temporary folder of links to exactly the slices :func:`~monai_unet.io.dicom.assemble_series`
  checked), then the bundle's pipeline, whose ``Invertd`` returns the label map to the input's grid; written as
  NIfTI with the input's affine (RAS), optionally the class probabilities (NIfTI, classes on the fifth axis) and
  a DICOM-SEG referencing the source series.
- 2D PNG: the bundle's loading step; output PNG.
- 2D TIFF (also multi-page stacks and RGB): read with tifffile into the layout MONAI's ``PILReader`` gives
  (``(C, W, H)``, float32), one page at a time; output a TIFF with one page per input page.

2D TIFFs larger than ``large_threshold`` pixels take the larger-than-RAM path of
:mod:`monai_unet.predict.large_image`.
"""

from __future__ import annotations

import contextlib
import glob
import math
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monai_unet.predict.inputs import InputItem, PredictOptions
from monai_unet.predict.runner import BundleRunner, InputError

__all__ = ["finished_parts", "is_large_tiff", "predict_2d", "predict_volume", "tiff_pages"]


def _check_dims(path: Path, spatial_dims: int, channels: int = 1, names: Sequence[str] = ()) -> None:
    """Raise :class:`InputError` when a volume file's header has more than ``spatial_dims`` non-trivial axes; for a
    bundle with ``channels`` > 1 inputs one more axis of that length holds them (a 4D NIfTI, MSD style)."""
    from monai_unet.io.formats import read_image_information

    try:
        size, components = read_image_information(path)
    except ValueError as e:
        raise InputError(str(e).removeprefix(f"{path}: ")) from e
    shape = (*size, components) if components > 1 else size
    extra = [s for s in shape[spatial_dims:] if s != 1]
    if channels > 1 and extra == [channels]:
        return
    if channels > 1 and len(extra) == 1:
        named = f" ({', '.join(names)})" if len(names) == channels else ""
        raise InputError(
            f"image is 4D (shape {tuple(shape)}): {extra[0]} channels along its last axis, but the bundle takes "
            f"{channels}{named}; stack exactly those, in that order, or give one file per channel (CASE_0000 ...)."
        )
    if extra:
        fix = (
            "split the time/channel axis into separate volumes first"
            if spatial_dims == 3
            else "this bundle segments 2D images (PNG/TIFF): use a 3D bundle for volumes"
        )
        raise InputError(f"image is {len(shape)}D (shape {tuple(shape)}); {fix}.")


def finished_parts(outs: list[Path]) -> list[Path] | None:
    """The outputs of an earlier ``--allow-gaps`` run that split this series into parts, when all are there.

    ``outs`` are the series' unsplit outputs (:func:`output_paths`); a run that found ``n`` evenly spaced runs of
    slices wrote ``*_part1ofn_*`` ... ``*_partnofn_*`` instead. Returns them when every part's every output
    exists (the batch then skips the series), else ``None``.
    """
    stem = outs[0].name[: -len("_seg.nii.gz")]
    found = re.compile(re.escape(stem) + r"_part1of(\d+)_seg\.nii\.gz$")
    counts = [
        int(m.group(1))
        for p in outs[0].parent.glob(f"{glob.escape(stem)}_part1of*_seg.nii.gz")
        if (m := found.match(p.name))
    ]
    for n in sorted(set(counts)):
        parts = [p for k in range(n) for p in _part_outputs(outs, k, n)]
        if all(p.exists() for p in parts):
            return parts
    return None


@contextlib.contextmanager
def native_warnings() -> Iterator[None]:
    """Re-issue what C++ libraries (ITK, GDCM) print straight to the process's stderr as Python warnings.

    ITK's readers warn on the file descriptor, outside Python (``WARNING: In .../itkImageSeriesReader.hxx, line
    478 / ImageSeriesReader (0x...): Non uniform sampling...``): captured here, each warning becomes one
    ``warnings.warn`` line, which the batch prints with the name of its input.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode(errors="replace")
    for block in re.split(r"\n\s*\n", text):
        lines = [ln.strip() for ln in block.splitlines() if ln.strip() and not re.match(r"WARNING: In .*line \d+$", ln)]
        if lines:
            message = re.sub(r"^\w+ \(0x[0-9a-f]+\): ", "", " ".join(lines))
            warnings.warn(message, stacklevel=3)


def _part_outputs(outs: list[Path], k: int, n: int) -> list[Path]:
    """The outputs of part ``k`` of ``n`` of a series with gaps: ``a_seg.nii.gz`` -> ``a_part1of2_seg.nii.gz``."""
    if n == 1:
        return outs
    tag = f"_part{k + 1}of{n}"
    return [o.with_name(o.name.replace("_seg.", f"{tag}_seg.", 1).replace("_probs.", f"{tag}_probs.", 1)) for o in outs]


@contextlib.contextmanager
def _series_folder(files: Sequence[Path]) -> Iterator[Path]:
    """A temporary folder holding links to exactly ``files`` (one checked series, duplicates left out)."""
    with tempfile.TemporaryDirectory(prefix="monai_unet_series_") as tmp:
        for k, f in enumerate(files):
            os.symlink(f.absolute(), Path(tmp) / f"{k:05d}_{f.name}")
        yield Path(tmp)


def _assembled_series(item: InputItem, options: PredictOptions) -> Any:
    """The checked series of a DICOM item (:func:`~monai_unet.io.dicom.assemble_series`); duplicates warned."""
    from monai_unet.io.dicom import DicomGeometryError, assemble_series, find_dicom_series

    series = item.dicom or next((s for s in find_dicom_series(item.path) if s.uid == item.series), None)
    if series is None:
        raise InputError(f"the series {item.series} is no longer in {item.path}.")
    try:
        assembled = assemble_series(series.files + series.unreadable, allow_gaps=options.allow_gaps)
    except DicomGeometryError as e:
        raise InputError(f"series {item.path.name}: {e}.") from e
    for kept, dropped in assembled.duplicates:
        warnings.warn(f"duplicate slice {dropped.name} left out (the same slice as {kept.name}).", stacklevel=2)
    if len(assembled.parts) > 1:
        warnings.warn(
            f"--allow-gaps: the series has {len(assembled.parts)} evenly spaced runs of slices "
            f"({', '.join(str(len(p)) for p in assembled.parts)} slices), each segmented on its own grid.",
            stacklevel=2,
        )
    return assembled


def predict_volume(runner: BundleRunner, item: InputItem, outs: list[Path], options: PredictOptions) -> list[Path]:
    """Segment a volume file or a DICOM series and write ``outs`` (from :func:`output_paths`): the label map
    ``*_seg.nii.gz``, then the optional probabilities and DICOM-SEG.

    A DICOM series is assembled by ImagePositionPatient along the slice normal and checked first
    (:func:`~monai_unet.io.dicom.assemble_series`: duplicates left out with a warning, a gap or an unreadable
    slice fails the input); the reader then sees exactly those slices. With ``options.allow_gaps`` each evenly
    spaced run of slices is segmented on its own grid (``*_part1of2_seg.nii.gz``...). An item with channels (a
    study or an nnU-Net case for a bundle with several named input channels) is read channel by channel and
    segmented on the first channel's grid (:func:`_stack_channels`).
    """
    if runner.spatial_dims != 3:
        what = "a DICOM series" if item.kind == "dicom" else "a volume file"
        raise InputError(f"{what}; the bundle {runner.bundle.name} segments 2D images (PNG/TIFF): use a 3D bundle.")
    if item.channels:
        return _predict_channels(runner, item, outs, options)
    if item.kind != "dicom":
        _check_dims(item.path, runner.spatial_dims, runner.in_channels, list(runner.channels or {}))
        img = _load_volume(runner, item, str(item.path), None)
        runner.check(img, item.key)
        return _segment_volume(runner, img, outs, options, None)
    parts = _assembled_series(item, options).parts
    written = []
    for k, files in enumerate(parts):
        with _series_folder(files) as folder:
            img = _load_volume(runner, item, str(folder), files)
        runner.check(img, item.key)
        written += _segment_volume(runner, img, _part_outputs(outs, k, len(parts)), options, files)
    return written


def _channel_names(runner: BundleRunner, n: int) -> list[str]:
    names = list(runner.channels or {})
    return names if len(names) == n else [f"channel {k}" for k in range(n)]


def _predict_channels(runner: BundleRunner, item: InputItem, outs: list[Path], options: PredictOptions) -> list[Path]:
    """Read each channel of a study or case (a DICOM series, checked as for one series, or a volume file), put
    them on the first channel's grid, segment, write ``outs``; a DICOM-SEG references the first channel's series."""
    names = _channel_names(runner, len(item.channels))
    images, first_slices = [], None
    for k, (name, channel) in enumerate(zip(names, item.channels)):
        if channel.kind == "dicom":
            parts = _assembled_series(channel, options).parts
            if len(parts) > 1:
                raise InputError(
                    f"channel {name} ({channel.path.name}) has a gap in its slice positions; a study is segmented "
                    "on one grid, so --allow-gaps cannot split it: give the channels without gaps."
                )
            with _series_folder(parts[0]) as folder:
                img = _load_volume(runner, channel, str(folder), parts[0])
            if k == 0:
                first_slices = parts[0]
        else:
            _check_dims(channel.path, runner.spatial_dims)
            img = _load_volume(runner, channel, str(channel.path), None)
        if img.shape[0] != 1:
            raise InputError(f"channel {name} ({channel.path.name}) has {img.shape[0]} channels itself; give one.")
        images.append(img)
    img = _stack_channels(images, names, [c.path.name for c in item.channels])
    runner.check(img, item.key)
    return _segment_volume(runner, img, outs, options, first_slices)


def _stack_channels(images: list[Any], names: Sequence[str], sources: Sequence[str]) -> Any:
    """One ``(C, *S)`` MetaTensor on the first image's grid: an image on another grid (shape or affine) is
    resampled onto it (trilinear, MONAI's ``ResampleToMatch``) with a warning naming it."""
    from monai.data import MetaTensor
    from monai.transforms import ResampleToMatch

    ref = images[0]
    out = [ref.as_tensor()]
    for name, source, img in zip(names[1:], sources[1:], images[1:]):
        same = tuple(img.shape[1:]) == tuple(ref.shape[1:]) and np.allclose(
            np.asarray(img.affine), np.asarray(ref.affine), atol=1e-3
        )
        if not same:
            spacing = np.linalg.norm(np.asarray(img.affine)[:3, :3], axis=0)
            warnings.warn(
                f"channel {name} ({source}) is on another grid (shape {tuple(img.shape[1:])}, spacing "
                f"{tuple(round(float(v), 4) for v in spacing)} mm) than {names[0]} ({sources[0]}, shape "
                f"{tuple(ref.shape[1:])}): resampled onto {names[0]}'s grid (trilinear).",
                stacklevel=2,
            )
            img = ResampleToMatch(mode="bilinear", padding_mode="zeros")(img, img_dst=ref)
        out.append(torch.as_tensor(img.as_tensor() if hasattr(img, "as_tensor") else img, dtype=ref.dtype))
    return MetaTensor(torch.cat(out, dim=0), meta=dict(ref.meta))  # the meta holds the first channel's affine


def _load_volume(runner: BundleRunner, item: InputItem, source: str, slices: Sequence[Path] | None) -> Any:
    """Read ``source`` (a volume file, or a folder of one checked series' ``slices``) with the bundle's loader."""
    from monai.data import ITKReader

    reader = None
    if slices is not None:
        from monai_unet.io.dicom import find_dicom_series

        reader = ITKReader()
        found = find_dicom_series(source)
        order = [Path(f).name.split("_", 1)[1] for f in found[0].files] if len(found) == 1 else None
        if order != [f.name for f in slices]:  # the reader must see the slices in the checked order
            raise InputError(f"series {item.path.name}: the reader does not order the slices by position; not read.")
    try:
        with native_warnings():
            return runner.loader({runner.image_key: source}, reader)[runner.image_key]
    except Exception as e:
        raise InputError(f"cannot read the image: {e}") from e


def _segment_volume(
    runner: BundleRunner, img: Any, outs: list[Path], options: PredictOptions, slices: Sequence[Path] | None
) -> list[Path]:
    """Segment a loaded, checked volume ``(C, *S)`` and write ``outs``; ``slices``: the DICOM files of its grid."""
    from monai_unet.io.writers import write_nifti

    affine = np.asarray(img.affine, dtype=np.float64)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    if not np.all(np.isfinite(affine)) or spacing.min() <= 1e-6 or abs(np.linalg.det(affine[:3, :3])) <= 1e-12:
        raise InputError(
            f"the image header gives voxel spacing {tuple(round(float(v), 4) for v in spacing)} mm (zero, or axes "
            "that do not span 3D): the voxels have no place in space; fix the header (pixdim, qform/sform)."
        )
    res = runner.run(img, probabilities=options.probabilities)
    pred = res["pred"]
    if tuple(pred.shape[1:]) != tuple(img.shape[1:]):
        raise RuntimeError(
            f"the bundle's postprocessing returned shape {tuple(pred.shape[1:])}, not the input's "
            f"{tuple(img.shape[1:])}: it needs an Invertd step to return to the input grid."
        )
    label = np.asarray(pred[0].detach().cpu()).astype(runner.output_dtype or np.uint8)
    written = [write_nifti(label, affine, outs[0])]
    k = 1
    if options.probabilities:
        prob = np.asarray(res["prob"].detach().cpu(), dtype=np.float32)
        written.append(write_nifti(np.moveaxis(prob, 0, -1), affine, outs[k]))
        k += 1
    if options.dicom_seg and slices is not None:
        from monai_unet.io.dicom_seg import write_dicom_seg

        written.append(write_dicom_seg(label, list(slices), outs[k], n_classes=runner.out_channels))
    return written


def _check_png(path: Path) -> None:
    """Raise :class:`InputError` saying what is wrong when ``path`` is not a readable PNG image."""
    from PIL import Image

    with open(path, "rb") as f:
        head = f.read(8)
    if head != b"\x89PNG\r\n\x1a\n":
        raise InputError(f"not a PNG image (the file does not start with the PNG signature: {head[:8]!r}).")
    try:
        with Image.open(path) as im:
            im.load()
    except Exception as e:
        raise InputError(f"the PNG image cannot be decoded ({' '.join(str(e).split())}): damaged or cut short?") from e


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
    pages = "".join(a for a in axes if a not in "YXS")  # Z, T, C, Q... become pages
    data = tifffile.transpose_axes(data, axes, asaxes=pages + "SYX")  # S of length 1 inserted when missing
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


def predict_2d(runner: BundleRunner, item: InputItem, outs: list[Path], options: PredictOptions) -> list[Path]:
    """Segment a PNG or a (multi-page) TIFF in memory and write ``outs`` (label map, then probabilities)."""
    from monai_unet.io.writers import write_png, write_tiff

    probs = options.probabilities
    dtype = runner.output_dtype or np.uint8
    if item.kind == "png":
        _check_png(item.path)
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
