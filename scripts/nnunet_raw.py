"""Convert DICOM study folders (or NIfTI datasets in imagesTr/labelsTr form) into an nnU-Net v2 raw dataset.

Writes ``<raw-root>/DatasetXXX_Name/`` with ``imagesTr/CASE_0000.nii.gz ... CASE_000N.nii.gz`` (one file per channel),
``labelsTr/CASE.nii.gz`` (the tumour mask as uint8 {0, 1}), ``dataset.json`` (``channel_names``, ``labels``
{background: 0, tumour: 1}, ``numTraining``, ``file_ending``, and where each case came from) and, when the cases come
from at least two patients, ``splits_final.json`` with patient-wise folds (nnU-Net's planner copies it; its default
random 5-fold split would put two studies of one patient on both sides).

DICOM studies: each study folder holds one folder per series; a series is a channel's when its folder name or its
SeriesDescription matches the channel's pattern (:func:`monai_unet.data.channels.match_study_channels`). Each series
is found and checked with :mod:`monai_unet.io.dicom` (one series per folder; slices ordered along the normal, no gap,
no truncated slice) and read with SimpleITK's ``ImageSeriesReader`` (direction cosines kept: the data is oblique).
The channels and the mask must lie on the first channel's grid; one that does not is resampled onto it (linear for
images, nearest for the mask) with a warning. The mask is ``!= 0 -> 1``. Case ids are ``PatientID_YYYY-MM-DD``
(StudyDate), e.g. ``PGBM-001_1991-11-19``, from the DICOM headers, else from the folder names.

Default channels, in nnU-Net's BraTS order (``Dataset137_BraTS21``: T1, T1ce, T2, FLAIR)::

    0000 T1pre  = *T1prereg* | *T1pre*
    0001 T1post = *T1post*
    0002 T2     = *T2reg* | *T2*
    0003 FLAIR  = *FLAIR*
    label       = *MaskTumor*

``--channels T1post FLAIR`` picks and orders channels (``NAME=PATTERN[|PATTERN]`` gives a pattern of its own). The
names are MR sequence names, so nnU-Net normalises every channel with its z-score scheme (only ``CT``, ``noNorm``,
``zscore``, ``rescale_to_0_1`` and ``rgb_to_0_1`` name other schemes).

NIfTI datasets (a folder with ``imagesTr/`` and ``labelsTr/``, channel files ``CASE_0000`` ...): copied, or
symbolically linked with ``--link``; a label that is not {0, 1} or not on its image's grid is rewritten instead.

The dataset is built in a hidden folder beside its destination and renamed into place when complete; an existing
dataset is replaced only with ``--overwrite``.

Usage:
    python scripts/nnunet_raw.py --studies ../shared/data/brain_tumor_progression_dicom --raw-root nnUNet_raw
    python scripts/nnunet_raw.py --studies STUDY1 STUDY2 --raw-root R --dataset-id 502 --channels T1post FLAIR
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))

from monai_unet.data.channels import ChannelError, match_study_channels, nnunet_case_channels  # noqa: E402

DEFAULT_CHANNELS: dict[str, list[str]] = {
    "T1pre": ["*T1prereg*", "*T1pre*"],
    "T1post": ["*T1post*"],
    "T2": ["*T2reg*", "*T2*"],
    "FLAIR": ["*FLAIR*"],
}
DEFAULT_LABEL = ["*MaskTumor*"]
LABELS = {"background": 0, "tumour": 1}
FILE_ENDING = ".nii.gz"

__all__ = [
    "DEFAULT_CHANNELS",
    "DEFAULT_LABEL",
    "Case",
    "convert",
    "dataset_folder_name",
    "find_inputs",
    "parse_channels",
    "patient_splits",
    "read_dicom_series",
]


@dataclass
class Case:
    """One training case of the raw dataset: its id, patient, channel images and mask (SimpleITK images or files)."""

    case_id: str
    patient: str
    channels: list[str]
    images: list  # sitk.Image or Path (a NIfTI file copied or linked as it is)
    label: object  # sitk.Image or Path
    sources: dict[str, str] = field(default_factory=dict)


def dataset_folder_name(dataset_id: int, name: str) -> str:
    """nnU-Net's folder name, ``Dataset501_Name`` (ids have at least three digits)."""
    if not 1 <= dataset_id <= 999:
        raise ValueError(f"nnU-Net dataset ids are 1..999, got {dataset_id}.")
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise ValueError(f"dataset name {name!r}: use letters, digits, '-' and '_' only.")
    return f"Dataset{dataset_id:03d}_{name}"


def parse_channels(options: Sequence[str] | None) -> dict[str, list[str]]:
    """``--channels`` entries (``NAME`` for a default channel, or ``NAME=PATTERN[|PATTERN]``) -> name -> patterns, in
    the order given; ``None`` or empty: :data:`DEFAULT_CHANNELS`."""
    if not options:
        return {k: list(v) for k, v in DEFAULT_CHANNELS.items()}
    out: dict[str, list[str]] = {}
    for option in options:
        name, sep, pattern = option.partition("=")
        name = name.strip()
        if sep:
            patterns = [p.strip() for p in pattern.split("|") if p.strip()]
        else:
            patterns = next((v for k, v in DEFAULT_CHANNELS.items() if k.lower() == name.lower()), [])
            name = next((k for k in DEFAULT_CHANNELS if k.lower() == name.lower()), name)
        if not name or not patterns:
            raise ValueError(
                f"--channels {option!r}: give a default channel ({', '.join(DEFAULT_CHANNELS)}) or NAME=PATTERN."
            )
        if name in out:
            raise ValueError(f"--channels names {name!r} twice.")
        out[name] = patterns
    return out


# ------------------------------------------------------------------------------------------------------ finding inputs


def _is_nifti_dataset(folder: Path) -> bool:
    return (folder / "imagesTr").is_dir() and (folder / "labelsTr").is_dir()


def _is_study(folder: Path) -> bool:
    """A folder whose subfolders hold DICOM files (one folder per series)."""
    from monai_unet.io.dicom import looks_like_dicom

    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        first = next((f for f in sorted(sub.iterdir()) if f.is_file() and not f.name.startswith(".")), None)
        if first is not None and looks_like_dicom(first):
            return True
    return False


def find_inputs(paths: Sequence[str | os.PathLike], max_depth: int = 3) -> list[Path]:
    """Study folders and NIfTI datasets given, or found up to ``max_depth`` below a folder given (sorted).

    Raises:
        FileNotFoundError: a path does not exist, or holds neither kind of input.
    """
    found: list[Path] = []
    for path in paths:
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"{path} is not a folder (give DICOM study folders or nnU-Net-style datasets).")
        if _is_nifti_dataset(path) or _is_study(path):
            found.append(path)
            continue
        below = []
        for current, dirs, _ in os.walk(path):
            depth = len(Path(current).relative_to(path).parts)
            dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if depth < max_depth else []
            here = Path(current)
            if here != path and (_is_nifti_dataset(here) or _is_study(here)):
                below.append(here)
                dirs[:] = []
        if not below:
            raise FileNotFoundError(
                f"{path} holds no DICOM study (a folder of series folders) and no imagesTr/labelsTr dataset "
                f"within {max_depth} levels."
            )
        found.extend(sorted(below))
    return found


# ----------------------------------------------------------------------------------------------------- reading DICOM


def read_dicom_series(folder: str | os.PathLike):
    """The one DICOM series in ``folder`` as a SimpleITK image (slices ordered along the normal, checked for gaps
    and truncated slices by :func:`monai_unet.io.dicom.assemble_series`)."""
    import SimpleITK as sitk

    from monai_unet.io.dicom import assemble_series, find_dicom_series

    series = find_dicom_series(folder)
    if len(series) != 1:
        what = "no DICOM image series" if not series else f"{len(series)} series ({', '.join(s.uid for s in series)})"
        raise ValueError(f"Series folder {folder} holds {what}; one series per folder is expected.")
    assembled = assemble_series([*series[0].files, *series[0].unreadable])
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in assembled.files])
    return reader.Execute()


def _dicom_date(value: str) -> str | None:
    value = value.strip()
    return f"{value[:4]}-{value[4:6]}-{value[6:8]}" if re.fullmatch(r"\d{8}", value) else None


def _safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "-", text).strip("-") or "case"


def study_case_id(study: Path, series_folder: Path) -> tuple[str, str]:
    """``(case id, patient)``: ``PatientID_YYYY-MM-DD`` from a header of ``series_folder``, else from the folder names
    (TCIA's ``MM-DD-YYYY-...`` study folders below a patient folder)."""
    from monai_unet.io.dicom import read_header

    first = next(f for f in sorted(series_folder.iterdir()) if f.is_file() and not f.name.startswith("."))
    ds = read_header(first)
    patient = str(getattr(ds, "PatientID", "") or "").strip() if ds is not None else ""
    date = _dicom_date(str(getattr(ds, "StudyDate", "") or "")) if ds is not None else None
    if not patient:
        patient = study.parent.name
    if date is None:
        m = re.match(r"(\d{2})-(\d{2})-(\d{4})", study.name)
        date = f"{m[3]}-{m[1]}-{m[2]}" if m else study.name
    patient = _safe_id(patient).replace("_", "-")
    return f"{patient}_{_safe_id(date)}", patient


def _same_grid(a, b, tolerance: float = 1e-3) -> bool:
    """Same size, spacing and direction, and origins closer than ``tolerance`` of the smallest spacing."""
    import numpy as np

    if a.GetSize() != b.GetSize():
        return False
    spacing_a, spacing_b = np.array(a.GetSpacing()), np.array(b.GetSpacing())
    return (
        bool(np.allclose(spacing_a, spacing_b, rtol=1e-4, atol=0))
        and bool(np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-4))
        and float(np.linalg.norm(np.subtract(a.GetOrigin(), b.GetOrigin()))) < tolerance * float(spacing_a.min())
    )


def _grid_text(image) -> str:
    spacing = ", ".join(f"{s:.4g}" for s in image.GetSpacing())
    origin = ", ".join(f"{o:.2f}" for o in image.GetOrigin())
    return f"size {image.GetSize()}, spacing ({spacing}), origin ({origin})"


def _onto_grid(image, reference, label: bool, what: str):
    """``image`` with ``reference``'s geometry: the same grid up to rounding gets the reference's header exactly
    (nnU-Net checks geometry strictly); another grid is resampled (nearest for the mask) with a warning."""
    import SimpleITK as sitk

    if _same_grid(image, reference):
        out = sitk.Image(image)
        out.CopyInformation(reference)
        return out
    warnings.warn(
        f"{what} is not on the first channel's grid ({_grid_text(image)} vs {_grid_text(reference)}): resampled "
        f"onto it ({'nearest neighbour' if label else 'linear'}).",
        stacklevel=2,
    )
    interpolator = sitk.sitkNearestNeighbor if label else sitk.sitkLinear
    return sitk.Resample(image, reference, sitk.Transform(), interpolator, 0, image.GetPixelID())


def _binary_mask(image):
    """``!= 0 -> 1`` as uint8, same geometry."""
    import SimpleITK as sitk

    mask = sitk.Cast(sitk.NotEqual(image, 0), sitk.sitkUInt8)
    mask.CopyInformation(image)
    return mask


def dicom_case(study: Path, channels: Mapping[str, Sequence[str]], label: Sequence[str]) -> Case:
    """Read one DICOM study's channel series and mask series (see the module docstring)."""
    images, label_folder = match_study_channels(study, channels, list(label))
    assert label_folder is not None
    case_id, patient = study_case_id(study, Path(label_folder))
    read = [read_dicom_series(f) for f in images]
    reference = read[0]
    names = list(channels)
    read = [reference] + [
        _onto_grid(img, reference, False, f"{study.name}: channel {name} ({Path(f).name})")
        for name, img, f in zip(names[1:], read[1:], images[1:])
    ]
    mask = _binary_mask(read_dicom_series(label_folder))
    mask = _onto_grid(mask, reference, True, f"{study.name}: mask ({Path(label_folder).name})")
    sources = {name: str(f) for name, f in zip(names, images)}
    sources["label"] = str(label_folder)
    return Case(case_id, patient, names, read, mask, sources)


# ---------------------------------------------------------------------------------------------------- NIfTI datasets


def _strip_ending(name: str) -> str:
    for ending in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"):
        if name.endswith(ending):
            return name[: -len(ending)]
    return Path(name).stem


def nifti_cases(dataset: Path, channels: Mapping[str, Sequence[str]] | None) -> list[Case]:
    """The cases of an imagesTr/labelsTr dataset; with ``channels`` (names), the source's ``dataset.json``
    ``channel_names`` picks and orders them."""
    import SimpleITK as sitk

    labels = {_strip_ending(p.name): p for p in sorted((dataset / "labelsTr").iterdir()) if p.is_file()}
    labels = {k: v for k, v in labels.items() if not k.startswith(".")}
    images = {_strip_ending(p.name): p for p in sorted((dataset / "imagesTr").iterdir()) if p.is_file()}
    images = {k: v for k, v in images.items() if not k.startswith(".")}
    grouped = nnunet_case_channels(images, cases=list(labels))
    meta = json.loads((dataset / "dataset.json").read_text()) if (dataset / "dataset.json").is_file() else {}
    source_names = meta.get("channel_names") or meta.get("modality") or {}
    count = len(next(iter(grouped.values()))) if grouped else 0
    names = [str(source_names.get(str(i), f"channel{i}")) for i in range(count)]
    picked = list(range(count))
    if channels is not None:
        lower = [n.lower() for n in names]
        missing = [c for c in channels if c.lower() not in lower]
        if missing:
            raise ChannelError(f"Dataset {dataset}: no channel {missing} among its channel_names {names}.")
        picked = [lower.index(c.lower()) for c in channels]
        names = [names[i] for i in picked]
    cases = []
    for case_id, files in grouped.items():
        if case_id not in labels:
            raise FileNotFoundError(f"Dataset {dataset}: case {case_id} has no label in labelsTr.")
        chosen = [files[i] for i in picked]
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(chosen[0]))
        reader.ReadImageInformation()
        label_image = sitk.ReadImage(str(labels[case_id]))
        values = set(sitk.GetArrayViewFromImage(label_image).ravel().tolist())
        label: object = labels[case_id]
        if not values <= {0, 1} or not _same_grid(label_image, reader) or not str(label).endswith(FILE_ENDING):
            if not values <= {0, 1}:
                warnings.warn(f"{labels[case_id]}: label values {sorted(values)[:8]} made {{0, 1}}", stacklevel=2)
            label = _onto_grid(_binary_mask(label_image), sitk.ReadImage(str(chosen[0])), True, str(labels[case_id]))
        sources = {name: str(f) for name, f in zip(names, chosen)}
        sources["label"] = str(labels[case_id])
        cases.append(Case(case_id, case_id, names, list(chosen), label, sources))
    return cases


# ------------------------------------------------------------------------------------------------------------ writing


def patient_splits(cases: Sequence[Case], folds: int = 5) -> list[dict[str, list[str]]]:
    """Folds of whole patients (``min(folds, patients)`` folds, patients dealt round-robin in sorted order)."""
    patients = sorted({c.patient for c in cases})
    n = min(folds, len(patients))
    groups = [patients[i::n] for i in range(n)]
    return [
        {
            "train": sorted(c.case_id for c in cases if c.patient not in group),
            "val": sorted(c.case_id for c in cases if c.patient in group),
        }
        for group in groups
    ]


def _put(item, destination: Path, link: bool) -> None:
    import SimpleITK as sitk

    if isinstance(item, Path):
        if not item.name.endswith(FILE_ENDING):
            sitk.WriteImage(sitk.ReadImage(str(item)), str(destination), True)
        elif link:
            destination.symlink_to(item.resolve())
        else:
            shutil.copyfile(item, destination)
    else:
        sitk.WriteImage(item, str(destination), True)


def convert(
    inputs: Sequence[str | os.PathLike],
    raw_root: str | os.PathLike,
    dataset_id: int = 501,
    name: str = "BrainTumorProgression",
    channels: Mapping[str, Sequence[str]] | None = None,
    label: Sequence[str] = tuple(DEFAULT_LABEL),
    link: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write the nnU-Net v2 raw dataset ``raw_root/DatasetXXX_name`` from DICOM studies and/or NIfTI datasets.

    Args:
        inputs: DICOM study folders, imagesTr/labelsTr datasets, or folders to search for either.
        raw_root: the ``nnUNet_raw`` folder.
        dataset_id: nnU-Net's dataset id (another ``DatasetXXX_*`` folder with this id in ``raw_root`` is an error).
        name: the dataset name.
        channels: channel name -> patterns, in file order (``_0000``, ``_0001``...); ``None``:
            :data:`DEFAULT_CHANNELS`.
        label: patterns of the mask series.
        link: symbolically link NIfTI inputs instead of copying them.
        overwrite: replace an existing dataset of this name.

    Returns:
        The dataset folder.

    Raises:
        FileExistsError: the dataset exists (without ``overwrite``), or another folder has the same id.
        ChannelError: a study lacks a channel or the mask (the message names the channel and the series found).
    """
    from monai_unet.io.atomic import atomic_output

    raw_root = Path(raw_root)
    folder = raw_root / dataset_folder_name(dataset_id, name)
    if folder.exists() and not overwrite:
        raise FileExistsError(f"{folder} exists; pass --overwrite (overwrite=True) to replace it.")
    prefix = f"Dataset{dataset_id:03d}_"
    clash = (
        [p.name for p in raw_root.glob(prefix + "*") if p.is_dir() and p.name != folder.name]
        if raw_root.is_dir()
        else []
    )
    if clash:
        raise FileExistsError(f"{raw_root} already holds dataset id {dataset_id} as {clash}; nnU-Net needs unique ids.")
    wanted = dict(channels) if channels is not None else parse_channels(None)
    cases: list[Case] = []
    for path in find_inputs(inputs):
        if _is_nifti_dataset(path):
            cases.extend(nifti_cases(path, wanted if channels is not None else None))
        else:
            cases.append(dicom_case(path, wanted, label))
    if not cases:
        raise FileNotFoundError(f"no case found in {[str(p) for p in inputs]}")
    cases.sort(key=lambda c: c.case_id)
    names = cases[0].channels
    for case in cases:
        if case.channels != names:
            raise ChannelError(f"case {case.case_id} has channels {case.channels}, the first case {names}.")
    seen: dict[str, int] = {}
    for case in cases:  # two studies of one patient on one day: _2, _3...
        seen[case.case_id] = seen.get(case.case_id, 0) + 1
        if seen[case.case_id] > 1:
            case.case_id = f"{case.case_id}-{seen[case.case_id]}"

    dataset_json = {
        "channel_names": {str(i): n for i, n in enumerate(names)},
        "labels": dict(LABELS),
        "numTraining": len(cases),
        "file_ending": FILE_ENDING,
        "name": name,
        "description": "converted by monai-unet scripts/nnunet_raw.py; 'sources' lists each case's series/files",
        "patients": {c.case_id: c.patient for c in cases},
        "sources": {c.case_id: c.sources for c in cases},
    }
    with atomic_output(folder) as tmp:
        (tmp / "imagesTr").mkdir(parents=True)
        (tmp / "labelsTr").mkdir()
        for case in cases:
            for i, image in enumerate(case.images):
                _put(image, tmp / "imagesTr" / f"{case.case_id}_{i:04d}{FILE_ENDING}", link)
            _put(case.label, tmp / "labelsTr" / f"{case.case_id}{FILE_ENDING}", link)
        (tmp / "dataset.json").write_text(json.dumps(dataset_json, indent=2) + "\n")
        if len({c.patient for c in cases}) > 1:
            (tmp / "splits_final.json").write_text(json.dumps(patient_splits(cases), indent=2) + "\n")
    return folder


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--studies", nargs="+", required=True, help="DICOM study folders, NIfTI datasets, or parents")
    p.add_argument("--raw-root", type=Path, required=True, help="the nnUNet_raw folder to write into")
    p.add_argument("--dataset-id", type=int, default=501)
    p.add_argument("--name", default="BrainTumorProgression")
    p.add_argument(
        "--channels",
        nargs="+",
        default=None,
        metavar="NAME[=PATTERN]",
        help=f"channels in file order (default {' '.join(DEFAULT_CHANNELS)})",
    )
    p.add_argument("--label", default="|".join(DEFAULT_LABEL), help="pattern(s) of the mask series, '|'-separated")
    p.add_argument("--link", action="store_true", help="link NIfTI inputs instead of copying them")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    args = p.parse_args(argv)
    try:
        folder = convert(
            args.studies,
            args.raw_root,
            args.dataset_id,
            args.name,
            parse_channels(args.channels) if args.channels else None,
            [s for s in args.label.split("|") if s],
            args.link,
            args.overwrite,
        )
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        raise SystemExit(f"error: {e}") from None
    meta = json.loads((folder / "dataset.json").read_text())
    print(f"{folder}: {meta['numTraining']} cases, channels {meta['channel_names']}")
    for case_id, patient in meta["patients"].items():
        print(f"  {case_id} (patient {patient})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
