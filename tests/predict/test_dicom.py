"""DICOM series in: predictions on the source grid (the MaskTumor series' voxels), several series per folder,
compressed transfer syntax, DICOM-SEG out."""

from __future__ import annotations

import importlib.util
import io
import os
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from monai_unet.predict import discover_inputs, predict

STUDIES = "brain_tumor_progression_dicom"


def studies(shared_data: Path) -> list[Path]:
    return sorted(p for p in (shared_data / STUDIES).glob("*/*") if p.is_dir())


def series_folder(study: Path, kind: str) -> Path:
    return next(p for p in study.iterdir() if f"-{kind}-" in p.name)


def run(runner, inputs, out, **kwargs):
    return predict(
        runner.bundle, [str(i) for i in inputs], out, runner=runner, progress=False, stream=io.StringIO(), **kwargs
    )


@pytest.fixture(scope="module")
def t1_results(runners, shared_data, tmp_path_factory) -> dict[Path, object]:
    """``{study: Result}``: the T1post series of the four studies segmented once (with DICOM-SEG)."""
    all_studies = studies(shared_data)
    assert len(all_studies) == 4
    t1 = [series_folder(s, "T1post") for s in all_studies]
    with_seg = importlib.util.find_spec("highdicom") is not None  # DICOM-SEG needs the dicom extra
    results = run(runners["unet3d_volume"], t1, tmp_path_factory.mktemp("t1"), dicom_seg=with_seg)
    assert [r.status for r in results] == ["done"] * 4, [r.reason for r in results]
    by_key = {r.key: r for r in results}
    return {s: by_key[str(series_folder(s, "T1post"))] for s in all_studies}


def test_prediction_lands_on_the_mask_series(t1_results):
    """A prediction written for each T1post series has the shape and affine of that study's MaskTumor series."""
    from monai.transforms import LoadImage

    load = LoadImage(reader="ITKReader", image_only=True)
    for study, r in t1_results.items():
        mask = load(str(series_folder(study, "MaskTumor")))
        out = nib.load(r.outputs[0])
        assert out.shape == tuple(mask.shape), (study, out.shape, mask.shape)
        np.testing.assert_allclose(out.affine, np.asarray(mask.affine), atol=1e-3)
        assert abs(out.affine[:3, :3] - np.diag(np.diag(out.affine[:3, :3]))).max() > 0.01  # oblique indeed
        # the label map is on the mask's voxels: both read back with ITK give the same grid, voxel for voxel
        import SimpleITK as sitk

        a = sitk.ReadImage(str(r.outputs[0]))
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(series_folder(study, "MaskTumor"))))
        b = reader.Execute()
        assert a.GetSize() == b.GetSize()
        np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-3)
        np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-5)
        np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-4)


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory, shared_data) -> Path:
    """One folder holding two series (T1post and MaskTumor of one study), linked, not copied."""
    study = studies(shared_data)[0]
    folder = tmp_path_factory.mktemp("mixed") / "study"
    folder.mkdir()
    for kind in ("T1post", "MaskTumor"):
        for f in series_folder(study, kind).glob("*.dcm"):
            os.symlink(f, folder / f"{kind}_{f.name}")
    return folder


def test_several_series_in_one_folder_become_several_volumes(runners, shared_data, mixed_folder, t1_results, tmp_path):
    items = discover_inputs([mixed_folder])
    assert [i.kind for i in items] == ["dicom", "dicom"]
    assert len({i.series for i in items}) == 2
    names = sorted(i.rel.name for i in items)  # series number and description, e.g. 11_T1post, 5388_Mask_Tumor
    assert names[0] == "11_T1post" and re.fullmatch(r"\d+_Mask_?Tumor", names[1]), names
    # without named channels each series is segmented on its own; the T1post series gives the same labels
    runner = runners["unet3d_volume"]
    named, runner.channels = runner.channels, None
    try:
        results = run(runner, [mixed_folder], tmp_path / "mixed")
    finally:
        runner.channels = named
    assert [r.status for r in results] == ["done", "done"], [r.reason for r in results]
    ref = np.asarray(nib.load(t1_results[studies(shared_data)[0]].outputs[0]).dataobj)
    same = [np.array_equal(np.asarray(nib.load(r.outputs[0]).dataobj), ref) for r in results]
    assert sorted(same) == [False, True]
    # the bundle's one named channel (T1post) picks its series: the folder is one input, the mask is not segmented
    assert named is not None and list(named) == ["T1post"]
    (one,) = run(runner, [mixed_folder], tmp_path / "named")
    assert one.status == "done", one.reason
    assert np.array_equal(np.asarray(nib.load(one.outputs[0]).dataobj), ref)


def test_compressed_series_reads_like_the_uncompressed_one(runners, shared_data, t1_results, tmp_path):
    """RLE Lossless (a compressed transfer syntax GDCM decodes) gives the same volume and prediction."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.uid import RLELossless

    src = series_folder(studies(shared_data)[0], "T1post")
    dst = tmp_path / "rle"
    dst.mkdir()
    for f in sorted(src.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        ds.compress(RLELossless)
        ds.save_as(dst / f.name)
    assert pydicom.dcmread(next(dst.glob("*.dcm"))).file_meta.TransferSyntaxUID == RLELossless
    a = [t1_results[studies(shared_data)[0]]]
    b = run(runners["unet3d_volume"], [dst], tmp_path / "b")
    assert b[0].status == "done", b[0].reason
    np.testing.assert_array_equal(
        np.asarray(nib.load(b[0].outputs[0]).dataobj), np.asarray(nib.load(a[0].outputs[0]).dataobj)
    )
    np.testing.assert_allclose(nib.load(b[0].outputs[0]).affine, nib.load(a[0].outputs[0]).affine, atol=1e-6)


def test_dicom_seg_references_the_source_series(shared_data, t1_results):
    pydicom = pytest.importorskip("pydicom")
    pytest.importorskip("highdicom")
    from monai_unet.io.dicom import find_dicom_series

    src = series_folder(studies(shared_data)[0], "T1post")
    results = [t1_results[studies(shared_data)[0]]]
    seg_path = next(p for p in results[0].outputs if p.suffix == ".dcm")
    seg = pydicom.dcmread(seg_path)
    files = find_dicom_series(src)[0].files
    source = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    assert seg.Modality == "SEG"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source[0].SeriesInstanceUID
    assert seg.StudyInstanceUID == source[0].StudyInstanceUID
    assert seg.SeriesDescription == f"monai-unet SEG of {source[0].SeriesDescription}"  # named in OHIF and Slicer
    label = np.asarray(nib.load(results[0].outputs[0]).dataobj)
    index = {ds.SOPInstanceUID: k for k, ds in enumerate(source)}
    frames = seg.pixel_array
    assert frames.shape == (len(files), source[0].Rows, source[0].Columns)
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence):
        k = index[item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID]
        np.testing.assert_array_equal(frame, (label[:, :, k] == 1).T)
