"""`predict` never lies about geometry: a DICOM series is assembled by slice position, and what cannot be put on a
regular grid fails with the reason (built from the shared Brain-Tumor-Progression series); outputs are never
inputs, however they are reached."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from monai_unet.io.dicom import assemble_series, find_dicom_series
from monai_unet.predict import predict

STUDY = "brain_tumor_progression_dicom/PGBM-001/11-19-1991-FH-HEADBrain Protocols-40993"


def run(runner, inputs, out, **kwargs):
    return predict(
        runner.bundle, [str(i) for i in inputs], out, runner=runner, progress=False, stream=io.StringIO(), **kwargs
    )


@pytest.fixture(scope="module")
def t1(shared_data) -> Path:
    """The T1post series of one study: 25 slices of 260 x 320 at 0.6875 x 0.6875 x 6.5 mm, oblique."""
    return next((shared_data / STUDY).glob("*-T1post-*"))


def copy_series(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in src.glob("*.dcm"):
        shutil.copy(f, dst / f.name)
    return dst


def slice_centres(path: Path) -> np.ndarray:
    """World coordinates (RAS, mm) of the centre line of each slice of a NIfTI label map, ``(Z, 3)``."""
    img = nib.load(path)
    nz = img.shape[2]
    return (img.affine @ np.array([[0, 0, k, 1] for k in range(nz)], float).T).T[:, :3]


@pytest.fixture(scope="module")
def clean(runners, t1, tmp_path_factory) -> Path:
    """The label map of the intact series (the reference for the broken copies)."""
    root = tmp_path_factory.mktemp("clean")
    res = run(runners["unet3d_volume"], [copy_series(t1, root / "clean")], root / "out")
    assert res[0].status == "done", res[0].reason
    return res[0].outputs[0]


def test_duplicate_slices_are_left_out_with_a_warning_naming_them(runners, t1, clean, tmp_path):
    import pydicom

    dup = copy_series(t1, tmp_path / "dup")
    shutil.copy(dup / "000010.dcm", dup / "zz_same_uid.dcm")  # the same SOPInstanceUID (merged exports)
    ds = pydicom.dcmread(dup / "000011.dcm")
    ds.SOPInstanceUID = pydicom.uid.generate_uid()  # a new UID, but the same position and pixels
    ds.save_as(dup / "zz_new_uid.dcm")
    res = run(runners["unet3d_volume"], [dup], tmp_path / "out")
    assert res[0].status == "done", res[0].reason
    assert len(res[0].warnings) == 2
    assert any("zz_same_uid.dcm" in w and "000010.dcm" in w for w in res[0].warnings)
    assert any("zz_new_uid.dcm" in w and "000011.dcm" in w for w in res[0].warnings)
    got, ref = nib.load(res[0].outputs[0]), nib.load(clean)
    assert got.shape == ref.shape == (260, 320, 25)
    np.testing.assert_allclose(got.affine, ref.affine, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(got.dataobj), np.asarray(ref.dataobj))


def test_a_missing_slice_fails_naming_the_gap_and_its_neighbours(runners, t1, tmp_path):
    miss = copy_series(t1, tmp_path / "miss")
    order = [f.name for f in assemble_series(sorted(miss.glob("*.dcm"))).files]
    k = order.index("000010.dcm")
    (miss / "000010.dcm").unlink()
    res = run(runners["unet3d_volume"], [miss], tmp_path / "out")
    assert res[0].status == "failed"
    reason = res[0].reason
    assert "gap" in reason and "13.00 mm" in reason and "6.50 mm" in reason and "--allow-gaps" in reason
    assert order[k - 1] in reason and order[k + 1] in reason
    assert not list((tmp_path / "out").rglob("*_seg*"))


def test_a_truncated_slice_fails_naming_the_file(runners, t1, tmp_path):
    cut = copy_series(t1, tmp_path / "cut")
    data = (cut / "000010.dcm").read_bytes()
    (cut / "000010.dcm").write_bytes(data[: len(data) // 2])
    assert "000010.dcm" in {f.name for f in find_dicom_series(cut)[0].unreadable}  # GDCM left it out
    res = run(runners["unet3d_volume"], [cut], tmp_path / "out")
    assert res[0].status == "failed" and "000010.dcm is truncated" in res[0].reason
    assert not list((tmp_path / "out").rglob("*_seg*"))


def test_allow_gaps_keeps_every_slice_on_its_own_position(runners, t1, clean, tmp_path):
    miss = copy_series(t1, tmp_path / "miss")
    (miss / "000010.dcm").unlink()
    res = run(runners["unet3d_volume"], [miss], tmp_path / "out", allow_gaps=True)
    assert res[0].status == "done", res[0].reason
    assert [p.name for p in res[0].outputs] == ["miss_part1of2_seg.nii.gz", "miss_part2of2_seg.nii.gz"]
    assert any("2 evenly spaced runs" in w for w in res[0].warnings)
    ref = slice_centres(clean)
    parts = [slice_centres(p) for p in res[0].outputs]
    assert sum(len(p) for p in parts) == len(ref) - 1
    matched = []
    for p, path in zip(parts, res[0].outputs):
        np.testing.assert_allclose(nib.load(path).affine[:3, :3], nib.load(clean).affine[:3, :3], atol=1e-4)
        for centre in p:  # each acquired slice sits where the intact series has it, none in between
            d = np.linalg.norm(ref - centre, axis=1)
            assert d.min() < 1e-3
            matched.append(int(d.argmin()))
    assert len(set(matched)) == len(matched) == len(ref) - 1  # one slice position, the missing one, is absent
    again = run(runners["unet3d_volume"], [miss], tmp_path / "out", allow_gaps=True)
    assert again[0].status == "skipped" and again[0].outputs == res[0].outputs  # a rerun resumes


def test_outputs_are_never_inputs_however_they_are_reached(runners, t1, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for k in range(2):
        Image.fromarray(np.full((40, 30), 60 * k, np.uint8)).save(src / f"s{k}.png")
    runner = runners["unet2d_membrane"]
    assert [r.status for r in run(runner, [src], src)] == ["done", "done"]  # --output equal to the input
    assert [r.status for r in run(runner, [src], src)] == ["skipped", "skipped"]
    assert sorted(p.name for p in src.iterdir()) == ["s0.png", "s0_seg.png", "s1.png", "s1_seg.png"]
    bad = run(runner, [src / "s0_seg.png"], src)  # an output named as an input
    assert bad[0].status == "failed" and "is an output of monai-unet predict" in bad[0].reason
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    shutil.copy(src / "s0.png", fresh / "s0.png")
    alias = tmp_path / "alias"
    os.symlink(fresh, alias)  # the output folder inside the input, reached through a symlink
    assert [r.status for r in run(runner, [fresh], alias / "pred")] == ["done"]
    assert [(r.key, r.status) for r in run(runner, [fresh], alias / "pred")] == [(str(fresh / "s0.png"), "skipped")]
    assert sorted(p.name for p in (fresh / "pred").iterdir()) == ["s0_seg.png"]


def test_a_dicom_seg_inside_a_series_folder_is_not_a_series(runners, t1, tmp_path):
    pytest.importorskip("highdicom")
    series = copy_series(t1, tmp_path / "t1")
    first = run(runners["unet3d_volume"], [series], series, dicom_seg=True)  # outputs beside the slices
    assert first[0].status == "done", first[0].reason
    assert (series / "t1_seg.dcm").is_file()
    again = run(runners["unet3d_volume"], [series], series, dicom_seg=True)
    assert [(r.key, r.status) for r in again] == [(str(series), "skipped")]


def test_itk_warnings_name_their_input(runners, t1, tmp_path):
    """A slice 0.03 mm off its place (within the 1% tolerance): ITK warns from C++; the warning names the input."""
    import pydicom

    jitter = copy_series(t1, tmp_path / "jitter")
    ds = pydicom.dcmread(jitter / "000010.dcm")
    iop = np.asarray(ds.ImageOrientationPatient, float)
    ds.ImagePositionPatient = list(np.asarray(ds.ImagePositionPatient, float) + 0.03 * np.cross(iop[:3], iop[3:]))
    ds.save_as(jitter / "000010.dcm")
    res = run(runners["unet3d_volume"], [jitter], tmp_path / "out")
    assert res[0].status == "done", res[0].reason
    assert any(w.startswith("Non uniform sampling or missing slices detected") for w in res[0].warnings), res[
        0
    ].warnings
