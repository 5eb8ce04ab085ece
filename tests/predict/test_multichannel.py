"""Several named input channels: a DICOM study's series, nnU-Net's channel files; grids; a missing channel."""

from __future__ import annotations

import io
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from predict_helpers import FEATURES, oblique_affine, smooth_volume

from monai_unet.predict import predict

STUDIES = "brain_tumor_progression_dicom"
CHANNELS = {"T1post": "*T1post*", "FLAIR": "*FLAIR*"}


OVERRIDES = {"features": FEATURES["unet3d_volume"], "network_def#in_channels": 2, "channels": CHANNELS}


@pytest.fixture(scope="module")
def checkpoint(runner) -> Path:
    return runner.checkpoint


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    """The 3D bundle with two named channels (narrow random weights)."""
    from monai_unet.predict.runner import BundleRunner

    overrides = OVERRIDES
    path = tmp_path_factory.mktemp("models") / "two.pt"
    torch.manual_seed(0)
    from monai.bundle import ConfigParser

    from monai_unet.bundles import bundle_config, find_bundle

    parser = ConfigParser()
    parser.read_config(str(bundle_config(find_bundle("unet3d_volume"), "inference")))
    for k, v in overrides.items():
        parser[k] = v
    torch.save(parser.get_parsed_content("network_def").state_dict(), path)
    return BundleRunner("unet3d_volume", checkpoint=path, device="cpu", overrides=overrides)


def run(runner, inputs, out, **kwargs):
    stream = io.StringIO()
    results = predict(
        runner.bundle, [str(i) for i in inputs], out, runner=runner, progress=False, stream=stream, **kwargs
    )
    return results, stream.getvalue()


def test_a_study_is_one_input_on_its_first_channels_grid(runner, shared_data: Path, tmp_path: Path) -> None:
    import SimpleITK as sitk

    study = sorted(p for p in (shared_data / STUDIES / "PGBM-001").iterdir() if p.is_dir())[0]
    results, _ = run(runner, [study], tmp_path / "out")
    assert [r.status for r in results] == ["done"], [r.reason for r in results]
    assert results[0].key == str(study)
    out = sitk.ReadImage(str(results[0].outputs[0]))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(next(study.glob("*T1post*")))))
    t1 = reader.Execute()
    assert out.GetSize() == t1.GetSize()
    np.testing.assert_allclose(out.GetOrigin(), t1.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(out.GetDirection(), t1.GetDirection(), atol=1e-5)


def test_a_study_missing_a_channel_fails_naming_it_and_the_others_finish(
    runner, shared_data: Path, tmp_path: Path
) -> None:
    studies = sorted(p for p in (shared_data / STUDIES / "PGBM-001").iterdir() if p.is_dir())
    root = tmp_path / "cohort"
    for k, study in enumerate(studies):
        for series in study.iterdir():
            if k == 1 and "FLAIR" in series.name:
                continue
            (root / study.name / series.name).mkdir(parents=True)
            for f in series.iterdir():
                os.symlink(f, root / study.name / series.name / f.name)
    results, _ = run(runner, [root], tmp_path / "out")
    by_status = {r.status: r for r in results}
    assert sorted(r.status for r in results) == ["done", "failed"]
    failed = by_status["failed"]
    assert "channel 'FLAIR'" in failed.reason and "T1post" in failed.reason and studies[1].name in failed.key


def test_nnunet_channel_files_on_two_grids(runner, tmp_path: Path, capsys) -> None:
    """CASE_0000 / CASE_0001 are one input; a channel on another grid is resampled onto the first with a warning."""
    folder = tmp_path / "imagesTs"
    folder.mkdir()
    aff = oblique_affine()
    nib.save(nib.Nifti1Image(smooth_volume((40, 36, 12)), aff), folder / "case_0000.nii.gz")
    coarse = aff.copy()
    coarse[:3, :3] *= 2.0
    nib.save(nib.Nifti1Image(smooth_volume((20, 18, 6), seed=1), coarse), folder / "case_0001.nii.gz")
    nib.save(nib.Nifti1Image(smooth_volume((40, 36, 12)), aff), folder / "lonely_0000.nii.gz")
    results, _ = run(runner, [folder], tmp_path / "out")
    by_key = {Path(r.key).name: r for r in results}
    assert by_key["case"].status == "done", by_key["case"].reason
    out = nib.load(by_key["case"].outputs[0])
    assert out.shape == (40, 36, 12)
    np.testing.assert_allclose(out.affine, aff, atol=1e-4)
    warned = capsys.readouterr().err
    assert "channel FLAIR (case_0001.nii.gz) is on another grid" in warned and "resampled onto T1post's grid" in warned
    assert "Setting affine" not in warned
    # a case with one of its two channel files fails naming what the bundle takes; the other case is done
    assert by_key["lonely"].status == "failed"
    assert "takes 2 (T1post, FLAIR) as lonely_0000 ... lonely_0001" in by_key["lonely"].reason


def test_cli_takes_config_overlays_and_channel_patterns(checkpoint: Path, shared_data: Path, tmp_path: Path) -> None:
    """``--config`` merges an overlay over inference.json as training does; ``--channel`` overrides a pattern."""
    import json

    from monai_unet.cli import main

    overlay = tmp_path / "two_channels.json"
    overlay.write_text(json.dumps(OVERRIDES))
    study = sorted(p for p in (shared_data / STUDIES / "PGBM-003").iterdir() if p.is_dir())[0]
    out = tmp_path / "out"
    args = ["predict", "--bundle", "unet3d_volume", "--checkpoint", str(checkpoint), "--config", str(overlay)]
    assert main([*args, "--input", str(study), "--output", str(out), "--no-progress"]) == 0
    assert len(list(out.rglob("*_seg.nii.gz"))) == 1
    # a pattern that matches nothing: the study fails naming the channel (exit 1, the batch itself ran)
    bad = ["--channel", "FLAIR=*DWI*", "--input", str(study), "--output", str(tmp_path / "bad"), "--no-progress"]
    assert main([*args, *bad]) == 1
    # a channel the bundle does not have: nothing runs (exit 2)
    assert main([*args, "--channel", "DWI=*dwi*", "--input", str(study), "--output", str(tmp_path / "x")]) == 2


def test_a_4d_nifti_holds_the_channels(runner, tmp_path: Path) -> None:
    """MSD style: one file (X, Y, Z, C) is one input and gives the label of the same channels as separate files;
    a 4D file with another channel count fails naming both counts."""
    folder = tmp_path / "in"
    folder.mkdir()
    aff = oblique_affine()
    a, b = smooth_volume((40, 36, 12)), smooth_volume((40, 36, 12), seed=1)
    nib.save(nib.Nifti1Image(np.stack([a, b], axis=-1), aff), folder / "stacked.nii.gz")
    nib.save(nib.Nifti1Image(np.stack([a, b, a], axis=-1), aff), folder / "three.nii.gz")
    split = tmp_path / "split"
    split.mkdir()
    nib.save(nib.Nifti1Image(a, aff), split / "same_0000.nii.gz")
    nib.save(nib.Nifti1Image(b, aff), split / "same_0001.nii.gz")
    results, _ = run(runner, [folder, split], tmp_path / "out")
    by_key = {Path(r.key).name.removesuffix(".nii.gz"): r for r in results}
    assert by_key["stacked"].status == "done", by_key["stacked"].reason
    out = nib.load(by_key["stacked"].outputs[0])
    assert out.shape == (40, 36, 12)
    np.testing.assert_allclose(out.affine, aff, atol=1e-4)
    same = nib.load(by_key["same"].outputs[0])
    np.testing.assert_array_equal(np.asarray(out.dataobj), np.asarray(same.dataobj))
    assert by_key["three"].status == "failed"
    assert "3 channels along its last axis, but the bundle takes 2 (T1post, FLAIR)" in by_key["three"].reason
