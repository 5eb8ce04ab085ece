"""The dataset fingerprint: what planning needs to know of every case, read as the bundle reads it.

Each case is loaded with the bundle's own loading (``LoadImaged`` with
:func:`monai_unet.data.readers.load_image_kwargs`, channel first, ``Orientationd("RAS")`` in 3D; the membrane
label mapped to classes as the 2D bundle maps it), so spacings and axes are those the bundle's transforms see.
Per case: spacing, shape, shape after cropping to the nonzero region (nnU-Net's crop; MONAI's
``generate_spatial_bounding_box``), class voxel counts, the foreground's bounding box, and per channel the
intensities inside the foreground (statistics, and a deterministic sample for the dataset's percentiles).

Bad data raises :class:`PlanError` naming the file: cases with different channel counts, image and label on
different grids, label values outside the bundle's classes, an empty dataset.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CaseFingerprint",
    "DatasetFingerprint",
    "PlanError",
    "channel_modalities",
    "fingerprint_case",
    "fingerprint_dataset",
    "load_case",
]

SAMPLES_PER_CASE = 10_000  # foreground voxels per case and channel kept for the dataset's percentiles
_SEED = 1234  # nnU-Net's seed for the same sampling


class PlanError(ValueError):
    """The data cannot be planned for (the message names the case and says what to fix)."""


def _rel(path: str | os.PathLike, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(root))
    except ValueError:
        return str(path)


def _paths(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]


@dataclass
class CaseFingerprint:
    """One case as the bundle sees it (axes in RAS order for 3D, spacing in mm).

    Attributes:
        image, label: the files (relative to the dataset folder); ``image`` is ``;``-joined for several channels.
        channels: input channels.
        spacing, shape: per spatial axis.
        shape_after_crop: the shape of the nonzero region's bounding box (all channels).
        class_voxels: voxel count of each class ``0 .. out_channels - 1``.
        foreground_box: the foreground's (label > 0) bounding-box size in voxels, ``None`` without foreground.
        intensity: per channel, statistics of the foreground voxels (``mean``, ``std``, ``p00_5``, ``p99_5``,
            ``min``, ``max``, ``voxels``), ``None`` without foreground.
        samples: per channel, up to :data:`SAMPLES_PER_CASE` foreground intensities (not saved in the plan).
    """

    image: str
    label: str
    channels: int
    spacing: tuple[float, ...]
    shape: tuple[int, ...]
    shape_after_crop: tuple[int, ...]
    class_voxels: tuple[int, ...]
    foreground_box: tuple[int, ...] | None
    intensity: list[dict[str, float] | None]
    samples: list[np.ndarray] = field(default_factory=list, repr=False)

    @property
    def relative_size_after_crop(self) -> float:
        """Voxels of the nonzero region's bounding box / voxels of the image (nnU-Net: < 0.75 = skull-stripped)."""
        return float(np.prod(self.shape_after_crop) / max(np.prod(self.shape), 1))

    @property
    def foreground_box_mm(self) -> tuple[float, ...] | None:
        if self.foreground_box is None:
            return None
        return tuple(float(b * s) for b, s in zip(self.foreground_box, self.spacing))

    def to_json(self) -> dict[str, Any]:
        """Compact JSON values (no samples)."""
        box_mm = self.foreground_box_mm
        return {
            "image": self.image,
            "label": self.label,
            "spacing": [round(s, 5) for s in self.spacing],
            "shape": list(self.shape),
            "shape_after_crop": list(self.shape_after_crop),
            "relative_size_after_crop": round(self.relative_size_after_crop, 4),
            "class_voxels": list(self.class_voxels),
            "foreground_box": None if self.foreground_box is None else list(self.foreground_box),
            "foreground_box_mm": None if box_mm is None else [round(v, 1) for v in box_mm],
            "intensity": [None if s is None else {k: _round(v) for k, v in s.items()} for s in self.intensity],
        }


def _round(value: float) -> float | int:
    """6 significant digits (ints stay ints): the plan's JSON stays short and the same on every machine."""
    if isinstance(value, (int, np.integer)):
        return int(value)
    return float(f"{float(value):.6g}")


@dataclass
class DatasetFingerprint:
    """Every case's fingerprint, and the dataset's modalities (one per channel)."""

    cases: list[CaseFingerprint]
    modalities: list[str]

    @property
    def channels(self) -> int:
        return self.cases[0].channels

    @property
    def spacings(self) -> list[tuple[float, ...]]:
        return [c.spacing for c in self.cases]

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        return [c.shape for c in self.cases]

    @property
    def median_relative_size_after_crop(self) -> float:
        return float(np.median([c.relative_size_after_crop for c in self.cases]))

    def foreground_stats(self) -> list[dict[str, float | int] | None]:
        """Per channel, mean/std/percentiles of the pooled foreground samples of all cases (nnU-Net's
        ``foreground_intensity_properties_per_channel``)."""
        out: list[dict[str, float | int] | None] = []
        for c in range(self.channels):
            parts = [case.samples[c] for case in self.cases if case.samples and case.samples[c].size]
            if not parts:
                out.append(None)
                continue
            v = np.concatenate(parts).astype(np.float64)
            lo, hi = np.percentile(v, [0.5, 99.5])
            out.append(
                {
                    "mean": _round(v.mean()),
                    "std": _round(v.std()),
                    "p00_5": _round(lo),
                    "p99_5": _round(hi),
                    "min": _round(v.min()),
                    "max": _round(v.max()),
                    "samples": int(v.size),
                }
            )
        return out

    def class_voxels(self) -> list[int]:
        return [int(v) for v in np.sum([c.class_voxels for c in self.cases], axis=0)]

    def to_json(self) -> dict[str, Any]:
        """Compact JSON: the dataset's summary and every case (no samples)."""
        return {
            "cases": [c.to_json() for c in self.cases],
            "modalities": list(self.modalities),
            "class_voxels": self.class_voxels(),
            "median_relative_size_after_crop": round(self.median_relative_size_after_crop, 4),
            "foreground_intensity": self.foreground_stats(),
        }


def channel_modalities(dataset_dir: str | os.PathLike, image: Any, channels: int) -> list[str]:
    """The modality of each input channel: dataset.json's ``modality`` (MSD) or ``channel_names`` (nnU-Net v2),
    else a DICOM series' Modality (0008,0060), else ``"unknown"``."""
    dataset_json = Path(dataset_dir) / "dataset.json"
    if dataset_json.is_file():
        meta = json.loads(dataset_json.read_text())
        names = meta.get("modality") or meta.get("channel_names")
        if isinstance(names, Mapping) and names:
            return [str(names.get(str(c), names.get(c, "unknown"))) for c in range(channels)]
    from monai_unet.io.dicom import read_header

    out = []
    for path in _paths(image)[:channels]:
        modality = "unknown"
        folder = Path(path)
        if folder.is_dir():
            for f in sorted(folder.iterdir()):
                ds = read_header(f) if f.is_file() else None
                if ds is not None:
                    modality = str(getattr(ds, "Modality", "") or "unknown")
                    break
        out.append(modality)
    return out + ["unknown"] * (channels - len(out))


def load_case(item: Mapping[str, Any], kind: str) -> tuple[Any, Any]:
    """Load ``item``'s image and label as the bundle of ``kind`` does: channel-first MetaTensors ``(C, *S)`` and
    ``(1, *S)``, RAS in 3D, the membrane label as classes.

    Raises:
        PlanError: a file cannot be read (the message names it).
    """
    from monai.transforms import LoadImaged, Orientationd

    from monai_unet.data import isbi_membrane_label, load_image_kwargs

    loader = LoadImaged(keys=["image", "label"], **load_image_kwargs(kind))
    try:
        data = loader(dict(item))
    except Exception as e:
        raise PlanError(
            f"cannot read case {_paths(item['image'])} / label {item['label']}: {type(e).__name__}: "
            f"{' '.join(str(e).split())[:300]}"
        ) from e
    if kind == "volume":
        data = Orientationd(keys=["image", "label"], axcodes="RAS", labels=None)(data)
    else:
        data["label"] = isbi_membrane_label(data["label"])
    return data["image"], data["label"]


def _check_grids(image: Any, label: Any, name: str, label_name: str, dims: int) -> None:
    if image.ndim - 1 != dims:
        raise PlanError(f"case {name}: the image has {image.ndim - 1} spatial dimensions, the bundle plans {dims}D.")
    if label.shape[0] != 1:
        raise PlanError(f"case {name}: its label {label_name} has {label.shape[0]} channels; a label map has one.")
    if tuple(image.shape[1:]) != tuple(label.shape[1:]):
        raise PlanError(
            f"case {name}: the image is {'x'.join(map(str, image.shape[1:]))} voxels but its label {label_name} is "
            f"{'x'.join(map(str, label.shape[1:]))}: image and label must be on one grid (resample the label onto "
            "the image)."
        )
    a = np.asarray(image.affine, dtype=np.float64)
    b = np.asarray(label.affine, dtype=np.float64)
    scale = max(float(np.abs(a[:dims, :dims]).max()), 1e-6)
    if not np.allclose(a, b, atol=1e-3 * scale + 1e-4):
        raise PlanError(
            f"case {name}: the image and its label {label_name} are on different grids (same size, but origin or "
            f"direction differ: max affine difference {np.abs(a - b).max():.4g} mm); resample the label onto the "
            "image."
        )


def _check_label(values: np.ndarray, label_name: str, out_channels: int) -> None:
    bad = [v for v in values if v != np.round(v) or v < 0 or v >= out_channels]
    if bad:
        shown = ", ".join(f"{v:g}" for v in values[:12])
        raise PlanError(
            f"label {label_name} has values {shown}{'...' if len(values) > 12 else ''}; the bundle's out_channels is "
            f"{out_channels}, so labels must be the integers 0..{out_channels - 1}. Relabel the file, or plan for "
            f"{int(max(values)) + 1} classes (out_channels)."
        )


def fingerprint_case(
    item: Mapping[str, Any], kind: str, out_channels: int, root: str | os.PathLike = ".", seed: int = _SEED
) -> CaseFingerprint:
    """Load one case as the bundle does (:func:`load_case`), check it, and fingerprint it.

    Args:
        item: ``{"image": path or paths (channels), "label": path}``.
        kind: ``"volume"`` (3D) or ``"membrane"`` (2D).
        out_channels: the bundle's classes; label values must be ``0 .. out_channels - 1``.
        root: the dataset folder (file names are given relative to it).
        seed: seed of the foreground sample.

    Raises:
        PlanError: unreadable files, image and label on different grids, label values outside the classes.
    """
    from monai.transforms.utils import generate_spatial_bounding_box

    root = Path(root).resolve()
    name = ";".join(_rel(p, root) for p in _paths(item["image"]))
    label_name = _rel(item["label"], root)
    image, label = load_case(item, kind)
    dims = 3 if kind == "volume" else 2
    _check_grids(image, label, name, label_name, dims)
    lab = np.asarray(label[0].detach().cpu().numpy())
    values = np.unique(lab)
    _check_label(values, label_name, out_channels)
    lab = lab.astype(np.int64)
    img = np.asarray(image.detach().cpu().numpy(), dtype=np.float32)

    shape = tuple(int(s) for s in img.shape[1:])
    start, end = generate_spatial_bounding_box(img, select_fn=lambda x: x != 0)
    cropped = tuple(max(0, int(e) - int(s)) for s, e in zip(start, end))
    fg = lab > 0
    box = None
    if fg.any():
        fs, fe = generate_spatial_bounding_box(fg[None], select_fn=lambda x: x)
        box = tuple(int(e) - int(s) for s, e in zip(fs, fe))
    rng = np.random.default_rng(seed)
    intensity: list[dict[str, float] | None] = []
    samples = []
    for c in range(img.shape[0]):
        v = img[c][fg]
        if v.size == 0:
            intensity.append(None)
            samples.append(np.zeros(0, np.float32))
            continue
        lo, hi = np.percentile(v, [0.5, 99.5])
        intensity.append(
            {
                "mean": float(v.mean()),
                "std": float(v.std()),
                "p00_5": float(lo),
                "p99_5": float(hi),
                "min": float(v.min()),
                "max": float(v.max()),
                "voxels": int(v.size),
            }
        )
        samples.append(rng.choice(v, SAMPLES_PER_CASE, replace=False) if v.size > SAMPLES_PER_CASE else v)
    # 5 significant digits: an oblique affine's column norms differ from the header's spacing in the 7th
    pixdim = [float(f"{s:.5g}") for s in np.asarray(image.pixdim, dtype=np.float64)[:dims]]
    return CaseFingerprint(
        image=name,
        label=label_name,
        channels=int(img.shape[0]),
        spacing=tuple(pixdim),
        shape=shape,
        shape_after_crop=cropped,
        class_voxels=tuple(int(n) for n in np.bincount(lab.ravel(), minlength=out_channels)[:out_channels]),
        foreground_box=box,
        intensity=intensity,
        samples=samples,
    )


def fingerprint_dataset(
    dataset_dir: str | os.PathLike,
    kind: str,
    out_channels: int,
    channels: Mapping[str, Any] | None = None,
    items: Sequence[Mapping[str, Any]] | None = None,
    progress: Any = None,
) -> DatasetFingerprint:
    """Fingerprint every case of ``dataset_dir`` (:func:`monai_unet.data.datalist`, as the bundle lists it).

    Args:
        dataset_dir: the dataset folder.
        kind: ``"volume"`` or ``"membrane"``.
        out_channels: the bundle's classes.
        channels: the bundle's named input channels (``{name: pattern}``), ``None`` for one channel.
        items: the datalist, when already made.
        progress: called with a line per case (e.g. ``print``), or ``None``.

    Raises:
        PlanError: an empty dataset, cases with different channel counts, or a bad case (see
            :func:`fingerprint_case`).
    """
    from monai_unet.data import datalist

    root = Path(dataset_dir).resolve()
    if items is None:
        kwargs = {"channels": channels} if channels and kind == "volume" else {}
        try:
            items = datalist(root, kind, **kwargs)
        except (FileNotFoundError, ValueError) as e:
            raise PlanError(str(e)) from e
    if not items:
        raise PlanError(f"dataset {root} has no cases (no image/label pairs): nothing to plan from.")
    cases = []
    for i, item in enumerate(items):
        case = fingerprint_case(item, kind, out_channels, root, seed=_SEED + i)
        if cases and case.channels != cases[0].channels:
            raise PlanError(
                f"case {case.image} has {case.channels} channel(s) but {cases[0].image} (and the cases before it) "
                f"{cases[0].channels}: every case needs the same input channels."
            )
        cases.append(case)
        if progress is not None:
            progress(
                f"  case {i + 1}/{len(items)} {case.image}: {'x'.join(map(str, case.shape))} voxels at "
                f"{' x '.join(f'{s:.4g}' for s in case.spacing)} mm"
            )
    modalities = channel_modalities(root, items[0]["image"], cases[0].channels)
    return DatasetFingerprint(cases=cases, modalities=modalities)
