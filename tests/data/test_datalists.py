"""Datalists for folder layouts, multi-page TIFF stacks and splits; the errors for bad folders."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tifffile
from monai.transforms import LoadImaged
from PIL import Image

from monai_unet.data import (
    load_image_kwargs,
    membrane_datalist,
    split_datalist,
    tiff_stack_datalist,
    volume_datalist,
)


def _write_stacks(folder, name_image="train-volume.tif", name_label="train-labels.tif", pages=5, shape=(48, 64)):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (pages, *shape), dtype=np.uint8)
    labels = np.where(images > 128, 255, 0).astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(folder / name_image, images, photometric="minisblack")
    tifffile.imwrite(folder / name_label, labels, photometric="minisblack")
    return images, labels


def test_tiff_stacks_become_page_items(tmp_path):
    images, labels = _write_stacks(tmp_path / "isbi")
    tifffile.imwrite(
        tmp_path / "isbi" / "test-volume.tif", images, photometric="minisblack"
    )  # no labels: not a training pair
    items = membrane_datalist(tmp_path / "isbi", cache_dir=tmp_path / "cache")
    assert len(items) == 5
    assert all(str(tmp_path / "cache") in it["image"] and str(tmp_path / "cache") in it["label"] for it in items)
    assert sorted(p.name for p in (tmp_path / "isbi").iterdir()) == [
        "test-volume.tif",
        "train-labels.tif",
        "train-volume.tif",
    ]
    load = LoadImaged(keys=["image", "label"], **load_image_kwargs("membrane"))
    for page, item in enumerate(items):
        data = load(item)
        assert data["image"].shape == data["label"].shape == (1, 64, 48)  # PILReader: (W, H)
        np.testing.assert_array_equal(data["image"][0].numpy(), images[page].T)
        np.testing.assert_array_equal(data["label"][0].numpy(), labels[page].T)
    stamps = [_mtime(it["image"]) for it in items]
    assert membrane_datalist(tmp_path / "isbi", cache_dir=tmp_path / "cache") == items  # reuses the pages
    assert [_mtime(it["image"]) for it in items] == stamps


def _mtime(path: str) -> int:
    return os.stat(path).st_mtime_ns


def test_tiff_stacks_in_images_labels_folders(tmp_path):
    _write_stacks(tmp_path / "images", "stack.tif", "stack_unused.tif", pages=3)
    _write_stacks(tmp_path / "labels", "stack_unused.tif", "stack.tif", pages=3)
    for folder in ("images", "labels"):
        (tmp_path / folder / "stack_unused.tif").unlink()
        tifffile.imwrite(tmp_path / folder / "single.tif", np.zeros((48, 64), np.uint8))
    items = membrane_datalist(tmp_path, cache_dir=tmp_path / "cache")
    assert len(items) == 1 + 3
    assert items[0] == {"image": str(tmp_path / "images/single.tif"), "label": str(tmp_path / "labels/single.tif")}
    assert all("page_000" in it["image"] and "page_000" in it["label"] for it in items[1:])


def test_tiff_stack_mismatch(tmp_path):
    _write_stacks(tmp_path, pages=4)
    tifffile.imwrite(tmp_path / "short-labels.tif", np.zeros((3, 48, 64), np.uint8), photometric="minisblack")
    with pytest.raises(ValueError, match=r"4 pages.*3 pages"):
        tiff_stack_datalist(tmp_path / "train-volume.tif", tmp_path / "short-labels.tif", tmp_path / "cache")
    with pytest.raises(FileNotFoundError, match=r"nothere\.tif"):
        tiff_stack_datalist(tmp_path / "nothere.tif", tmp_path / "train-labels.tif")


def _png(path, shape=(32, 32)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros(shape, np.uint8)).save(path)


def test_membrane_datalist_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        membrane_datalist(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"images/ and labels/"):
        membrane_datalist(tmp_path / "empty")
    (tmp_path / "noimg" / "images").mkdir(parents=True)
    (tmp_path / "noimg" / "labels").mkdir()
    with pytest.raises(FileNotFoundError, match="No PNG/TIFF images"):
        membrane_datalist(tmp_path / "noimg")
    _png(tmp_path / "odd/images/a.png")
    _png(tmp_path / "odd/images/b.png")
    _png(tmp_path / "odd/labels/a.png")
    _png(tmp_path / "odd/labels/c.png")
    with pytest.raises(ValueError, match=r"image\(s\) without a label \['b'\].*\['c'\]"):
        membrane_datalist(tmp_path / "odd")
    _png(tmp_path / "size/images/a.png", (32, 32))
    _png(tmp_path / "size/labels/a.tif", (32, 40))
    with pytest.raises(ValueError, match=r"a\.tif is 32x40"):
        membrane_datalist(tmp_path / "size")


def _nii(path):
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), path)


def test_volume_datalist_folders(tmp_path):
    _nii(tmp_path / "nn/imagesTr/case_001_0000.nii.gz")
    _nii(tmp_path / "nn/labelsTr/case_001.nii.gz")
    _nii(tmp_path / "nn/imagesTr/case_002_0000.nii.gz")
    _nii(tmp_path / "nn/labelsTr/case_002.nii.gz")
    items = volume_datalist(tmp_path / "nn")
    assert [it["label"] for it in items] == [str(tmp_path / f"nn/labelsTr/case_00{i}.nii.gz") for i in (1, 2)]
    assert items[1]["image"] == str(tmp_path / "nn/imagesTr/case_002_0000.nii.gz")
    _nii(tmp_path / "plain/images/a.nii")
    _nii(tmp_path / "plain/labels/a.nii.gz")
    assert volume_datalist(tmp_path / "plain") == [
        {"image": str(tmp_path / "plain/images/a.nii"), "label": str(tmp_path / "plain/labels/a.nii.gz")}
    ]


def test_volume_datalist_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"not a volume dataset.*dataset\.json"):
        volume_datalist(tmp_path / "empty")
    _nii(tmp_path / "bad/imagesTr/a.nii.gz")
    (tmp_path / "bad/labelsTr").mkdir()
    with pytest.raises(ValueError, match=r"1 image\(s\) without a label \['a'\]"):
        volume_datalist(tmp_path / "bad")
    (tmp_path / "msd").mkdir()
    (tmp_path / "msd/dataset.json").write_text(
        json.dumps({"training": [{"image": "./x.nii.gz", "label": "./y.nii.gz"}]})
    )
    with pytest.raises(ValueError, match="'validation'"):
        volume_datalist(tmp_path / "msd", section="validation")
    with pytest.raises(FileNotFoundError, match=r"x\.nii\.gz"):
        volume_datalist(tmp_path / "msd")
    for series in ("1-T1post-a", "2-T1post-b", "3-MaskTumor-c"):
        (tmp_path / "dicom/P1/study" / series).mkdir(parents=True)
    with pytest.raises(ValueError, match="exactly one image series"):
        volume_datalist(tmp_path / "dicom")


def test_split_datalist():
    items = [{"image": str(i), "label": str(i)} for i in range(20)]
    train, val = split_datalist(items, val_fraction=0.2, seed=0)
    assert len(train) == 16 and len(val) == 4
    assert sorted(train + val, key=lambda it: int(it["image"])) == items
    assert split_datalist(items, val_fraction=0.2, seed=0) == (train, val)
    assert split_datalist(items, val_fraction=0.2, seed=1)[1] != val
    train, val = split_datalist(items, val_indices=[0, -1])
    assert [it["image"] for it in val] == ["0", "19"] and len(train) == 18
    tiny_train, tiny_val = split_datalist(items[:2], val_fraction=0.01)  # at least one item on each side
    assert len(tiny_train) == len(tiny_val) == 1
    assert split_datalist(items, val_fraction=0.0) == (items, [])
    with pytest.raises(ValueError, match="out of range"):
        split_datalist(items, val_indices=[20])
    with pytest.raises(ValueError, match="val_fraction"):
        split_datalist(items, val_fraction=1.0)
    with pytest.raises(ValueError, match="at least 2"):
        split_datalist(items[:1])
