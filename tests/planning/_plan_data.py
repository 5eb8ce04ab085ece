"""Helpers of the planning tests: small synthetic NIfTI datasets written with nibabel."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np


def write_case(
    root: Path,
    name: str,
    shape: Sequence[int] = (40, 36, 12),
    spacing: Sequence[float] = (1.0, 1.0, 4.0),
    channels: int = 1,
    border: int = 0,
    label_values: Sequence[int] = (1,),
    seed: int = 0,
    label_shape: Sequence[int] | None = None,
    label_shift: float = 0.0,
) -> None:
    """One case in nnU-Net's layout: ``imagesTr/<name>_000C.nii.gz`` per channel and ``labelsTr/<name>.nii.gz``.

    The image is noise around 100 with a zero ``border`` (skull-stripped when large); the label has a box of each
    of ``label_values``; ``label_shape``/``label_shift`` put the label on another grid.
    """
    rng = np.random.default_rng(seed)
    affine = np.diag([*spacing, 1.0])
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    for c in range(channels):
        img = (100 + 10 * c + 5 * rng.standard_normal(shape)).astype(np.float32)
        if border:
            mask = np.zeros(shape, bool)
            mask[border:-border, border:-border, :] = True
            img[~mask] = 0
        nib.save(nib.Nifti1Image(img, affine), root / "imagesTr" / f"{name}_{c:04d}.nii.gz")
    lshape = tuple(label_shape or shape)
    label = np.zeros(lshape, np.uint8)
    for i, v in enumerate(label_values):
        x0 = lshape[0] // 2 - 3 + 2 * i
        label[x0 : x0 + 4, lshape[1] // 2 - 2 : lshape[1] // 2 + 3, lshape[2] // 2 - 1 : lshape[2] // 2 + 1] = v
    laffine = affine.copy()
    laffine[0, 3] += label_shift
    nib.save(nib.Nifti1Image(label, laffine), root / "labelsTr" / f"{name}.nii.gz")


def write_dataset_json(root: Path, modality: dict[str, str]) -> None:
    """An MSD ``dataset.json`` listing the single-channel cases of ``root`` with their ``modality``."""
    training = [
        {"image": f"imagesTr/{p.name}", "label": f"labelsTr/{p.name.replace('_0000', '')}"}
        for p in sorted((root / "imagesTr").glob("*_0000.nii.gz"))
    ]
    (root / "dataset.json").write_text(json.dumps({"modality": modality, "training": training}))
