"""The datalists and the bundles' reader settings on the real data in ``../shared/data``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
from monai.transforms import LoadImaged
from PIL import Image

from monai_unet.data import load_image_kwargs, make_datalists, membrane_datalist, volume_datalist


def test_isbi2012_pairs_load_aligned(shared_data):
    items = membrane_datalist(shared_data / "isbi2012")
    assert len(items) == 20
    assert [Path(it["image"]).name for it in items] == [f"train_{i:02d}.png" for i in range(20)]
    assert all(
        Path(it["label"]).parent.name == "labels" and Path(it["label"]).name == Path(it["image"]).name for it in items
    )
    load = LoadImaged(keys=["image", "label"], **load_image_kwargs("membrane"))
    for item in items[::6]:
        data = load(item)
        image, label = data["image"], data["label"]
        assert image.shape == label.shape == (1, 512, 512)
        # PILReader gives (W, H): the file's rows are the second axis, for image and label alike
        np.testing.assert_array_equal(image[0].numpy(), np.asarray(Image.open(item["image"])).T)
        np.testing.assert_array_equal(label[0].numpy(), np.asarray(Image.open(item["label"])).T)
        assert set(np.unique(label.numpy())) == {0.0, 255.0}
        membrane = label[0] == 0
        assert 0.15 < membrane.float().mean() < 0.3
        # aligned: membranes are dark in the image (a transposed or shifted label would wash this out)
        assert image[0][membrane].mean() < image[0][~membrane].mean() - 40


def test_isbi2012_split(shared_data):
    lists = make_datalists(shared_data / "isbi2012", "membrane", val_fraction=0.2, seed=0)
    assert len(lists["training"]) == 16 and len(lists["validation"]) == 4
    assert not {it["image"] for it in lists["training"]} & {it["image"] for it in lists["validation"]}


def _affine_from_dicom_tags(series: Path) -> tuple[np.ndarray, int]:
    """RAS voxel-to-world affine computed from the DICOM tags themselves (not by an image reader)."""
    positions = []
    for f in sorted(series.glob("*.dcm")):
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(f))
        reader.ReadImageInformation()
        iop = np.array(reader.GetMetaData("0020|0037").split("\\"), float)
        positions.append(np.array(reader.GetMetaData("0020|0032").split("\\"), float))
        row_col = np.array(reader.GetMetaData("0028|0030").split("\\"), float)
    normal = np.cross(iop[:3], iop[3:])
    positions = np.array(sorted(positions, key=lambda p: p @ normal))
    affine = np.eye(4)
    affine[:3, 0] = iop[:3] * row_col[1]  # along a row: column spacing
    affine[:3, 1] = iop[3:] * row_col[0]
    affine[:3, 2] = (positions[-1] - positions[0]) / (len(positions) - 1)
    affine[:3, 3] = positions[0]
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine, len(positions)  # LPS -> RAS


def test_brain_tumor_dicom_studies_load_on_one_grid(shared_data):
    items = volume_datalist(shared_data / "brain_tumor_progression_dicom")
    assert len(items) == 4  # four studies of two patients
    assert sorted({Path(it["image"]).parts[-3] for it in items}) == ["PGBM-001", "PGBM-003"]
    assert all("T1post" in Path(it["image"]).name and "MaskTumor" in Path(it["label"]).name for it in items)
    assert all(Path(it["image"]).parent == Path(it["label"]).parent for it in items)
    load = LoadImaged(keys=["image", "label"], **load_image_kwargs("volume"))
    for item in items:
        data = load(item)
        image, label = data["image"], data["label"]
        expected, slices = _affine_from_dicom_tags(Path(item["image"]))
        assert image.shape == label.shape == (1, *image.shape[1:3], slices)
        assert image.shape[1:3] in ((260, 320), (280, 320), (512, 512)) and 22 <= slices <= 25
        in_plane = 0.6875 if image.shape[2] == 320 else 0.4297  # one study is 512 x 512 at 0.43 mm
        np.testing.assert_allclose(image.pixdim.numpy(), (in_plane, in_plane, 6.5), atol=1e-4)
        np.testing.assert_allclose(image.affine.numpy(), expected, atol=1e-3)  # oblique direction honoured
        np.testing.assert_allclose(label.affine.numpy(), image.affine.numpy(), atol=1e-3)  # same voxel grid
        direction = image.affine.numpy()[:3, :3] / image.pixdim.numpy()
        assert np.abs(direction - np.diag(np.sign(np.diag(direction)))).max() > 0.01
        assert set(np.unique(label.numpy())) == {0.0, 1.0} and label.sum() > 500
        # the enhancing tumour under the mask is brighter than the scan on average (a misplaced mask is not)
        assert image[label > 0].mean() > 1.3 * image.mean()


def test_nrrd_brain_flat_pair(shared_data):
    items = volume_datalist(shared_data / "nrrd_brain")
    assert [Path(it["image"]).name for it in items] == ["brain1_image.nrrd"]
    data = LoadImaged(keys=["image", "label"], **load_image_kwargs("volume"))(items[0])
    assert data["image"].shape == data["label"].shape == (1, 256, 256, 25)
    np.testing.assert_allclose(data["image"].affine.numpy(), data["label"].affine.numpy(), atol=1e-4)
    np.testing.assert_allclose(data["image"].pixdim.numpy()[2], 6.5, atol=1e-3)
    assert int(data["label"].sum()) == 4137
