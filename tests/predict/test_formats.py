"""Each input format through ``predict``: geometry kept, same result as the bundle itself, 2D/3D outputs."""

from __future__ import annotations

import io
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import tifffile
from PIL import Image
from predict_helpers import FEATURES, oblique_affine, smooth_volume

from monai_unet.predict import predict


def run(runner, inputs, out, **kwargs):
    return predict(
        runner.bundle, [str(i) for i in inputs], out, runner=runner, progress=False, stream=io.StringIO(), **kwargs
    )


def assert_same_geometry(a: sitk.Image, b: sitk.Image, tol: float = 1e-4) -> None:
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=tol)
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=tol)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=tol)


@pytest.fixture(scope="module")
def volumes(tmp_path_factory) -> dict[str, Path]:
    """One oblique, anisotropic volume saved as .nii, .nii.gz, .nrrd, .mha and .mhd."""
    root = tmp_path_factory.mktemp("volumes")
    nii = root / "vol_niigz.nii.gz"
    nib.save(nib.Nifti1Image(smooth_volume((40, 36, 12)), oblique_affine()), nii)
    paths = {".nii.gz": nii, ".nii": root / "vol_nii.nii"}
    nib.save(nib.load(nii), paths[".nii"])
    img = sitk.ReadImage(str(nii))
    for ext in (".nrrd", ".mha", ".mhd"):
        paths[ext] = root / f"vol_{ext.replace('.', '')}{ext}"
        sitk.WriteImage(img, str(paths[ext]))
    return paths


def test_volume_formats_keep_geometry_and_agree(runners, volumes, tmp_path):
    results = run(runners["unet3d_volume"], volumes.values(), tmp_path)
    assert [r.status for r in results] == ["done"] * len(volumes), [r.reason for r in results]
    labels = {}
    for ext, src in volumes.items():
        out = tmp_path / f"vol_{ext.replace('.', '')}_seg.nii.gz"
        assert out.is_file()
        assert_same_geometry(sitk.ReadImage(str(out)), sitk.ReadImage(str(src)))
        labels[ext] = np.asarray(nib.load(out).dataobj)
        assert labels[ext].dtype == np.uint8 and set(np.unique(labels[ext])) <= {0, 1}
    # same voxels whatever the container, for one reader (NIfTI: nibabel; others: ITK, whose float32 direction
    # cosines differ from nibabel's by ~1e-7, enough to move a random network's labels after resampling)
    np.testing.assert_array_equal(labels[".nii"], labels[".nii.gz"])
    for ext in (".mha", ".mhd"):
        np.testing.assert_array_equal(labels[ext], labels[".nrrd"])


@pytest.mark.parametrize("bundle", ["unet2d_membrane", "unet3d_volume"])
def test_same_result_as_the_bundle_itself(bundle, runners, checkpoints, volumes, tmp_path, shared_data):
    """The bundle run by MONAI (its SaveImaged output) and predict write the same label map."""
    from monai_unet.bundles import run_bundle

    if bundle == "unet2d_membrane":
        src = tmp_path / "in" / "em.png"
        src.parent.mkdir()
        Image.fromarray(np.asarray(Image.open(shared_data / "isbi2012/images/train_03.png"))[:200, :180]).save(src)
        ours_name, load = "em_seg.png", lambda p: np.asarray(Image.open(p))
    else:
        src = volumes[".nii.gz"]
        ours_name, load = "vol_niigz_seg.nii.gz", lambda p: np.asarray(nib.load(p).dataobj)
    run_bundle(
        bundle,
        "run",
        ["inference"],
        bundle_root=tmp_path / "root",
        datalist=[str(src)],
        output_dir=str(tmp_path / "bundle_out"),
        ckpt_path=str(checkpoints[bundle]),
        device="$torch.device('cpu')",
        features=FEATURES[bundle],
    )
    theirs = next((tmp_path / "bundle_out").iterdir())
    run(runners[bundle], [src], tmp_path / "ours")
    np.testing.assert_array_equal(load(tmp_path / "ours" / ours_name), load(theirs))


def test_probabilities_3d(runners, volumes, tmp_path):
    run(runners["unet3d_volume"], [volumes[".nii.gz"]], tmp_path, probabilities=True)
    prob = nib.load(tmp_path / "vol_niigz_probs.nii.gz")
    label = np.asarray(nib.load(tmp_path / "vol_niigz_seg.nii.gz").dataobj)
    p = np.asarray(prob.dataobj)
    assert p.shape == (*label.shape, 1, 2) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-4)
    np.testing.assert_allclose(prob.affine, nib.load(volumes[".nii.gz"]).affine, atol=1e-4)
    # probabilities are resampled linearly, labels by nearest neighbour: they agree where the margin is clear
    clear = np.abs(p[..., 0, 1] - p[..., 0, 0]) > 0.2
    assert clear.sum() > 100
    assert (p[..., 0, :].argmax(-1) == label)[clear].mean() > 0.9


@pytest.fixture(scope="module")
def em_inputs(tmp_path_factory, shared_data) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("em")
    a = np.asarray(Image.open(shared_data / "isbi2012/images/train_00.png"))[:190, :170]
    b = np.asarray(Image.open(shared_data / "isbi2012/images/train_01.png"))[:190, :170]
    paths = {"png": root / "a.png", "tif": root / "a.tif", "stack": root / "stack.tif", "tiled": root / "tiled.tif"}
    Image.fromarray(a).save(paths["png"])
    tifffile.imwrite(paths["tif"], a, photometric="minisblack")
    tifffile.imwrite(paths["stack"], np.stack([a, b, a]), photometric="minisblack")
    tifffile.imwrite(paths["tiled"], a, photometric="minisblack", tile=(64, 64), compression="zlib")
    return paths


def test_2d_png_tiff_and_stack(runners, em_inputs, tmp_path):
    results = run(runners["unet2d_membrane"], em_inputs.values(), tmp_path, probabilities=True)
    assert all(r.status == "done" for r in results), [r.reason for r in results]
    # a.png and a.tif share a name: their outputs are told apart by format
    png = np.asarray(Image.open(tmp_path / "a_png_seg.png"))
    assert png.shape == (190, 170) and set(np.unique(png)) <= {0, 255}
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "a_tif_seg.tif"), png)
    stack = tifffile.imread(tmp_path / "stack_seg.tif")
    assert stack.shape == (3, 190, 170)
    np.testing.assert_array_equal(stack[0], png)  # a page of a stack is segmented as the same image alone
    np.testing.assert_array_equal(stack[2], png)
    assert not np.array_equal(stack[1], png)
    prob = tifffile.imread(tmp_path / "a_tif_probs.tif")
    assert prob.shape == (2, 190, 170)
    np.testing.assert_allclose(prob.sum(0), 1.0, atol=1e-5)


@pytest.mark.parametrize("large_format", ["ome-tiff", "zarr"])
def test_large_tiff_path_equals_in_memory(runners, em_inputs, tmp_path, large_format):
    """Lazy reading, per-tile preprocessing and tile-wise writing give the in-memory result exactly."""
    import zarr

    runner = runners["unet2d_membrane"]
    run(runner, [em_inputs["tiled"]], tmp_path / "mem")
    results = run(runner, [em_inputs["tiled"]], tmp_path / "lazy", large_threshold=0, large_format=large_format)
    assert results[0].status == "done", results[0].reason
    expected = tifffile.imread(tmp_path / "mem" / "tiled_seg.tif")
    if large_format == "zarr":  # the former name of ome-zarr
        got = zarr.open_array(str(tmp_path / "lazy" / "tiled_seg.ome.zarr" / "labels" / "segmentation" / "0"))[:]
    else:
        with tifffile.TiffFile(tmp_path / "lazy" / "tiled_seg.ome.tif") as tf:
            assert tf.is_ome and tf.pages[0].is_tiled
            got = tf.asarray()
    np.testing.assert_array_equal(got, expected)
