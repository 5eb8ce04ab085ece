"""Every bad input is reported with its file and reason, and the other inputs of the batch still finish."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from predict_helpers import oblique_affine, smooth_volume

from monai_unet.cli import main
from monai_unet.predict import predict


def run(runner, inputs, out, **kwargs):
    stream = io.StringIO()
    results = predict(
        runner.bundle, [str(i) for i in inputs], out, runner=runner, progress=False, stream=stream, **kwargs
    )
    return {Path(r.key.split("#")[0]).name: r for r in results}, stream.getvalue()


@pytest.fixture(scope="module")
def bad_volumes(tmp_path_factory, shared_data) -> Path:
    root = tmp_path_factory.mktemp("bad3d")
    good = nib.Nifti1Image(smooth_volume((24, 20, 8)), oblique_affine())
    nib.save(good, root / "good.nii.gz")
    raw = (root / "good.nii.gz").read_bytes()
    (root / "truncated.nii.gz").write_bytes(raw[: len(raw) // 2])
    nib.save(good, root / "truncated_raw.nii")
    with open(root / "truncated_raw.nii", "r+b") as f:
        f.truncate(352 + 100)  # header intact, voxels cut short
    (root / "text.nii.gz").write_text("this is not an image\n")
    (root / "zero.nii.gz").write_bytes(b"")
    nib.save(nib.Nifti1Image(np.zeros((24, 20, 8, 3), np.int16), np.eye(4)), root / "four_d.nii.gz")
    nan = smooth_volume((24, 20, 8)).astype(np.float32)
    nan[3, 4, 5], nan[1, 1, 1] = np.nan, np.inf
    nib.save(nib.Nifti1Image(nan, oblique_affine()), root / "nan.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((24, 0, 8), np.int16), np.eye(4)), root / "empty.nii.gz")
    (root / "empty_dicom").mkdir()
    (root / "broken_dicom").mkdir()
    (root / "broken_dicom" / "slice1.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"garbage" * 20)
    Image.fromarray(np.zeros((40, 30), np.uint8)).save(root / "flat.png")  # 2D image to a 3D bundle
    (root / "notes.xyz").write_text("not an image")
    return root


def test_bad_volumes_fail_with_reasons_and_the_good_one_finishes(runners, bad_volumes, tmp_path):
    names = sorted(p.name for p in bad_volumes.iterdir())
    inputs = [bad_volumes / n for n in names] + [tmp_path / "missing.nii.gz"]
    results, log = run(runners["unet3d_volume"], inputs, tmp_path / "out")
    assert results["good.nii.gz"].status == "done"
    assert (tmp_path / "out" / "good_seg.nii.gz").is_file()
    expect = {
        "truncated.nii.gz": "cannot read",
        "truncated_raw.nii": "cannot read",
        "text.nii.gz": "cannot read",
        "zero.nii.gz": "empty file",
        "four_d.nii.gz": "4D",
        "nan.nii.gz": "2 NaN/infinite",
        "empty.nii.gz": "empty",
        "empty_dicom": "holds no image",
        "broken_dicom": "no readable DICOM series",
        "flat.png": "2 spatial dimensions",
        "notes.xyz": "not a supported input",
        "missing.nii.gz": "does not exist",
    }
    for name, words in expect.items():
        r = results[name]
        assert r.status == "failed", (name, r)
        assert words in r.reason, (name, r.reason)
        assert name in log  # the summary table names the file
    assert "1 done, 0 skipped, 12 failed" in log
    written = sorted(p.name for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert written == ["good_seg.nii.gz"]  # nothing half-written, no temporaries


def test_bad_2d_inputs(runners, tmp_path, shared_data):
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 60), dtype=np.uint8)).save(src / "good.png")
    Image.fromarray(rng.integers(0, 255, (64, 60, 3), dtype=np.uint8)).save(src / "rgb.png")
    (src / "truncated.png").write_bytes((src / "good.png").read_bytes()[:200])
    (src / "text.tif").write_text("not a tiff")
    import tifffile

    tifffile.imwrite(src / "nan.tif", np.full((32, 32), np.nan, np.float32))
    results, _ = run(runners["unet2d_membrane"], [src], tmp_path / "out")
    assert results["good.png"].status == "done"
    assert "3 channels" in results["rgb.png"].reason
    assert "cannot read" in results["truncated.png"].reason
    assert "cannot read" in results["text.tif"].reason
    assert "NaN/infinite" in results["nan.tif"].reason
    results, _ = run(runners["unet2d_membrane"], [src / "good.png", shared_data / "nrrd_brain"], tmp_path / "out")
    assert "segments 2D images" in results["brain1_image.nrrd"].reason
    # the same through the lazy large-image path
    results, _ = run(runners["unet2d_membrane"], [src / "nan.tif"], tmp_path / "out", large_threshold=0)
    assert "NaN/infinite" in results["nan.tif"].reason


def test_cli_exit_codes(checkpoints, bad_volumes, tmp_path, capsys):
    ckpt = str(checkpoints["unet3d_volume"])
    common = [
        "predict",
        "--bundle",
        "unet3d_volume",
        "--checkpoint",
        ckpt,
        "--device",
        "cpu",
        "--no-progress",
        "--set",
        "features=[4,8,16]",
        "--output",
        str(tmp_path / "out"),
    ]
    good = tmp_path / "good.nii.gz"
    shutil.copy(bad_volumes / "good.nii.gz", good)
    assert main([*common, "--input", str(good)]) == 0
    assert main([*common, "--input", str(good), str(bad_volumes / "nan.nii.gz")]) == 1
    out = capsys.readouterr().out
    assert "1 skipped" in out and "1 failed" in out and "nan.nii.gz" in out
    assert main([*common[:4], str(tmp_path / "nope.pt"), *common[5:], "--input", str(good)]) == 2
    assert "checkpoint" in capsys.readouterr().err
