"""The fingerprint of small synthetic NIfTI datasets, and every bad-data error naming the case."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _plan_data import write_case, write_dataset_json

from monai_unet.planning import PlanError, PlanOptions, fingerprint_dataset, make_plan


def test_fingerprint_reads_cases_as_the_bundle_does(tiny_dataset: Path) -> None:
    fp = fingerprint_dataset(tiny_dataset, "volume", out_channels=2)
    assert [c.image for c in fp.cases] == [f"imagesTr/case_{n}_0000.nii.gz" for n in "abc"]
    assert fp.cases[0].label == "labelsTr/case_a.nii.gz"
    assert fp.spacings == [(1.0, 1.0, 4.0), (1.0, 1.0, 4.0), (0.8, 0.8, 4.0)]
    assert fp.shapes == [(40, 36, 12), (44, 40, 13), (50, 45, 12)]
    assert fp.channels == 1 and fp.modalities == ["unknown"]
    case = fp.cases[0]
    assert case.class_voxels == (40 * 36 * 12 - 4 * 5 * 2, 4 * 5 * 2)
    assert case.foreground_box == (4, 5, 2) and case.foreground_box_mm == (4.0, 5.0, 8.0)
    assert case.shape_after_crop == case.shape and case.relative_size_after_crop == 1.0
    stats = case.intensity[0]
    assert stats is not None and stats["voxels"] == 40 and 90 < stats["mean"] < 110 and stats["std"] > 0
    assert stats["p00_5"] <= stats["mean"] <= stats["p99_5"]
    pooled = fp.foreground_stats()[0]
    assert pooled is not None and pooled["samples"] == 3 * 40
    # the compact JSON has no samples and round-trips through json
    js = fp.to_json()
    assert js["class_voxels"] == [sum(c.class_voxels[0] for c in fp.cases), 3 * 40]
    assert "samples" not in js["cases"][0] and js["cases"][0]["foreground_box_mm"] == [4.0, 5.0, 8.0]


def test_nonzero_crop_detects_skull_stripping(tmp_path: Path) -> None:
    root = tmp_path / "stripped"
    for i in range(3):
        write_case(root, f"s{i}", (40, 40, 10), border=8, seed=i)
    fp = fingerprint_dataset(root, "volume", out_channels=2)
    assert fp.cases[0].shape_after_crop == (24, 24, 10)
    assert fp.median_relative_size_after_crop == pytest.approx(24 * 24 / (40 * 40))
    plan = make_plan("unet3d_volume", root, PlanOptions.for_device("cpu", memory_mb=256), measure=False)
    assert plan["normalization"] == [{"scheme": "zscore", "nonzero": True}]
    assert "skull-stripped" in plan["plan_info"]["reasons"]["normalization"]


def test_ct_from_dataset_json_gets_ct_normalisation(tmp_path: Path) -> None:
    root = tmp_path / "ct"
    for i in range(3):
        write_case(root, f"ct{i}", (32, 32, 10), spacing=(1.0, 1.0, 1.0), seed=i)
    write_dataset_json(root, {"0": "CT"})
    plan = make_plan("unet3d_volume", root, PlanOptions.for_device("cpu", memory_mb=256), measure=False)
    (scheme,) = plan["normalization"]
    stats = plan["plan_info"]["fingerprint"]["foreground_intensity"][0]
    assert scheme["scheme"] == "ct" and scheme["clip"] == [stats["p00_5"], stats["p99_5"]]
    assert scheme["mean"] == stats["mean"] and scheme["std"] == stats["std"]
    assert plan["plan_info"]["fingerprint"]["modalities"] == ["CT"]


def test_multichannel_cases(tmp_path: Path) -> None:
    root = tmp_path / "two"
    for i in range(2):
        write_case(root, f"m{i}", (32, 32, 8), channels=2, seed=i)
    fp = fingerprint_dataset(root, "volume", out_channels=2)
    assert fp.channels == 2 and len(fp.foreground_stats()) == 2
    assert fp.cases[0].image.endswith("m0_0000.nii.gz;imagesTr/m0_0001.nii.gz")


# ----------------------------------------------------------------------------------------------------- bad data


def test_different_channel_counts_name_the_case(tmp_path: Path) -> None:
    root = tmp_path / "mixed"
    write_case(root, "one", (32, 32, 8), channels=2, seed=0)
    write_case(root, "two", (32, 32, 8), channels=1, seed=1)
    items = [
        {
            "image": [str(root / "imagesTr" / f"one_000{c}.nii.gz") for c in range(2)],
            "label": str(root / "labelsTr/one.nii.gz"),
        },
        {"image": str(root / "imagesTr" / "two_0000.nii.gz"), "label": str(root / "labelsTr/two.nii.gz")},
    ]
    with pytest.raises(PlanError, match=r"two_0000.nii.gz has 1 channel\(s\) but .*one_0000.nii.gz.* 2"):
        fingerprint_dataset(root, "volume", 2, items=items)
    # listed from the folder, nnU-Net's channel files say it first (the case is named too)
    with pytest.raises(PlanError, match="two"):
        fingerprint_dataset(root, "volume", 2)


def test_label_on_another_grid_names_the_case(tmp_path: Path) -> None:
    root = tmp_path / "grid"
    write_case(root, "fine", (32, 32, 8), seed=0)
    write_case(root, "bad", (32, 32, 8), seed=1, label_shape=(30, 32, 8))
    with pytest.raises(PlanError, match=r"bad_0000.nii.gz: the image is 32x32x8 .*labelsTr/bad.nii.gz is 30x32x8"):
        fingerprint_dataset(root, "volume", 2)
    root = tmp_path / "shifted"
    write_case(root, "moved", (32, 32, 8), seed=1, label_shift=5.0)
    with pytest.raises(PlanError, match=r"moved_0000.nii.gz: the image and its label labelsTr/moved.nii.gz are on"):
        fingerprint_dataset(root, "volume", 2)


def test_label_values_outside_the_classes_name_the_file(tmp_path: Path) -> None:
    root = tmp_path / "classes"
    write_case(root, "ok", (32, 32, 8), seed=0)
    write_case(root, "three", (32, 32, 8), seed=1, label_values=(1, 2))
    with pytest.raises(PlanError, match=r"labelsTr/three.nii.gz has values 0, 1, 2; .*out_channels is 2"):
        fingerprint_dataset(root, "volume", 2)
    assert fingerprint_dataset(root, "volume", 3).cases[1].class_voxels[2] > 0  # fine with 3 classes


def test_empty_dataset_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    with pytest.raises(PlanError, match="No volumes"):
        fingerprint_dataset(root, "volume", 2)
    with pytest.raises(PlanError, match="no cases"):
        fingerprint_dataset(root, "volume", 2, items=[])


def test_unreadable_case_names_the_file(tmp_path: Path) -> None:
    root = tmp_path / "broken"
    write_case(root, "good", (32, 32, 8), seed=0)
    write_case(root, "zz", (32, 32, 8), seed=1)
    (root / "imagesTr" / "zz_0000.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(PlanError, match=r"zz_0000\.nii\.gz"):
        fingerprint_dataset(root, "volume", 2)


def test_case_smaller_than_the_smallest_valid_tile_is_padded_and_said(tmp_path: Path) -> None:
    root = tmp_path / "small"
    for i, shape in enumerate([(48, 48, 16), (48, 48, 16), (48, 48, 16), (48, 48, 3)]):
        write_case(root, f"c{i}", shape, spacing=(1.0, 1.0, 1.0), seed=i)
    plan = make_plan("unet3d_volume", root, PlanOptions.for_device("cpu", memory_mb=512), measure=False)
    notes = " ".join(plan["plan_info"]["notes"])
    assert "c3_0000.nii.gz is 48x48x3 voxels" in notes and "smaller than the smallest valid tile" in notes
    assert "mirror-pads (SpatialPadd" in notes
    assert np.all(np.asarray(plan["tile_size"]) >= 3)
