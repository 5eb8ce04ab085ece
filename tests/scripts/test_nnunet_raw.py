"""scripts/nnunet_raw.py on real DICOM studies, and compare_nnunet_plan.py's axis mapping and table (no nnU-Net)."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

import compare_nnunet_plan  # noqa: E402
import nnunet_raw  # noqa: E402

BTP = "brain_tumor_progression_dicom"
STUDIES = {  # one study of each patient (the two smaller grids)
    "PGBM-001_1991-11-19": "PGBM-001/11-19-1991-FH-HEADBrain Protocols-40993",
    "PGBM-003_1995-03-29": "PGBM-003/03-29-1995-Mr Rcbv Sequence-Fh-44184",
}
ORDER = ("*T1prereg*", "*T1post*", "*T2reg*", "*FLAIRreg*")  # the documented default channel order


def dicom_series(folder: Path) -> sitk.Image:
    """The series as SimpleITK reads it on its own (GDCM's file order)."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def ras_affine(image: sitk.Image) -> np.ndarray:
    """The RAS affine of a SimpleITK (LPS) image."""
    affine = np.eye(4)
    affine[:3, :3] = np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())
    affine[:3, 3] = image.GetOrigin()
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine


@pytest.fixture(scope="module")
def converted(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("nnunet_raw")
    studies = [str(shared_data / BTP / s) for s in STUDIES.values()]
    assert nnunet_raw.main(["--studies", *studies, "--raw-root", str(root), "--dataset-id", "7", "--name", "BTP"]) == 0
    return root, root / "Dataset007_BTP"


def test_dicom_studies_become_an_nnunet_dataset_on_the_series_grid(shared_data: Path, converted) -> None:
    _, dataset = converted
    meta = json.loads((dataset / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "T1pre", "1": "T1post", "2": "T2", "3": "FLAIR"}
    assert meta["labels"] == {"background": 0, "tumour": 1}
    assert meta["numTraining"] == 2 and meta["file_ending"] == ".nii.gz"
    assert meta["patients"] == {"PGBM-001_1991-11-19": "PGBM-001", "PGBM-003_1995-03-29": "PGBM-003"}
    # the two patients are never on both sides of a fold
    splits = json.loads((dataset / "splits_final.json").read_text())
    assert sorted((s["train"], s["val"]) for s in splits) == [
        (["PGBM-001_1991-11-19"], ["PGBM-003_1995-03-29"]),
        (["PGBM-003_1995-03-29"], ["PGBM-001_1991-11-19"]),
    ]
    assert sorted(p.name for p in (dataset / "labelsTr").iterdir()) == [f"{c}.nii.gz" for c in STUDIES]
    for case, study in STUDIES.items():
        study_dir = shared_data / BTP / study
        files = sorted((dataset / "imagesTr").glob(f"{case}_*.nii.gz"))
        assert [f.name for f in files] == [f"{case}_{i:04d}.nii.gz" for i in range(4)]
        for path, pattern in zip(files, ORDER):
            series = dicom_series(next(study_dir.glob(pattern)))
            written = sitk.ReadImage(str(path))
            assert written.GetSize() == series.GetSize()
            np.testing.assert_allclose(written.GetSpacing(), series.GetSpacing(), rtol=1e-5)
            np.testing.assert_allclose(written.GetOrigin(), series.GetOrigin(), atol=1e-3)
            np.testing.assert_allclose(written.GetDirection(), series.GetDirection(), atol=1e-5)
            assert not np.allclose(series.GetDirection(), np.eye(3).ravel(), atol=1e-3)  # oblique: a real check
            np.testing.assert_array_equal(sitk.GetArrayViewFromImage(written), sitk.GetArrayViewFromImage(series))
            np.testing.assert_allclose(nib.load(path).affine, ras_affine(series), atol=1e-3)
        label = sitk.ReadImage(str(dataset / "labelsTr" / f"{case}.nii.gz"))
        mask = dicom_series(next(study_dir.glob("*MaskTumor*")))
        values = sitk.GetArrayViewFromImage(label)
        assert label.GetPixelID() == sitk.sitkUInt8 and set(np.unique(values)) == {0, 1}
        np.testing.assert_array_equal(values, sitk.GetArrayViewFromImage(mask) != 0)
        np.testing.assert_allclose(
            nib.load(dataset / "labelsTr" / f"{case}.nii.gz").affine, ras_affine(mask), atol=1e-3
        )


def test_no_overwrite_without_the_flag_and_channels_pick_and_order(shared_data: Path, converted) -> None:
    root, dataset = converted
    study = str(shared_data / BTP / STUDIES["PGBM-001_1991-11-19"])
    args = ["--studies", study, "--raw-root", str(root), "--dataset-id", "7", "--name", "BTP"]
    before = (dataset / "dataset.json").stat().st_mtime_ns
    with pytest.raises(SystemExit, match=r"exists; pass --overwrite"):
        nnunet_raw.main(args)
    assert (dataset / "dataset.json").stat().st_mtime_ns == before
    with pytest.raises(SystemExit, match=r"already holds dataset id 7"):  # nnU-Net needs unique ids
        nnunet_raw.main([*args[:-1], "Other"])
    # a second dataset from the first one (NIfTI input, linked), with two channels in another order
    copy = root / "Dataset008_Two"
    nifti = ["--studies", str(dataset), "--raw-root", str(root), "--dataset-id", "8", "--name", "Two"]
    assert nnunet_raw.main([*nifti, "--channels", "FLAIR", "T1post", "--link"]) == 0
    meta = json.loads((copy / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "FLAIR", "1": "T1post"} and meta["numTraining"] == 2
    first = copy / "imagesTr" / "PGBM-001_1991-11-19_0000.nii.gz"
    assert first.is_symlink() and first.resolve() == (dataset / "imagesTr" / "PGBM-001_1991-11-19_0003.nii.gz")
    assert sorted(p.name for p in (copy / "imagesTr").iterdir()) == [
        f"{c}_{i:04d}.nii.gz" for c in STUDIES for i in range(2)
    ]
    # --overwrite replaces it (here with the DICOM study's T1post alone); no temporary is left behind
    assert nnunet_raw.main([*args[:-3], "8", "--name", "Two", "--channels", "T1post", "--overwrite"]) == 0
    meta = json.loads((copy / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "T1post"} and meta["numTraining"] == 1
    assert sorted(p.name for p in root.iterdir()) == ["Dataset007_BTP", "Dataset008_Two"]


def test_a_study_missing_a_channel_fails_naming_it_and_the_series_found(shared_data: Path, tmp_path: Path) -> None:
    source = shared_data / BTP / STUDIES["PGBM-003_1995-03-29"]
    study = tmp_path / "PGBM-003" / "03-29-1995-study"
    study.mkdir(parents=True)
    for series in source.iterdir():
        if "FLAIR" not in series.name:
            (study / series.name).symlink_to(series)
    with pytest.raises(SystemExit, match=r"no series for channel 'FLAIR'.*series found: .*T1post.*MaskTumor"):
        nnunet_raw.main(["--studies", str(study), "--raw-root", str(tmp_path / "raw")])
    assert not (tmp_path / "raw").exists() or not any((tmp_path / "raw").iterdir())
    # without FLAIR among the channels the study converts
    assert nnunet_raw.main(["--studies", str(study), "--raw-root", str(tmp_path / "raw"), "--channels", "T1post"]) == 0


def test_compare_maps_nnunet_axes_to_ras(converted) -> None:
    _, dataset = converted
    ras_of_array, per_case = compare_nnunet_plan.ras_axes_of_images(dataset)
    # axial oblique studies: slices -> z, rows -> y, columns -> x
    assert ras_of_array == [2, 1, 0] and set(map(tuple, per_case.values())) == {(2, 1, 0)}
    assert compare_nnunet_plan.to_ras([24, 320, 270], [2, 1, 0]) == [270, 320, 24]
    assert compare_nnunet_plan.to_ras([24, 320, 270], [1, 2, 0]) == [270, 24, 320]  # coronal slices


PLANS = {  # nnU-Net 2.8.1's plan of the four Brain-Tumor-Progression studies, abridged (array axes z, y, x)
    "transpose_forward": [0, 1, 2],
    "configurations": {
        "3d_fullres": {
            "batch_size": 2,
            "patch_size": [24, 256, 256],
            "median_image_size_in_voxels": [24.0, 320.0, 270.0],
            "spacing": [6.5, 0.6875, 0.6875],
            "normalization_schemes": ["ZScoreNormalization"] * 2,
            "use_mask_for_norm": [False, False],
            "architecture": {
                "arch_kwargs": {
                    "n_stages": 5,
                    "features_per_stage": [32, 64, 128, 256, 320],
                    "kernel_sizes": [[1, 3, 3], [1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3]],
                    "strides": [[1, 1, 1], [1, 2, 2], [1, 2, 2], [1, 2, 2], [2, 2, 2]],
                    "n_conv_per_stage": [2] * 5,
                    "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                    "nonlin": "torch.nn.LeakyReLU",
                }
            },
        },
        "2d": {
            "batch_size": 4,
            "patch_size": [320, 256],
            "median_image_size_in_voxels": [320.0, 270.0],
            "spacing": [0.6875, 0.6875],
            "normalization_schemes": ["ZScoreNormalization"] * 2,
            "use_mask_for_norm": [False, False],
            "architecture": {
                "arch_kwargs": {
                    "n_stages": 2,
                    "features_per_stage": [32, 64],
                    "kernel_sizes": [[3, 3], [3, 3]],
                    "strides": [[1, 1], [2, 2]],
                    "n_conv_per_stage": [2, 2],
                }
            },
        },
    },
}
OURS = {  # a PLAN.json: x, y, z
    "target_spacing": [0.6875, 0.6875, 6.5],
    "features": [16, 32, 64, 128],
    "kernel_size": [[3, 3, 1], [3, 3, 1], [3, 3, 1], [3, 3, 3]],
    "strides": [[1, 1, 1], [2, 2, 1], [2, 2, 1], [2, 2, 1]],
    "tile_size": [188, 188, 24],
    "infer_tile_size": [356, 356, 28],
    "batch_size": 2,
    "normalization": [{"scheme": "zscore", "nonzero": False}] * 2,
    "oversample_foreground": 0.33,
    "plan_info": {"median_shape": [270, 320, 24]},
}


def test_compare_table_from_a_hand_written_plan() -> None:
    nn = compare_nnunet_plan.nnunet_summary(PLANS, "3d_fullres", [2, 1, 0])
    assert nn["axes"] == "x, y, z" and nn["spacing"] == [0.6875, 0.6875, 6.5] and nn["patch_size"] == [256, 256, 24]
    assert nn["strides"][1] == [2, 2, 1] and nn["kernel_size"][0] == [3, 3, 1] and nn["divisible_by"] == [16, 16, 2]
    ours = compare_nnunet_plan.our_summary(OURS)
    assert ours["halo"] == [44, 44, 2] and ours["output_size"] == [100, 100, 20]
    assert ours["infer_output_size"] == [268, 268, 24]
    rows = {r["item"].split(" (")[0]: r for r in compare_nnunet_plan.compare(nn, ours)}
    assert rows["target spacing"]["agree"] == "yes" and rows["target spacing"]["reason"] == ""
    assert rows["median image"]["agree"] == "yes"
    assert rows["levels"]["agree"] == "no" and rows["levels"]["reason"] == "valid padding + CPU budget"
    assert rows["strides per level"]["agree"] == "first 4/5" and rows["strides per level"]["reason"] == "fewer levels"
    assert rows["features per level"]["reason"] == "CPU budget"
    assert rows["patch / training tile"]["ours"] == "188 x 188 x 24"
    assert rows["patch / training tile"]["reason"] == "valid padding + CPU budget"
    assert "multiple of 16 x 16 x 2" in rows["patch / training tile"]["detail"]
    assert rows["output per training tile"]["ours"] == "100 x 100 x 20"
    for item in (
        "batch size",
        "input channels",
        "normalisation per channel",
        "foreground oversampling",
        "convolutions per level",
    ):
        assert rows[item]["agree"] == "yes", item
    assert rows["normalisation per channel"]["ours"] == "zscore, zscore"
    # a different target spacing or normalisation is no consequence of valid padding: it is flagged
    odd = compare_nnunet_plan.compare(nn, {**ours, "spacing": [1.0, 1.0, 6.5]})
    assert odd[0]["agree"] == "no" and odd[0]["reason"] == "unexpected"
    masked = compare_nnunet_plan.our_summary({**OURS, "normalization": [{"scheme": "zscore", "nonzero": True}] * 2})
    odd = {r["item"]: r for r in compare_nnunet_plan.compare(nn, masked)}["normalisation per channel"]
    assert odd["ours"] == "zscore in nonzero mask, zscore in nonzero mask" and odd["reason"] == "unexpected"
    table = compare_nnunet_plan.format_table(compare_nnunet_plan.compare(nn, ours))
    lines = table.splitlines()
    assert lines[0].split() == ["item", "nnU-Net", "ours", "agree", "reason"]
    assert any(line.startswith("patch / training tile") and "256 x 256 x 24" in line for line in lines)
    assert "[1] each level of unpadded convolutions adds to the halo (ours: 44 x 44 x 2 per side)" in table
    # 2d: the in-plane axes, nnU-Net only
    nn2 = compare_nnunet_plan.nnunet_summary(PLANS, "2d", [2, 1, 0])
    assert nn2["axes"] == "x, y" and nn2["patch_size"] == [256, 320] and nn2["batch_size"] == 4
    rows2 = compare_nnunet_plan.compare(nn2, None)
    assert all(r["ours"] == "-" for r in rows2)
    assert compare_nnunet_plan.format_table(rows2).splitlines()[0].split() == ["item", "nnU-Net"]


def test_channels_and_mask_are_put_on_the_first_channels_grid() -> None:
    reference = sitk.Image(8, 8, 4, sitk.sitkInt16)
    reference.SetSpacing((0.7, 0.7, 6.5))
    reference.SetOrigin((10.0, -5.0, 3.0))
    reference.SetDirection((0.998, 0.0628, 0.0, -0.0628, 0.998, 0.0, 0.0, 0.0, 1.0))
    rounded = sitk.Image(reference)  # the same grid up to DICOM's decimal strings: the reference's header, no warning
    rounded.SetOrigin((10.0001, -5.0, 3.0))
    rounded[2, 3, 1] = 7
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = nnunet_raw._onto_grid(rounded, reference, False, "T2")
    assert out.GetOrigin() == reference.GetOrigin() and out[2, 3, 1] == 7
    shifted = nnunet_raw._binary_mask(rounded)  # one voxel over: resampled (nearest) with a warning
    shifted.SetOrigin(reference.TransformIndexToPhysicalPoint((1, 0, 0)))
    with pytest.warns(UserWarning, match=r"mask is not on the first channel's grid .*nearest neighbour"):
        out = nnunet_raw._onto_grid(shifted, reference, True, "mask")
    assert out.GetSize() == reference.GetSize() and out.GetPixelID() == sitk.sitkUInt8
    assert out[3, 3, 1] == 1 and int(sitk.GetArrayViewFromImage(out).sum()) == 1
