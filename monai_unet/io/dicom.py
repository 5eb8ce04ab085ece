"""DICOM series discovery: a folder (tree) of DICOM files split into volumes, one per series.

Series are grouped as MONAI's ``ITKReader`` groups them (ITK's GDCM series helper with series details and the
series date as a restriction), so a series identifier found here reads with ``ITKReader(series_name=uid)``
exactly as ``LoadImage`` would read a folder holding that series alone: several series in one folder become
several volumes, and each keeps its oblique direction cosines.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "AssembledSeries",
    "DicomGeometryError",
    "DicomSeries",
    "assemble_series",
    "find_dicom_series",
    "looks_like_dicom",
    "read_header",
]


@dataclasses.dataclass(frozen=True)
class DicomSeries:
    """One DICOM series: its folder, ITK's series identifier and its files (sorted by ITK along the normal).

    Attributes:
        folder: the folder holding the files.
        uid: the series identifier to give ``ITKReader(series_name=...)``.
        files: the slice files in ITK's order.
        unreadable: files of the folder that GDCM left out of every series although they claim this series'
            SeriesInstanceUID (a truncated slice) or cannot be parsed at all; :func:`assemble_series` fails on them.
    """

    folder: Path
    uid: str
    files: tuple[Path, ...]
    unreadable: tuple[Path, ...] = ()


def looks_like_dicom(path: str | os.PathLike) -> bool:
    """Whether a file has a ``.dcm`` name or the DICOM preamble (``pydicom.misc.is_dicom``: ``DICM`` at byte 128)."""
    from pydicom.misc import is_dicom

    path = Path(path)
    if path.suffix.lower() == ".dcm":
        return True
    try:
        return bool(is_dicom(path))
    except OSError:
        return False


NON_IMAGE_MODALITIES = ("SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "SR", "PR", "KO", "REG")
"""Modalities whose objects are not image slices (a DICOM-SEG written beside its series is not an input)."""


def read_header(path: str | os.PathLike) -> object | None:
    """The DICOM header of a file (pixel data not read), or ``None`` when pydicom cannot parse it."""
    import pydicom

    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:
        return None


def find_dicom_series(folder: str | os.PathLike) -> list[DicomSeries]:
    """The DICOM image series stored directly in ``folder`` (not its subfolders), sorted by identifier.

    Non-image objects (DICOM-SEG, RT structures, reports: :data:`NON_IMAGE_MODALITIES`) are not series here.
    Returns an empty list when the folder holds no readable DICOM slice.
    """
    import itk

    folder = Path(folder)
    gen = itk.GDCMSeriesFileNames.New()
    gen.SetUseSeriesDetails(True)
    gen.AddSeriesRestriction("0008|0021")  # series date, as MONAI's ITKReader
    gen.SetDirectory(str(folder))
    found: list[tuple[str, tuple[Path, ...], str]] = []
    grouped: set[Path] = set()
    for uid in sorted(str(u) for u in gen.GetSeriesUIDs()):
        files = tuple(Path(f) for f in gen.GetFileNames(uid))
        if not files:
            continue
        grouped.update(files)
        ds = read_header(files[0])
        if ds is not None and str(ds.get("Modality", "")).upper() in NON_IMAGE_MODALITIES:
            continue
        found.append((uid, files, str(ds.get("SeriesInstanceUID", "")) if ds is not None else ""))
    # files GDCM could not place (a truncated slice is silently left out of its series): give them to the
    # series whose SeriesInstanceUID they claim, or to every series when they cannot be parsed at all
    left_out: dict[str, list[Path]] = {}
    for f in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        if f in grouped or not looks_like_dicom(f):
            continue
        ds = read_header(f)
        if ds is not None and str(ds.get("Modality", "")).upper() in NON_IMAGE_MODALITIES:
            continue
        if ds is not None and "SeriesInstanceUID" not in ds:
            continue  # a DICOMDIR or another object that is no slice of any series
        left_out.setdefault("" if ds is None else str(ds.SeriesInstanceUID), []).append(f)
    return [
        DicomSeries(folder, uid, files, tuple(left_out.get(series_uid, []) + left_out.get("", [])))
        for uid, files, series_uid in found
    ]


class DicomGeometryError(ValueError):
    """A DICOM series whose slices do not make one regular volume (a gap, an unreadable slice, mixed geometry)."""


@dataclasses.dataclass(frozen=True)
class AssembledSeries:
    """A series' slices in order along the slice normal, checked to lie on a regular grid.

    Attributes:
        parts: the slice files, in order of position along the normal; one list for a regular series, one per
            evenly spaced run of slices when gaps were allowed.
        duplicates: ``(kept, dropped)`` file pairs: the same SOPInstanceUID, or the same position and pixels.
    """

    parts: tuple[tuple[Path, ...], ...]
    duplicates: tuple[tuple[Path, Path], ...]

    @property
    def files(self) -> tuple[Path, ...]:
        """Every kept slice, in order."""
        return tuple(f for part in self.parts for f in part)


def _slice_header(path: Path) -> object:
    """The dataset of one slice, checked to be complete (no truncated pixel data)."""
    import pydicom

    try:
        ds = pydicom.dcmread(path)
    except Exception as e:
        raise DicomGeometryError(f"slice {path.name} cannot be read ({type(e).__name__}: {str(e)[:120]})") from e
    missing = [k for k in ("ImagePositionPatient", "ImageOrientationPatient", "PixelData") if k not in ds]
    if missing:
        raise DicomGeometryError(f"slice {path.name} lacks {', '.join(missing)}")
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is not None and not syntax.is_compressed:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        expected = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * frames
        expected = expected * int(ds.BitsAllocated) // 8
        if len(ds.PixelData) < expected:
            raise DicomGeometryError(
                f"slice {path.name} is truncated ({len(ds.PixelData)} of {expected} bytes of pixel data)"
            )
    return ds


def assemble_series(
    files: Sequence[str | os.PathLike], allow_gaps: bool = False, tolerance: float = 0.01
) -> AssembledSeries:
    """Order a series' slices by ImagePositionPatient along the slice normal (never by file name) and check them.

    - Duplicates (the same SOPInstanceUID, or the same position and the same pixels, as when exports are merged)
      are dropped; the caller is told which in :attr:`AssembledSeries.duplicates`.
    - A slice that cannot be read or is truncated, two different slices at one position, or slices with
      different orientations fail the series.
    - A gap (a step between neighbours that differs from the median step by more than ``tolerance`` of it, as a
      missing slice does) fails the series, unless ``allow_gaps``: then each evenly spaced run of slices is a
      part of its own, so no slice is ever put on a position it was not acquired at.

    Raises:
        DicomGeometryError: with the series' problem, its positions and the files involved.
    """
    import numpy as np

    paths = sorted(Path(f) for f in files)
    if not paths:
        raise DicomGeometryError("the series holds no slice")
    headers = [_slice_header(p) for p in paths]
    iops = np.array([[float(v) for v in ds.ImageOrientationPatient] for ds in headers])
    if np.abs(iops - iops[0]).max() > 1e-4:
        odd = paths[int(np.abs(iops - iops[0]).max(axis=1).argmax())]
        raise DicomGeometryError(
            f"slices have different orientations (ImageOrientationPatient of {odd.name} differs from "
            f"{paths[0].name}): not one volume"
        )
    normal = np.cross(iops[0][:3], iops[0][3:])
    positions = [float(np.dot([float(v) for v in ds.ImagePositionPatient], normal)) for ds in headers]

    kept: list[int] = []
    duplicates: list[tuple[Path, Path]] = []
    by_uid: dict[str, int] = {}
    for i, ds in enumerate(headers):
        uid = str(ds.get("SOPInstanceUID", ""))
        if uid and uid in by_uid:
            duplicates.append((paths[by_uid[uid]], paths[i]))
            continue
        same = next((k for k in kept if abs(positions[k] - positions[i]) < 1e-3), None)
        if same is not None:
            if headers[same].PixelData == ds.PixelData:
                duplicates.append((paths[same], paths[i]))
                continue
            raise DicomGeometryError(
                f"two different slices at one position ({positions[i]:.2f} mm along the normal): {paths[same].name} "
                f"and {paths[i].name}; the folder mixes acquisitions: put each in a folder of its own"
            )
        by_uid[uid] = i
        kept.append(i)
    order = sorted(kept, key=lambda k: positions[k])
    z = np.array([positions[k] for k in order])
    if len(order) < 2:
        return AssembledSeries(((paths[order[0]],),), tuple(duplicates))
    steps = np.diff(z)
    step = float(np.median(steps))
    bad = [k for k, s in enumerate(steps) if abs(s - step) > tolerance * step]
    if bad and not allow_gaps:
        k = bad[0]
        raise DicomGeometryError(
            f"{len(bad)} gap(s) in the slice positions: {steps[k]:.2f} mm between {paths[order[k]].name} "
            f"({z[k]:.2f} mm) and {paths[order[k + 1]].name} ({z[k + 1]:.2f} mm) where the other slices are "
            f"{step:.2f} mm apart (a missing or unreadable slice?); restore the slice, or pass --allow-gaps to "
            "segment each evenly spaced run of slices on its own grid"
        )
    parts: list[tuple[Path, ...]] = []
    start = 0
    for k in [*bad, len(order) - 1]:
        parts.append(tuple(paths[i] for i in order[start : k + 1]))
        start = k + 1
    return AssembledSeries(tuple(parts), tuple(duplicates))
