"""What ``monai-unet predict`` segments and where its outputs go: input discovery, options and output paths.

:func:`discover_inputs` expands files and folders into :class:`InputItem` objects (a file, or one DICOM series of a
folder); :func:`output_paths` names every output of one item under the output folder; :class:`PredictOptions`
holds the batch's settings. Nothing here reads pixels or knows the network.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from monai.utils import look_up_option

from monai_unet.data.channels import ChannelError, match_channels, split_channel_name
from monai_unet.io.dicom import DicomSeries, find_dicom_series, looks_like_dicom, read_header
from monai_unet.io.formats import IMAGE_SUFFIXES_2D, VOLUME_SUFFIXES, ZARR_SUFFIXES, strip_suffix, suffix_of
from monai_unet.io.large_image import is_ome_zarr

__all__ = [
    "DEFAULT_LARGE_THRESHOLD",
    "LARGE_FORMATS",
    "NAMINGS",
    "InputItem",
    "PredictOptions",
    "discover_inputs",
    "output_paths",
]

DEFAULT_LARGE_THRESHOLD = 4096 * 4096
LARGE_FORMATS = ("ome-tiff", "ome-zarr", "zarr")
"""Outputs of the larger-than-RAM path; ``"zarr"`` is the former name of ``"ome-zarr"``."""
NAMINGS = ("path", "dicom")


@dataclasses.dataclass(frozen=True)
class PredictOptions:
    """The settings of one ``monai-unet predict`` batch.

    Attributes:
        probabilities: also write class probabilities (``*_probs.nii.gz`` / ``*_probs.tif``).
        dicom_seg: also write a DICOM-SEG (``*_seg.dcm``) for DICOM inputs (needs highdicom).
        large_threshold: 2D TIFFs with more pixels than this are read and written tile by tile (OME-Zarr images
            always are).
        large_format: output of the large path: ``"ome-tiff"`` (pyramidal, ``*_seg.ome.tif``) or ``"ome-zarr"``
            (NGFF 0.4 labels, ``*_seg.ome.zarr``; ``"zarr"`` is accepted for it).
        large_memory_mb: on the large path, tiles are chosen as the in-memory path chooses them (measured speed)
            among those whose activations fit this many MiB (``0``: the bundle's tile size); this bounds peak
            memory whatever the image size.
        progress: progress bars over inputs and over the tiles of large images.
        overwrite: redo inputs whose outputs exist.
        allow_gaps: a DICOM series with a gap in its slice positions is segmented as its evenly spaced runs of
            slices, each on its own grid (``*_part1of2_seg.nii.gz``...), instead of failing.
    """

    probabilities: bool = False
    dicom_seg: bool = False
    large_threshold: int = DEFAULT_LARGE_THRESHOLD
    large_format: str = "ome-tiff"
    large_memory_mb: int = 192
    progress: bool = True
    overwrite: bool = False
    allow_gaps: bool = False

    def __post_init__(self) -> None:
        fmt = look_up_option(self.large_format, LARGE_FORMATS)
        object.__setattr__(self, "large_format", "ome-zarr" if fmt == "zarr" else fmt)
        if self.large_memory_mb < 0:
            raise ValueError(f"large_memory_mb must be >= 0 (0: the bundle's tile size), got {self.large_memory_mb}.")


@dataclasses.dataclass
class InputItem:
    """One volume or image to segment.

    Attributes:
        key: what the summary calls it (the path, plus ``#series`` for one series of a multi-series folder).
        kind: ``"volume"``, ``"dicom"``, ``"png"``, ``"tiff"``, ``"ome-zarr"`` (an OME-Zarr image folder, always on
            the larger-than-RAM path) or ``"invalid"`` (found broken at discovery).
        path: the file, or the DICOM folder.
        rel: output path relative to the output folder, without the ``_seg`` suffix and extension.
        series: the DICOM series identifier (ITK's), when the folder holds several.
        error: why an ``"invalid"`` item cannot be segmented.
        dicom: the series found at discovery (its files), so that segmenting it does not search the folder again.
        channels: for a bundle with several named input channels, one item per channel (a DICOM series or a
            volume file), in the bundle's channel order; the item itself is then the study or case.
    """

    key: str
    kind: str
    path: Path
    rel: Path
    series: str | None = None
    error: str | None = None
    dicom: DicomSeries | None = None
    channels: tuple[InputItem, ...] = ()


INPUT_SUFFIXES = VOLUME_SUFFIXES + IMAGE_SUFFIXES_2D
_OUTPUT_NAME = re.compile(r"_(seg|probs)\.(nii\.gz|png|tif|ome\.tif|ome\.zarr|zarr|dcm)$", re.IGNORECASE)
"""The names :func:`output_paths` gives."""


def _strip(path: Path) -> Path:
    return path.with_name(strip_suffix(path, (".ome.tif", ".ome.tiff", *ZARR_SUFFIXES, *INPUT_SUFFIXES, ".dcm")))


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "series"


def _file_item(path: Path, rel: Path) -> InputItem:
    if path.is_dir() and suffix_of(path, ZARR_SUFFIXES):
        if is_ome_zarr(path):
            return InputItem(str(path), "ome-zarr", path, _strip(rel))
        return InputItem(
            str(path), "invalid", path, _strip(rel), error=f"{path.name} is not a zarr group (no .zattrs)."
        )
    if suffix_of(path, VOLUME_SUFFIXES):
        return InputItem(str(path), "volume", path, _strip(rel))
    s = suffix_of(path, IMAGE_SUFFIXES_2D)
    if s:
        return InputItem(str(path), "png" if s == ".png" else "tiff", path, _strip(rel))
    why = (
        "is a single DICOM file: give the folder holding its series"
        if looks_like_dicom(path)
        else "is not a supported input (NIfTI, NRRD, MHA/MHD, DICOM series folder, PNG, TIFF)"
    )
    return InputItem(str(path), "invalid", path, _strip(rel), error=f"{path.name} {why}.")


def _series_label(series: DicomSeries) -> tuple[str, str, str]:
    """``(PatientID, StudyDate, "<SeriesNumber>_<SeriesDescription>")`` of a series, file-name safe."""
    ds = read_header(series.files[0]) or {}
    number, description = str(ds.get("SeriesNumber", "") or ""), str(ds.get("SeriesDescription", "") or "")
    name = "_".join(v for v in (number, description) if v.strip()) or series.uid[-40:]
    return (
        _safe(str(ds.get("PatientID", "") or "unknown_patient")),
        _safe(str(ds.get("StudyDate", "") or "unknown_date")),
        _safe(name),
    )


def _dicom_items(folder: Path, files: list[Path], root: Path, naming: str) -> list[InputItem]:
    rel = folder.relative_to(root) if folder != root else Path(root.name)
    try:
        series = find_dicom_series(folder)
    except Exception as e:  # GDCM errors on unreadable folders
        series, err = [], str(e).splitlines()[0]
    else:
        err = ""
    if not series:
        return [
            InputItem(
                str(folder),
                "invalid",
                folder,
                rel,
                error=f"no readable DICOM series among {len(files)} DICOM-looking file(s) (corrupt?) {err}".strip(),
            )
        ]
    labels = [_series_label(s) for s in series]
    if naming == "dicom":
        rels = [Path(*label) for label in labels]
    elif len(series) == 1:
        rels = [rel]
    else:
        rels = [rel / label[2] for label in labels]
    if len(set(rels)) < len(rels):  # two series of one number and description: tell them apart by identifier
        rels = [r.with_name(f"{r.name}_{_safe(s.uid[-12:])}") for r, s in zip(rels, series)]
    keys = [str(folder)] if len(series) == 1 else [f"{folder}#{s.uid}" for s in series]
    return [InputItem(k, "dicom", folder, r, series=s.uid, dicom=s) for k, r, s in zip(keys, rels, series)]


def _common_root(paths: Sequence[Path]) -> Path | None:
    """The deepest folder holding every input (a folder input counts as itself, a file as its folder)."""
    folders = [p if p.is_dir() and not suffix_of(p, ZARR_SUFFIXES) else p.parent for p in paths if p.exists()]
    return Path(os.path.commonpath(folders)) if folders else None


def _series_name(item: InputItem) -> tuple[str, str]:
    """``(name, SeriesDescription)`` of a DICOM item, what channel patterns are matched against."""
    ds = read_header(item.dicom.files[0]) if item.dicom is not None and item.dicom.files else None
    description = str(ds.get("SeriesDescription", "") or "") if ds is not None else ""
    return (item.path.name if item.series is None or item.key == str(item.path) else item.rel.name), description


def group_channels(
    items: list[InputItem], channels: Mapping[str, object], naming: str = "path", studies_only: bool = False
) -> list[InputItem]:
    """Group per-channel inputs into one item per study or case, for a bundle with several named channels.

    ``studies_only`` (a bundle with one named channel): only DICOM studies of several series are grouped (their
    series matched to the channel); a single series, and any volume file, stays one item as it is.

    - DICOM series: the series of one study folder (one folder per series below it, or several series in one
      folder) are matched to the channels by folder name or SeriesDescription
      (:func:`~monai_unet.data.channels.match_channels`); series no channel asks for are not inputs. A study
      that lacks a channel becomes an ``"invalid"`` item naming the channel and the series found.
    - nnU-Net channel files ``CASE_0000.nii.gz``, ``CASE_0001.nii.gz``, ... in one folder: one case each.
    - Any other volume file stays one item (a 4D NIfTI holds its channels; the bundle checks their number).
    """
    studies: dict[Path, list[InputItem]] = {}
    volumes: dict[Path, list[InputItem]] = {}
    out: list[InputItem] = []
    for item in items:
        if item.kind == "dicom":
            study = item.path if item.key != str(item.path) else item.path.parent
            studies.setdefault(study, []).append(item)
        elif item.kind == "volume" and not studies_only:
            volumes.setdefault(item.path.parent, []).append(item)
        else:
            out.append(item)
    for study, members in studies.items():
        if studies_only and len(members) == 1:
            out.extend(members)
            continue
        rel = members[0].rel.parent  # the series' outputs would go into the study's folder: the study's name
        if rel == Path("."):
            rel = Path(study.name)
        try:
            picked = match_channels([_series_name(m) for m in members], channels, f"Study {study}")
        except ChannelError as e:
            out.append(InputItem(str(study), "invalid", study, rel, error=str(e)))
            continue
        chosen = tuple(members[i] for i in picked)
        out.append(InputItem(str(study), "dicom", study, rel, dicom=chosen[0].dicom, channels=chosen))
    for folder, members in volumes.items():
        cases: dict[str, list[tuple[int | None, InputItem]]] = {}
        for m in members:
            case, index = split_channel_name(strip_suffix(m.path.name, VOLUME_SUFFIXES))
            cases.setdefault(case if index is not None else str(m.path), []).append((index, m))
        for case, files in sorted(cases.items()):
            if len(files) == 1 and (files[0][0] is None or len(channels) == 1):
                out.append(files[0][1])  # one file: a 4D volume holds its channels (the bundle counts them)
                continue
            files.sort(key=lambda f: f[0])
            first = files[0][1]
            indices = [f[0] for f in files]
            if indices != list(range(len(channels))):
                error = (
                    f"case {case} has the channel files {', '.join(f[1].path.name for f in files)}; the bundle takes "
                    f"{len(channels)} ({', '.join(channels)}) as {case}_0000 ... {case}_{len(channels) - 1:04d}."
                )
                out.append(
                    InputItem(str(folder / case), "invalid", folder / case, first.rel.with_name(case), error=error)
                )
                continue
            channel_items = tuple(f[1] for f in files)
            out.append(
                InputItem(str(folder / case), "volume", first.path, first.rel.with_name(case), channels=channel_items)
            )
    return sorted(out, key=lambda i: i.key)


def discover_inputs(
    paths: Sequence[str | os.PathLike],
    exclude: str | os.PathLike | None = None,
    naming: str = "path",
    channels: Mapping[str, object] | None = None,
) -> list[InputItem]:
    """Expand files and folders into the inputs to segment, sorted by key and without duplicates.

    Outputs are named after each input's path below the common root of all inputs (``naming="path"``: a cohort
    ``pA/T1post``, ``pB/T1post`` gives ``pA/T1post_seg.nii.gz`` and ``pB/T1post_seg.nii.gz``; a folder holding
    several DICOM series adds ``<SeriesNumber>_<SeriesDescription>``), or, for DICOM series, after
    ``PatientID/StudyDate/<SeriesNumber>_<SeriesDescription>`` (``naming="dicom"``).

    Files with a known suffix are inputs; in folders (walked recursively) other files that look like DICOM
    (``.dcm`` or the ``DICM`` preamble) are grouped into series per folder, one input per series. A path that
    does not exist, a folder with nothing to segment, and a DICOM folder without a readable series become
    ``"invalid"`` items, so they show in the summary. Outputs of this tool are never inputs, however they are
    reached (the output folder inside an input folder, equal to it, or reached through a symlink): files in
    ``exclude`` (the output folder, resolved) named as outputs are left out, and a subfolder that is ``exclude``
    is not searched. DICOM-SEG and other non-image objects are not series (see
    :func:`~monai_unet.io.dicom.find_dicom_series`). With ``channels`` (a bundle's named input channels, more
    than one) the series of a study and nnU-Net's channel files of a case are one input (:func:`group_channels`).
    """
    look_up_option(naming, NAMINGS)
    items: dict[str, InputItem] = {}
    given = [Path(p).expanduser().absolute() for p in paths]
    common = _common_root(given)
    skip = None if exclude is None else Path(exclude).expanduser().resolve()

    def is_output(f: Path) -> bool:
        return skip is not None and _OUTPUT_NAME.search(f.name) is not None and f.resolve().parent == skip

    for path in given:
        image_folder = path.is_dir() and suffix_of(path, ZARR_SUFFIXES) is not None
        root = path if path.is_dir() and len(given) == 1 and not image_folder else common
        if path.is_file() or image_folder:
            if is_output(path):
                error = f"{path} is an output of monai-unet predict in the output folder; it is not segmented again."
                items[str(path)] = InputItem(str(path), "invalid", path, Path(path.name), error=error)
                continue
            item = _file_item(path, path.relative_to(root))
            items.setdefault(item.key, item)
            continue
        if not path.is_dir():
            items[str(path)] = InputItem(str(path), "invalid", path, Path(path.name), error=f"{path} does not exist.")
            continue
        found = 0
        for folder, dirs, files in os.walk(path):
            folder = Path(folder)
            dirs[:] = sorted(
                d
                for d in dirs
                if not d.startswith(".")
                and not (skip is not None and (folder / d).resolve() == skip)
                and not is_output(folder / d)  # a zarr output is a folder
            )
            for d in [d for d in dirs if suffix_of(d, ZARR_SUFFIXES)]:  # an OME-Zarr image: an input, not searched
                dirs.remove(d)
                item = _file_item(folder / d, (folder / d).relative_to(root))
                items.setdefault(item.key, item)
                found += 1
            dicom = []
            for name in sorted(files):
                f = folder / name
                if name.startswith(".") or is_output(f):
                    continue
                if suffix_of(f, INPUT_SUFFIXES):
                    item = _file_item(f, f.relative_to(root))
                    items.setdefault(item.key, item)
                    found += 1
                elif looks_like_dicom(f):
                    dicom.append(f)
            if dicom:
                for item in _dicom_items(folder, dicom, root, naming):
                    items.setdefault(item.key, item)
                    found += 1
        if not found:
            items[str(path)] = InputItem(
                str(path), "invalid", path, Path(path.name), error=f"folder {path} holds no image or DICOM series."
            )
    ordered = [items[k] for k in sorted(items)]
    if channels:  # one named channel: a study's series are matched to it, not each segmented on its own
        ordered = group_channels(ordered, channels, naming, studies_only=len(channels) == 1)
    groups: dict[Path, list[InputItem]] = {}
    for item in ordered:
        groups.setdefault(item.rel, []).append(item)
    for same in groups.values():  # a.png and a.tif, a.nii and a.nii.gz: tell their outputs apart by format
        if len(same) > 1:
            for item in same:
                tag = (suffix_of(item.path, (*INPUT_SUFFIXES, *ZARR_SUFFIXES)) or "").replace(".", "")
                if tag:
                    item.rel = item.rel.with_name(f"{item.rel.name}_{tag}")
    owner: dict[Path, str] = {}
    for item in ordered:  # still the same name: the later one fails rather than overwrite
        first = owner.setdefault(item.rel, item.key)
        if first != item.key and item.kind != "invalid":
            item.kind, item.error = "invalid", f"its outputs would overwrite those of {first}; segment it separately."
    return ordered


def output_paths(item: InputItem, output_dir: Path, options: PredictOptions, large: bool = False) -> list[Path]:
    """Every output ``item`` will have: the label map first, then probabilities and DICOM-SEG when asked.

    ``large``: the item is segmented on the larger-than-RAM path (one OME-TIFF or OME-Zarr output; an OME-Zarr
    input always is).
    """
    base = output_dir / item.rel
    stem = base.name
    if item.kind in ("volume", "dicom"):
        outs = [base.with_name(f"{stem}_seg.nii.gz")]
        if options.probabilities:
            outs.append(base.with_name(f"{stem}_probs.nii.gz"))
        if options.dicom_seg and item.kind == "dicom":
            outs.append(base.with_name(f"{stem}_seg.dcm"))
        return outs
    if item.kind == "png":
        outs = [base.with_name(f"{stem}_seg.png")]
    elif item.kind == "ome-zarr" or (item.kind == "tiff" and large):
        ext = ".ome.zarr" if options.large_format in ("ome-zarr", "zarr") else ".ome.tif"
        return [base.with_name(f"{stem}_seg{ext}")]
    else:
        outs = [base.with_name(f"{stem}_seg.tif")]
    if options.probabilities:
        outs.append(base.with_name(f"{stem}_probs.tif"))
    return outs
