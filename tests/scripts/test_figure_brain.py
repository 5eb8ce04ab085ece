"""The brain figure of the README: four sequences, mask and prediction of one real study on its slice."""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

import figure_brain  # noqa: E402
from eval_brain_dicom import LABEL_SERIES, load_ras  # noqa: E402


def test_figure_of_a_real_study_scores_its_prediction(shared_data: Path, tmp_path: Path) -> None:
    study = sorted((shared_data / "brain_tumor_progression_dicom" / "PGBM-001").iterdir())[0]
    mask = load_ras(next(study.glob(LABEL_SERIES))) > 0
    half = mask.copy()
    half[: int(np.median(np.nonzero(mask)[0]))] = False  # a prediction that misses part of the tumour
    assert 0 < half.sum() < mask.sum()
    pred = tmp_path / "pred.nii.gz"
    nib.save(nib.Nifti1Image(half.astype(np.uint8), np.eye(4)), pred)  # RAS already: identity affine

    out = tmp_path / "fig.png"
    result = figure_brain.figure(study, pred, out)
    assert result["slice"] == int(np.argmax(mask.sum(axis=(0, 1))))
    assert result["dice"] == pytest.approx(2 * half.sum() / (half.sum() + mask.sum()))
    img = np.asarray(Image.open(out).convert("RGB"))
    assert img.shape[1] > 6 * figure_brain.PANEL * 0.6  # six panels side by side
    green = (img[..., 0] == 0) & (img[..., 1] == 255) & (img[..., 2] == 0)
    red = (img[..., 0] == 255) & (img[..., 1] == 0) & (img[..., 2] == 0)
    assert green.sum() > red.sum() > 0  # the mask outline is longer than the half prediction's

    wrong = tmp_path / "wrong.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((5, 5, 5), np.uint8), np.eye(4)), wrong)
    with pytest.raises(SystemExit, match="not on the grid"):
        figure_brain.figure(study, wrong, tmp_path / "no.png")
