"""Named input channels: DICOM studies matched by series, nnU-Net's channel files, the datalists that use them."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from monai_unet.data import volume_datalist
from monai_unet.data.channels import (
    ChannelError,
    match_study_channels,
    nnunet_case_channels,
    parse_channel_options,
    series_description,
)

DICOM = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "brain_tumor_progression_dicom"
FOUR = {"T1pre": "*T1prereg*", "T1post": "*T1post*", "T2": "*T2reg*", "FLAIR": "*FLAIR*"}
needs_dicom = pytest.mark.skipif(not DICOM.is_dir(), reason=f"needs the shared DICOM studies at {DICOM}")


@needs_dicom
def test_real_studies_give_one_series_per_channel_in_order() -> None:
    items = volume_datalist(DICOM, channels=FOUR, label_series="*MaskTumor*")
    assert len(items) == 4
    for item in items:
        assert [Path(p).name.split("-")[1] for p in item["image"]] == ["T1prereg", "T1post", "T2reg", "FLAIRreg"]
        assert "MaskTumor" in Path(item["label"]).name
    # one channel keeps the single-path items of before
    single = volume_datalist(DICOM, channels={"T1post": "*T1post*"})
    assert [i["image"] for i in single] == [i["image"][1] for i in items]


@needs_dicom
def test_series_description_matches_when_folder_names_do_not(tmp_path: Path) -> None:
    study = next(p for p in sorted((DICOM / "PGBM-001").iterdir()) if p.is_dir())
    t1post = next(p for p in study.iterdir() if "T1post" in p.name)
    desc = series_description(t1post)
    assert desc  # the TCIA series carry a description
    copy = tmp_path / "study"
    (copy / "series_a").mkdir(parents=True)
    for f in sorted(t1post.iterdir())[:2]:
        shutil.copy(f, copy / "series_a" / f.name)
    images, label = match_study_channels(copy, {"post": desc})
    assert images == [str(copy / "series_a")] and label is None


@needs_dicom
def test_a_missing_channel_is_named_with_the_series_found(tmp_path: Path) -> None:
    study = next(p for p in sorted((DICOM / "PGBM-001").iterdir()) if p.is_dir())
    copy = tmp_path / "PGBM-009" / "study"
    for series in study.iterdir():
        if "FLAIR" in series.name:
            continue
        (copy / series.name).mkdir(parents=True)
        shutil.copy(sorted(series.iterdir())[0], copy / series.name)
    with pytest.raises(ChannelError, match=r"no series for channel 'FLAIR'.*series found: .*T1post"):
        match_study_channels(copy, FOUR, "*MaskTumor*")
    with pytest.raises(ChannelError, match=str(copy)):
        volume_datalist(tmp_path, channels=FOUR)


def test_nnunet_channel_files_group_into_cases(tmp_path: Path) -> None:
    files = {f"case{i}_{c:04d}": tmp_path / f"case{i}_{c:04d}.nii.gz" for i in range(2) for c in range(2)}
    assert nnunet_case_channels(files, 2, cases=["case0", "case1"]) == {
        f"case{i}": [tmp_path / f"case{i}_{c:04d}.nii.gz" for c in range(2)] for i in range(2)
    }
    with pytest.raises(ChannelError, match="'case1' has 1 channel file"):
        nnunet_case_channels({k: v for k, v in files.items() if k != "case1_0001"})
    with pytest.raises(ChannelError, match="without gaps"):
        nnunet_case_channels({"a_0000": tmp_path / "a", "a_0002": tmp_path / "b"})
    # a name that is itself a label's is not split at its last four digits
    assert nnunet_case_channels({"scan_2019": tmp_path / "s"}, cases=["scan_2019"]) == {"scan_2019": [tmp_path / "s"]}


def test_nnunet_dataset_loads_as_channels(tmp_path: Path) -> None:
    from monai.transforms import LoadImaged

    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    affine = np.diag([0.7, 0.7, 6.5, 1.0])
    for case in ("a", "b"):
        for c in range(3):
            vol = np.full((8, 9, 4), c, np.float32)
            nib.save(nib.Nifti1Image(vol, affine), tmp_path / "imagesTr" / f"{case}_{c:04d}.nii.gz")
        nib.save(nib.Nifti1Image(np.zeros((8, 9, 4), np.uint8), affine), tmp_path / "labelsTr" / f"{case}.nii.gz")
    items = volume_datalist(tmp_path, channels={"x": "*", "y": "*", "z": "*"})
    assert [len(i["image"]) for i in items] == [3, 3]
    data = LoadImaged(["image", "label"], ensure_channel_first=True, image_only=True)(items[0])
    assert data["image"].shape == (3, 8, 9, 4) and data["label"].shape == (1, 8, 9, 4)
    assert [float(data["image"][c].mean()) for c in range(3)] == [0.0, 1.0, 2.0]
    with pytest.raises(ChannelError, match="3 channel file"):
        volume_datalist(tmp_path, channels={"x": "*", "y": "*"})


def test_channel_options_override_the_bundle_patterns() -> None:
    assert parse_channel_options(["FLAIR=*flair*|*FL*"], FOUR)["FLAIR"] == ["*flair*", "*FL*"]
    with pytest.raises(ValueError, match="bundle's channels"):
        parse_channel_options(["DWI=*dwi*"], FOUR)
    with pytest.raises(ValueError, match="NAME=PATTERN"):
        parse_channel_options(["FLAIR"], FOUR)


def test_an_nnunet_v2_dataset_json_does_not_hide_the_case_folders(tmp_path: Path) -> None:
    """nnU-Net v2's dataset.json has channel names and labels but no list of cases: the folders are read."""
    import json

    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    for c in range(2):
        nib.save(
            nib.Nifti1Image(np.zeros((4, 4, 2), np.float32), np.eye(4)), tmp_path / "imagesTr" / f"a_{c:04d}.nii.gz"
        )
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 2), np.uint8), np.eye(4)), tmp_path / "labelsTr" / "a.nii.gz")
    meta = {"channel_names": {"0": "T1", "1": "FLAIR"}, "labels": {"background": 0, "tumour": 1}, "numTraining": 1}
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    items = volume_datalist(tmp_path, channels={"T1": "*", "FLAIR": "*"})
    assert [len(i["image"]) for i in items] == [2]
