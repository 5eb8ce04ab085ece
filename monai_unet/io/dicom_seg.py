"""DICOM-SEG output with highdicom: a label map on a DICOM series' grid, referencing that series.

Needs the ``dicom`` extra (``pip install "monai-unet[dicom]"``: pydicom, highdicom); imported only here.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monai_unet.io.atomic import atomic_output

__all__ = ["write_dicom_seg"]


def _require() -> tuple:
    from monai.utils import optional_import

    highdicom, has_highdicom = optional_import("highdicom")
    pydicom, has_pydicom = optional_import("pydicom")
    if not (has_highdicom and has_pydicom):
        raise ImportError('writing DICOM-SEG needs pydicom and highdicom: pip install "monai-unet[dicom]".')
    if "float_" not in np.__dict__:
        # highdicom 0.22 (the version MONAI Label's pydicom 2.4 allows) still names np.float_, removed in NumPy 2
        np.float_ = np.float64  # noqa: NPY201
    return highdicom, pydicom


_SHARED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID")


def _fill_empty_uids(datasets: Sequence[Any], hd: Any) -> None:
    """Give the source slices (in memory) generated UIDs where anonymisation emptied them, and warn.

    A DICOM-SEG must reference its source instances by UID. Exports that blank the study, series, frame of
    reference or instance UIDs (or the SOP class) would make highdicom fail; the SEG is then written against
    generated UIDs (one study/series/frame of reference for the whole series, one UID per slice; the SOP class
    from the file meta information), and the warning says that it references instances no archive holds.
    """
    filled = []
    for key in _SHARED_UIDS:
        if any(not str(ds.get(key, "") or "").strip() for ds in datasets):
            uid = hd.UID()
            for ds in datasets:
                setattr(ds, key, uid)
            filled.append(key)
    if any(not str(ds.get("SOPInstanceUID", "") or "").strip() for ds in datasets):
        for ds in datasets:
            ds.SOPInstanceUID = hd.UID()
        filled.append("SOPInstanceUID")
    if any(not str(ds.get("SOPClassUID", "") or "").strip() for ds in datasets):
        for ds in datasets:
            meta = getattr(ds, "file_meta", None)
            sop_class = str(getattr(meta, "MediaStorageSOPClassUID", "") or "") if meta is not None else ""
            if not sop_class:
                raise ValueError("a slice has neither a SOPClassUID nor a MediaStorageSOPClassUID: not an image")
            ds.SOPClassUID = sop_class
        filled.append("SOPClassUID")
    if filled:
        warnings.warn(
            f"the series has empty {', '.join(filled)} (anonymised?): the DICOM-SEG references generated UIDs "
            "that no archive holds; load it with the label map's NIfTI, not by reference.",
            stacklevel=3,
        )


def write_dicom_seg(
    label: np.ndarray,
    source_files: Sequence[str | os.PathLike],
    path: str | os.PathLike,
    n_classes: int = 2,
    class_names: Sequence[str] | None = None,
    algorithm_version: str = "0.1.0",
) -> Path:
    """Write ``label`` as a binary DICOM-SEG referencing the series ``source_files``, atomically.

    Args:
        label: ``(X, Y, Z)`` integer label map in ITK's index order for the series read by ITK (X: columns,
            Y: rows, Z: the files in ``source_files`` order, which is ITK's order along the slice normal).
        source_files: the series' files in ITK's order (``DicomSeries.files``).
        path: output ``.dcm`` file.
        n_classes: number of classes including background (0); classes 1..n-1 become segments 1..n-1.
        class_names: segment labels for classes 1..n-1 (default ``class 1``...).
        algorithm_version: written into the algorithm identification.

    Raises:
        ValueError: the label map does not match the series' slices and matrix.
    """
    hd, pydicom = _require()
    from pydicom.sr.codedict import codes

    datasets = [pydicom.dcmread(str(f)) for f in source_files]
    _fill_empty_uids(datasets, hd)
    rows, cols = int(datasets[0].Rows), int(datasets[0].Columns)
    if label.shape != (cols, rows, len(datasets)):
        raise ValueError(
            f"label map of shape {label.shape} does not match the series ({cols} columns, {rows} rows, "
            f"{len(datasets)} slices)."
        )
    frames = np.ascontiguousarray(np.transpose(label, (2, 1, 0)))  # (slices, rows, columns), files order
    names = list(class_names or [f"class {c}" for c in range(1, n_classes)])
    algorithm = hd.AlgorithmIdentificationSequence(
        name="monai-unet", version=algorithm_version, family=codes.cid7162.ArtificialIntelligence
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=c,
            segment_label=names[c - 1],
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Neoplasm,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for c in range(1, n_classes)
    ]
    if n_classes > 2:
        pixel = np.stack([frames == c for c in range(1, n_classes)], axis=-1).astype(np.uint8)
    else:
        pixel = (frames == 1).astype(np.uint8)
    seg = hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=pixel,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=int(getattr(datasets[0], "SeriesNumber", 0) or 0) + 1000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="monai-unet",
        manufacturer_model_name="U-Net (Ronneberger et al. 2015)",
        software_versions=algorithm_version,
        device_serial_number="0",
        omit_empty_frames=False,
    )
    source = str(getattr(datasets[0], "SeriesDescription", "") or "").strip()
    seg.SeriesDescription = (f"monai-unet SEG of {source}" if source else "monai-unet SEG")[:64]  # LO: 64 chars
    with atomic_output(path) as tmp:
        seg.save_as(str(tmp))
    return Path(path)
