"""Synthetic datasets: layout, values, geometry, determinism, idempotence and atomicity."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from monai.transforms import LoadImage
from PIL import Image

from monai_unet.data import make_em_dataset, make_volume_dataset, volume_datalist
from monai_unet.data._files import MANIFEST_NAME


def _png(path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.mode == "L"
        return np.asarray(im)


def test_em_dataset_is_isbi_like(tmp_path):
    out = make_em_dataset(tmp_path / "em", num_images=3, size=(192, 256), seed=0)
    images = sorted(p.name for p in (out / "images").iterdir())
    assert images == ["em_000.png", "em_001.png", "em_002.png"]
    assert sorted(p.name for p in (out / "labels").iterdir()) == images
    fractions = []
    for name in images:
        image, label = _png(out / "images" / name), _png(out / "labels" / name)
        assert image.shape == label.shape == (192, 256) and image.dtype == label.dtype == np.uint8
        assert set(np.unique(label)) == {0, 255}
        fractions.append(np.mean(label == 0))
        # membranes are dark in the image, as in EM: what the network has to learn
        assert image[label == 0].mean() < image[label == 255].mean() - 30
        assert image.std() > 15
    assert 0.15 < np.mean(fractions) < 0.30  # ISBI 2012: about 22 % membrane


def test_em_dataset_deterministic(tmp_path):
    a = make_em_dataset(tmp_path / "a", num_images=2, size=96, seed=3)
    b = make_em_dataset(tmp_path / "b", num_images=2, size=96, seed=3)
    c = make_em_dataset(tmp_path / "c", num_images=2, size=96, seed=4)
    for sub in ("images", "labels"):
        assert (a / sub / "em_001.png").read_bytes() == (b / sub / "em_001.png").read_bytes()
    assert not np.array_equal(_png(a / "images/em_001.png"), _png(c / "images/em_001.png"))


def test_em_dataset_idempotent_and_resumes(tmp_path):
    out = make_em_dataset(tmp_path, num_images=3, size=64)
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*.png")}
    make_em_dataset(tmp_path, num_images=3, size=64)
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*.png")} == before

    # an interrupted run: one image missing, a stale temporary file, the manifest not yet complete
    (out / "images/em_001.png").unlink()
    (out / "images/.em_001.png.123.tmp").write_bytes(b"half")
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    (out / MANIFEST_NAME).write_text(json.dumps({**manifest, "complete": False}))
    make_em_dataset(tmp_path, num_images=3, size=64)
    assert json.loads((out / MANIFEST_NAME).read_text())["complete"]
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*.png")}
    assert after[out / "images/em_001.png"][1] == before[out / "images/em_001.png"][1]
    assert after[out / "images/em_000.png"] == before[out / "images/em_000.png"]  # not rewritten


def test_generators_refuse_foreign_or_different_folders(tmp_path):
    make_em_dataset(tmp_path / "em", num_images=2, size=64)
    with pytest.raises(ValueError, match="different settings"):
        make_em_dataset(tmp_path / "em", num_images=3, size=64)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("user data")
    with pytest.raises(ValueError, match="not empty"):
        make_volume_dataset(tmp_path / "mine", num_volumes=1, shape=(16, 16, 8))
    with pytest.raises(ValueError, match="size"):
        make_em_dataset(tmp_path / "x", size=8)


def test_volume_dataset_geometry(tmp_path):
    spacing = (0.8, 1.2, 3.0)
    out = make_volume_dataset(tmp_path, num_volumes=2, shape=(40, 36, 14), spacing=spacing, seed=0)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["numTraining"] == 2 and meta["labels"] == {"0": "background", "1": "blob"}
    items = volume_datalist(out)  # through monai.data.load_decathlon_datalist
    assert [it["image"] for it in items] == [str(out / "imagesTr" / f"blob_00{i}.nii.gz") for i in range(2)]
    affines = []
    for item in items:
        img, lab = nib.load(item["image"]), nib.load(item["label"])
        assert img.shape == lab.shape == (40, 36, 14)
        np.testing.assert_allclose(img.header.get_zooms(), spacing, rtol=1e-6)
        np.testing.assert_allclose(img.get_qform(), img.get_sform(), atol=1e-5)
        np.testing.assert_allclose(img.affine, lab.affine)
        direction = img.affine[:3, :3] / np.asarray(spacing)
        np.testing.assert_allclose(direction.T @ direction, np.eye(3), atol=1e-6)  # a rotation ...
        assert np.abs(direction - np.eye(3)).max() > 0.05  # ... that is oblique
        assert np.linalg.norm(img.affine[:3, 3]) > 1.0
        affines.append(img.affine)
        label = np.asarray(lab.dataobj)
        assert lab.get_data_dtype() == np.uint8 and set(np.unique(label)) == {0, 1}
        assert 0.002 < label.mean() < 0.3
        image = img.get_fdata()
        body = image > 50
        assert image[label == 1].mean() > image[body & (label == 0)].mean() + 20  # blobs are bright
        for reader in ("ITKReader", "NibabelReader"):
            loaded = LoadImage(reader=reader, image_only=True, ensure_channel_first=True)(item["image"])
            assert loaded.shape == (1, 40, 36, 14)
            np.testing.assert_allclose(loaded.affine.numpy(), img.affine, atol=1e-4)
            np.testing.assert_allclose(loaded.pixdim.numpy(), spacing, rtol=1e-5)
    assert not np.allclose(affines[0], affines[1])  # each volume has its own geometry


def test_volume_dataset_deterministic_and_idempotent(tmp_path):
    a = make_volume_dataset(tmp_path / "a", num_volumes=1, shape=(24, 24, 8), seed=1)
    b = make_volume_dataset(tmp_path / "b", num_volumes=1, shape=(24, 24, 8), seed=1)
    for rel in ("imagesTr/blob_000.nii.gz", "labelsTr/blob_000.nii.gz", "dataset.json"):
        assert (a / rel).read_bytes() == (b / rel).read_bytes()
    stamp = (a / "imagesTr/blob_000.nii.gz").stat().st_mtime_ns
    (a / "dataset.json").unlink()
    make_volume_dataset(tmp_path / "a", num_volumes=1, shape=(24, 24, 8), seed=1)
    assert (a / "dataset.json").is_file()
    assert (a / "imagesTr/blob_000.nii.gz").stat().st_mtime_ns == stamp  # only the missing file was written
