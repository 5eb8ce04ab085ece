"""``monai-unet predict`` from and to a PACS: DICOMweb inputs become local study folders; DICOM-SEGs go back.

An input ``dicomweb+http://HOST:8042/dicom-web`` with a selector (``--study``, ``--series``, ``--query``) is
searched (QIDO-RS), and each selected study is retrieved (WADO-RS) into a scratch folder laid out as an exported
study (one folder per series, named with its SeriesDescription), which the local code path segments like any
DICOM folder (several named channels too). With ``--store-to`` each DICOM-SEG written is sent back (STOW-RS) into
its study; series the server already holds a SEG of are not retrieved again (resume). A server that fails (after
its retries) fails that study only; a failed store leaves the local outputs in place and says so.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["DicomWebOptions", "Fetched", "display_key", "fetch_studies", "store_outputs"]


@dataclasses.dataclass(frozen=True)
class DicomWebOptions:
    """What to take from a DICOMweb input and where to store the results.

    Attributes:
        study, series: a StudyInstanceUID / SeriesInstanceUID to select.
        query: QIDO-RS ``KEY=VALUE`` match keys (``PatientID=PGBM-001``, ``StudyDate=19910101-19921231``).
        user: the user name (the password from ``MONAI_UNET_DICOMWEB_PASSWORD`` or a prompt; never logged).
        store_to: a DICOMweb root to store each DICOM-SEG to (needs ``dicom_seg``).
    """

    study: str | None = None
    series: str | None = None
    query: tuple[str, ...] = ()
    user: str | None = None
    store_to: str | None = None


@dataclasses.dataclass
class Fetched:
    """The local inputs retrieved from the servers, what could not be, and where each study came from."""

    inputs: list[str]
    failed: list[tuple[str, str]]  # (key, reason)
    skipped: list[tuple[str, str]]  # (key, reason): the server holds their segmentations already
    origins: dict[Path, str]  # local study folder -> "server#StudyInstanceUID"
    target: Any = None  # the DicomWebSource of store_to


def fetch_studies(
    urls: Sequence[str], options: DicomWebOptions, scratch: Path, whole_studies: bool, stream: Any = None
) -> Fetched:
    """Select and retrieve the studies of each DICOMweb ``url`` into ``scratch``.

    ``whole_studies``: the bundle takes several named channels, so a study is segmented as one (and counts as
    segmented when the server holds a SEG of any of its series); otherwise each series is an input of its own.

    Raises:
        ValueError: a URL with credentials in it, no selector, a bad query key (nothing runs).
    """
    from monai_unet.io.dicomweb import DicomWebError, DicomWebSource

    target = DicomWebSource.from_url(options.store_to, user=options.user) if options.store_to else None
    out = Fetched([], [], [], {}, target)
    for url in urls:
        source = DicomWebSource.from_url(url, user=options.user)
        try:
            studies = source.select(study=options.study, series=options.series, query=list(options.query) or None)
        except DicomWebError as e:
            out.failed.append((url, str(e)))
            continue
        if not studies and stream is not None:
            print(f"{url}: no image series match the selection", file=stream)
        for study in studies:
            key = f"{source.url}#{study.study_uid}"
            try:
                todo = study.series
                if target is not None:
                    held = target.held_segmentations(study.study_uid)
                    if whole_studies and any(s.series_uid in held for s in study.series):
                        todo = ()
                    else:
                        todo = tuple(s for s in study.series if s.series_uid not in held)
                    if not todo:
                        out.skipped.append((key, f"{options.store_to} holds its segmentation"))
                        continue
                folder = source.retrieve(dataclasses.replace(study, series=todo), scratch)
            except DicomWebError as e:
                out.failed.append((key, str(e)))
                continue
            out.inputs.append(str(folder))
            out.origins[folder.resolve()] = key
    return out


def display_key(fetched: Fetched, key: str, item_path: Path) -> str:
    """The summary's name of an input: for a retrieved study, ``server#StudyInstanceUID[/series folder]``."""
    path = item_path.resolve()
    if path in fetched.origins:
        return fetched.origins[path]
    if path.parent in fetched.origins:
        return f"{fetched.origins[path.parent]}/{path.name}"
    return key


def store_outputs(fetched: Fetched, item_path: Path, outputs: Sequence[Path]) -> str | None:
    """Send the DICOM-SEGs among ``outputs`` of an item that came from a server to ``store_to``; returns why not
    (the local outputs stay) or ``None`` when stored or nothing to store."""
    from monai_unet.io.dicomweb import DicomWebError

    if fetched.target is None:
        return None
    path = item_path.resolve()
    if path not in fetched.origins and path.parent not in fetched.origins:
        return None
    segs = [p for p in outputs if p.name.endswith("_seg.dcm")]
    if not segs:
        return None
    try:
        fetched.target.store(segs)
    except DicomWebError as e:
        return str(e)
    return None
