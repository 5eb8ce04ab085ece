"""DICOM series discovery on the real studies: one volume per series, ITK's grouping."""

from __future__ import annotations

import os

from monai_unet.io.dicom import find_dicom_series, looks_like_dicom


def test_series_of_the_real_studies(shared_data, tmp_path):
    study = sorted(p for p in (shared_data / "brain_tumor_progression_dicom").glob("*/*") if p.is_dir())[0]
    folders = sorted(study.iterdir())
    for folder in folders:
        series = find_dicom_series(folder)
        assert len(series) == 1 and len(series[0].files) == len(list(folder.glob("*.dcm")))
        assert all(looks_like_dicom(f) for f in series[0].files)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for k, folder in enumerate(folders):
        for f in folder.glob("*.dcm"):
            os.symlink(f, mixed / f"s{k}_{f.name}")
    found = find_dicom_series(mixed)
    assert len(found) == len(folders) == 5  # four MR sequences and the mask
    assert {len(s.files) for s in found} == {len(list(f.glob("*.dcm"))) for f in folders}
    assert find_dicom_series(tmp_path / "mixed" / "..") == []  # subfolders are not searched
