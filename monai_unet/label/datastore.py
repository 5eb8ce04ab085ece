"""The app's DICOMweb datastore: 3D Slicer annotates the series of a PACS, and final labels go back to it as DICOM-SEG.

``monai-unet label --studies dicomweb+http://HOST:8042/dicom-web`` (or ``http://...``) serves a DICOMweb server with
MONAI Label's ``DICOMWebDatastore``: each image is a series (its id is the SeriesInstanceUID), downloaded on first
use into a cache and converted to NIfTI; a label submitted with the ``final`` tag is stored on the server as a
DICOM-SEG in the series' study, and a series with such a SEG counts as labelled. What the datastore here changes:

- The DICOM-SEG is written by :func:`monai_unet.io.dicom_seg.write_dicom_seg` (highdicom), referencing the source
  series (``ReferencedSeriesSequence``) and its study, the same writer as ``monai-unet predict --dicom-seg``.
  MONAI Label 0.8.5 would use dcmqi's ``itkimage2segimage``, which it downloads from GitHub at start-up (no Debian
  or PyPI package provides it): nothing is downloaded here.
- The SEG is stored with :class:`monai_unet.io.dicomweb.DicomWebSource` (retries with back-off; an error that names
  the server and the study, and where the SEG file stays: ``<cache>/segmentations/``).
- The lists of series and of labelled series are cached for ``dicomweb_cache_expiry`` seconds (default 60; MONAI
  Label: two hours) and forgotten when a label is saved, so that "Next Sample" moves on to an unlabelled series.
- The server is asked once at start-up, so a wrong URL or password stops the start with a clear message.

Settings (``--conf KEY=VALUE`` of ``monai-unet label``):

- ``dicomweb_filter``: the QIDO-RS filter of the series to annotate, as JSON (``{"Modality": "MR"}``) or
  ``KEY=VALUE,KEY=VALUE``; default ``Modality=MR`` (MONAI Label's default is CT).
- ``dicomweb_user``: user name for HTTP basic authentication; the password is read from
  ``$MONAI_UNET_DICOMWEB_PASSWORD`` (``monai-unet label`` asks on the terminal when it is not set).
- ``dicomweb_cache``: the folder for downloaded series and converted volumes (default ``<app_dir>/dicomweb-cache``).
- ``dicomweb_cache_expiry``: seconds the lists of series are reused (default 60).
- ``dicomweb_retries``, ``dicomweb_backoff``: retries and first back-off (s) of the store (default 3 and 1).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from monailabel.datastore.dicom import DICOMwebClientX, DICOMWebDatastore
from monailabel.datastore.local import LocalDatastore
from monailabel.datastore.utils.convert import binary_to_image
from monailabel.interfaces.datastore import DefaultLabelTag

from monai_unet.io.dicomweb import PASSWORD_ENV, DicomWebSource, parse_query, read_password

__all__ = ["UNetDICOMWebDatastore", "dicomweb_datastore", "label_to_dicom_seg", "parse_filter"]

logger = logging.getLogger(__name__)

DEFAULT_FILTER = {"Modality": "MR"}
T = TypeVar("T")


def parse_filter(value: str | Mapping[str, object] | None) -> dict[str, str]:
    """The ``dicomweb_filter`` setting: JSON object or ``KEY=VALUE,KEY=VALUE``; default ``{"Modality": "MR"}``.

    Raises:
        ValueError: not a JSON object nor ``KEY=VALUE`` pairs, or a key that is not a DICOM keyword or tag.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return dict(DEFAULT_FILTER)
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as e:
                raise ValueError(f"dicomweb_filter {text!r} is not valid JSON: {e}") from None
        else:
            return parse_query([p for p in text.split(",") if p.strip()])
    if not isinstance(value, Mapping):
        raise ValueError(f"dicomweb_filter must be a JSON object or KEY=VALUE pairs, got {value!r}.")
    return parse_query(value)


def label_to_dicom_seg(
    label_file: str | os.PathLike,
    series_dir: str | os.PathLike,
    path: str | os.PathLike,
    class_names: Mapping[int, str] | None = None,
) -> Path:
    """Write a label volume (NIfTI/NRRD, on the series' grid or resampled onto it) as a DICOM-SEG of the series.

    Args:
        label_file: the label, integer classes (0 = background), as 3D Slicer or MONAI Label saved it.
        series_dir: the folder holding the series' DICOM files.
        path: the DICOM-SEG to write.
        class_names: segment labels by class (others: ``class <k>``).

    Raises:
        ValueError: the folder does not hold exactly one series, or the label is not a 3D integer map >= 0.
    """
    import SimpleITK as sitk

    from monai_unet.io.dicom import find_dicom_series
    from monai_unet.io.dicom_seg import write_dicom_seg

    found = find_dicom_series(series_dir)
    if len(found) != 1:
        raise ValueError(f"{series_dir} holds {len(found)} DICOM image series; a label needs exactly one.")
    files = found[0].files
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in files])
    image = reader.Execute()
    label = sitk.ReadImage(str(label_file))
    if label.GetDimension() != 3 or label.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"{label_file}: a label of a series must be one 3D volume of classes.")
    same = (
        label.GetSize() == image.GetSize()
        and np.allclose(label.GetOrigin(), image.GetOrigin(), atol=1e-3)
        and np.allclose(label.GetDirection(), image.GetDirection(), atol=1e-4)
        and np.allclose(label.GetSpacing(), image.GetSpacing(), rtol=1e-4)
    )
    if not same:
        logger.info(f"label {label_file} is not on the series' grid: resampled onto it (nearest neighbour)")
        label = sitk.Resample(label, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, label.GetPixelID())
    classes = np.rint(sitk.GetArrayFromImage(label)).astype(np.int64)  # (Z, Y, X), Z in the files' order
    if classes.min(initial=0) < 0 or classes.max(initial=0) > 255:
        raise ValueError(f"{label_file}: label values must be classes 0..255, got {classes.min()}..{classes.max()}.")
    n_classes = max(2, int(classes.max(initial=0)) + 1)
    names = [(class_names or {}).get(c, f"class {c}") for c in range(1, n_classes)]
    return write_dicom_seg(
        np.transpose(classes, (2, 1, 0)).astype(np.uint8), files, path, n_classes=n_classes, class_names=names
    )


def _class_names(label_info: Any) -> dict[int, str]:
    """``{class: name}`` from the ``label_info`` 3D Slicer sends: ``[{"name": "tumour", "idx": 1}, ...]``."""
    names: dict[int, str] = {}
    for i, item in enumerate(label_info if isinstance(label_info, list) else []):
        if isinstance(item, Mapping) and item.get("name"):
            names[int(item.get("idx", i + 1))] = str(item["name"])
    return names


class UNetDICOMWebDatastore(DICOMWebDatastore):
    """MONAI Label's DICOMweb datastore with highdicom DICOM-SEG, retried stores and short-lived lists.

    Args:
        source: the server, for storing SEGs.
        client: the dicomweb-client MONAI Label reads the server with.
        search_filter: the QIDO-RS filter of the series to annotate.
        cache_path: folder for downloaded series and converted volumes.
        expiry: seconds the lists of series and labelled series are reused.
    """

    def __init__(
        self,
        source: DicomWebSource,
        client: Any,
        search_filter: Mapping[str, str],
        cache_path: str | os.PathLike,
        expiry: float = 60.0,
    ) -> None:
        super().__init__(client=client, search_filter=dict(search_filter), cache_path=str(cache_path))
        self._source = source
        self._expiry = expiry
        self._lists: dict[str, tuple[float, Any]] = {}
        self.seg_dir = Path(cache_path) / "segmentations"

    def _remembered(self, key: str, compute: Callable[[], T]) -> T:
        now = time.monotonic()
        if key not in self._lists or now - self._lists[key][0] > self._expiry:
            self._lists[key] = (now, compute())
        return self._lists[key][1]

    def list_images(self) -> list[str]:
        """The series the filter selects (SeriesInstanceUIDs)."""
        return self._remembered("images", lambda: DICOMWebDatastore.list_images.__wrapped__(self))

    def get_labeled_images(self, label_tag: str | None = None, labels: list[str] | None = None) -> list[str]:
        """The selected series that a DICOM-SEG on the server references."""
        return self._remembered(
            "labelled", lambda: DICOMWebDatastore.get_labeled_images.__wrapped__(self, label_tag, labels)
        )

    def save_label(
        self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any], label_id: str = ""
    ) -> str:
        """Save a label; a ``final`` one is also stored on the server as a DICOM-SEG in the series' study."""
        if label_tag != DefaultLabelTag.FINAL:
            return super().save_label(image_id, label_filename, label_tag, label_info, label_id)
        image_uri = self.get_image_uri(image_id)  # downloads the series when it is not in the cache yet
        converted = ""
        if "".join(Path(label_filename).suffixes) == ".bin":  # 3D Slicer's raw upload
            converted = label_filename = binary_to_image(image_uri, label_filename)
        series_dir = Path(self._datastore.image_path()) / image_id
        self.seg_dir.mkdir(parents=True, exist_ok=True)
        seg = label_to_dicom_seg(
            label_filename, series_dir, self.seg_dir / f"{image_id}_seg.dcm", _class_names(label_info.get("label_info"))
        )
        self._source.store([seg])  # on failure: DicomWebError naming the server, the study and the kept SEG
        import pydicom

        header = pydicom.dcmread(seg, stop_before_pixels=True)
        label_info.update(
            {
                "SeriesInstanceUID": str(header.SeriesInstanceUID),
                "Modality": "SEG",
                "PatientID": str(header.get("PatientID", "")),
                "StudyInstanceUID": str(header.StudyInstanceUID),
            }
        )
        seg.unlink()
        saved = LocalDatastore.save_label(self, image_id, label_filename, label_tag, label_info)
        self._lists.clear()  # the series is labelled now: "Next Sample" moves on
        if converted:
            os.unlink(converted)
        logger.info(f"stored the final label of series {image_id} on {self._source.url} as DICOM-SEG")
        return saved


def dicomweb_datastore(url: str, conf: Mapping[str, str], app_dir: str | os.PathLike) -> UNetDICOMWebDatastore:
    """The datastore for a DICOMweb ``--studies`` URL, with the app's ``--conf`` settings (see module docstring).

    Raises:
        ValueError: a bad setting, or a user without a password in ``$MONAI_UNET_DICOMWEB_PASSWORD``.
        DicomWebError: the server does not answer or refuses the credentials.
    """
    user = conf.get("dicomweb_user") or None
    password = read_password(user, prompt=False) if user else None
    source = DicomWebSource(
        url,
        user=user,
        password=password,
        retries=int(conf.get("dicomweb_retries", 3)),
        backoff=float(conf.get("dicomweb_backoff", 1.0)),
    )
    source.check()
    search_filter = parse_filter(conf.get("dicomweb_filter"))
    cache = Path(conf.get("dicomweb_cache") or Path(app_dir) / "dicomweb-cache").expanduser().resolve()
    logger.info(
        f"DICOMweb datastore {source.url} (user {user or 'none'}; password from ${PASSWORD_ENV}): series matching "
        f"{search_filter}, cached in {cache}"
    )
    client = source.make_client(DICOMwebClientX)
    return UNetDICOMWebDatastore(source, client, search_filter, cache, float(conf.get("dicomweb_cache_expiry", 60)))
