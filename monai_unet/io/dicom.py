"""DICOM series discovery: a folder (tree) of DICOM files split into volumes, one per series.

Series are grouped as MONAI's ``ITKReader`` groups them (ITK's GDCM series helper with series details and the
series date as a restriction), so a series identifier found here reads with ``ITKReader(series_name=uid)``
exactly as ``LoadImage`` would read a folder holding that series alone: several series in one folder become
several volumes, and each keeps its oblique direction cosines.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

__all__ = ["DicomSeries", "find_dicom_series", "looks_like_dicom"]


@dataclasses.dataclass(frozen=True)
class DicomSeries:
    """One DICOM series: its folder, ITK's series identifier and its files (sorted by ITK along the normal).

    Attributes:
        folder: the folder holding the files.
        uid: the series identifier to give ``ITKReader(series_name=...)``.
        files: the slice files in ITK's order.
    """

    folder: Path
    uid: str
    files: tuple[Path, ...]


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


def find_dicom_series(folder: str | os.PathLike) -> list[DicomSeries]:
    """The DICOM series stored directly in ``folder`` (not its subfolders), sorted by identifier.

    Returns an empty list when the folder holds no readable DICOM slice.
    """
    import itk

    folder = Path(folder)
    gen = itk.GDCMSeriesFileNames.New()
    gen.SetUseSeriesDetails(True)
    gen.AddSeriesRestriction("0008|0021")  # series date, as MONAI's ITKReader
    gen.SetDirectory(str(folder))
    series = []
    for uid in sorted(str(u) for u in gen.GetSeriesUIDs()):
        files = tuple(Path(f) for f in gen.GetFileNames(uid))
        if files:
            series.append(DicomSeries(folder=folder, uid=uid, files=files))
    return series
