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
    (src / "text.png").write_text("a text file named .png")
    import tifffile

    tifffile.imwrite(src / "nan.tif", np.full((32, 32), np.nan, np.float32))
    results, _ = run(runners["unet2d_membrane"], [src], tmp_path / "out")
    assert results["good.png"].status == "done"
    assert "3 channels" in results["rgb.png"].reason
    assert "cannot be decoded" in results["truncated.png"].reason and "cut short" in results["truncated.png"].reason
    assert "not a PNG image" in results["text.png"].reason
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
    shutil.copy(bad_volumes / "nan.nii.gz", tmp_path / "nan.nii.gz")  # outputs are named below the inputs' folder
    assert main([*common, "--input", str(good), str(tmp_path / "nan.nii.gz")]) == 1
    out = capsys.readouterr().out
    assert "1 skipped" in out and "1 failed" in out and "nan.nii.gz" in out
    assert main([*common[:4], str(tmp_path / "nope.pt"), *common[5:], "--input", str(good)]) == 2
    assert "checkpoint" in capsys.readouterr().err


def test_start_up_problems_stop_before_any_work_with_exit_code_2(
    checkpoints, bad_volumes, tmp_path, capsys, monkeypatch
):
    import torch

    good = tmp_path / "good.nii.gz"
    shutil.copy(bad_volumes / "good.nii.gz", good)
    base = ["predict", "--bundle", "unet3d_volume", "--no-progress", "--set", "features=[4,8,16]", "--input", str(good)]
    ckpt = ["--checkpoint", str(checkpoints["unet3d_volume"])]
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"hello world" * 10)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases = [
        ([*ckpt, "--device", "gpu", "--output", str(tmp_path / "o1")], "'gpu' is not a torch device"),
        (["--checkpoint", str(garbage), "--output", str(tmp_path / "o2")], "not a file written by torch.save"),
        ([*ckpt, "--output", str(a_file)], "is a file, not a folder"),
        ([*ckpt, "--output", str(a_file / "sub")], "a_file is a file"),
        ([*ckpt, "--output", "/proc/monai_unet_no/such"], "cannot write to the output folder"),
        (["--checkpoint", str(tmp_path / "nope.pt"), "--output", str(tmp_path / "o3")], "not found"),
    ]
    if not torch.cuda.is_available():
        cases.append(([*ckpt, "--device", "cuda", "--output", str(tmp_path / "o4")], "use --device cpu"))
    for args, message in cases:
        assert main([*base, *args]) == 2, args
        assert message in capsys.readouterr().err, args
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("o")]  # no empty output folder left
    monkeypatch.setenv("RANK", "x")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main([*base, *ckpt, "--output", str(tmp_path / "o5")]) == 2
    assert "RANK='x'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    assert "143 terminated (SIGTERM)" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("tile", ["null", "572"])
def test_automatic_or_integer_tile_from_the_command_line(checkpoints, tmp_path, tile):
    src = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 60), dtype=np.uint8)).save(src)
    args = ["predict", "--bundle", "unet2d_membrane", "--checkpoint", str(checkpoints["unet2d_membrane"])]
    args += ["--no-progress", "--set", "features=[4,8,16,32,64]", f"infer_tile_size={tile}"]
    assert main([*args, "--input", str(src), "--output", str(tmp_path / "out")]) == 0
    assert np.asarray(Image.open(tmp_path / "out" / "a_seg.png")).shape == (64, 60)


def test_dicom_seg_of_an_anonymised_series_is_written_against_generated_uids(runners, shared_data, tmp_path):
    pydicom = pytest.importorskip("pydicom")
    pytest.importorskip("highdicom")
    src = next((shared_data / "brain_tumor_progression_dicom" / "PGBM-001").glob("*/*-T1post-*"))
    anon = tmp_path / "anon"
    anon.mkdir()
    for f in src.glob("*.dcm"):
        ds = pydicom.dcmread(f)
        for key in ("SOPClassUID", "SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID", "SOPInstanceUID"):
            setattr(ds, key, "")
        ds.save_as(anon / f.name)
    results, _ = run(runners["unet3d_volume"], [anon], tmp_path / "out", dicom_seg=True)
    r = results["anon"]
    assert r.status == "done", r.reason
    assert [p.name for p in r.outputs] == ["anon_seg.nii.gz", "anon_seg.dcm"]
    assert any("generated UIDs" in w for w in r.warnings)
    assert pydicom.dcmread(r.outputs[1]).Modality == "SEG"
    again, _ = run(runners["unet3d_volume"], [anon], tmp_path / "out", dicom_seg=True)
    assert again["anon"].status == "skipped"  # a rerun does not repeat the inference


def test_an_image_without_a_place_in_space_fails_naming_the_header(runners, tmp_path):
    affine = np.eye(4)
    affine[1, 1] = 0.0  # the second axis has zero length
    img = nib.Nifti1Image(np.zeros((20, 20, 10), np.float32), None)
    img.header.set_sform(affine, code=1)
    path = tmp_path / "flat.nii.gz"
    nib.save(img, path)
    nib.save(nib.Nifti1Image(np.full((20, 20, 10), 5.0, np.float32), np.eye(4)), tmp_path / "constant.nii.gz")
    results, _ = run(runners["unet3d_volume"], [path, tmp_path / "constant.nii.gz"], tmp_path / "out")
    assert results["flat.nii.gz"].status == "failed"
    assert "header" in results["flat.nii.gz"].reason
    # a library's warning is tied to the input that raised it
    assert results["constant.nii.gz"].status == "done"
    assert any("a_min == a_max" in w for w in results["constant.nii.gz"].warnings)
