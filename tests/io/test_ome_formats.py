"""OME-Zarr and pyramidal OME-TIFF: the label store, the files viewers open, inputs of every kind, pixel sizes."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr

from monai_unet.io.large_image import PixelSize, open_large_image
from monai_unet.io.ome_tiff import write_pyramidal_ome_tiff
from monai_unet.io.ome_zarr import LabelStore, pyramid_shapes


@pytest.fixture
def labels() -> np.ndarray:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 3, (300, 250), dtype=np.uint8)
    a[:96, :64] = 0  # one chunk all fill value: never written by zarr, still a tile of the TIFF
    return a


def filled_store(root, labels: np.ndarray, chunks=(96, 64)) -> LabelStore:
    store = LabelStore.create(root, labels.shape, chunks, np.uint8, {"job": 1})
    gi, gj = store.grid
    for i in range(gi):
        for j in range(gj):
            store.write_block(i, j, labels[store.block_box(i, j)])
    store.build_pyramid()
    return store


def test_pyramid_shapes_halve_until_one_chunk() -> None:
    assert pyramid_shapes((300, 250), (96, 64)) == [(300, 250), (150, 125), (75, 63)]
    assert pyramid_shapes((50, 40), (64, 64)) == [(50, 40)]


def test_ome_zarr_labels_as_ngff_readers_see_them(tmp_path, labels) -> None:
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    store = filled_store(tmp_path / "a.ome.zarr", labels)
    assert len(store.done_blocks()) == 16
    store.write_metadata(PixelSize(0.5, 0.25), n_classes=3, source="a.tif")
    store.finish()
    assert not (tmp_path / "a.ome.zarr" / ".monai_unet").exists()
    nodes = {n.zarr.path.rstrip("/").split("/")[-1]: n for n in Reader(parse_url(str(tmp_path / "a.ome.zarr")))()}
    label = nodes["segmentation"]
    assert {type(s).__name__ for s in label.specs} == {"Label", "Multiscales"}  # what napari loads as Labels
    assert "Labels" in {type(s).__name__ for s in nodes["labels"].specs}
    assert "Multiscales" in {type(s).__name__ for s in nodes["a.ome.zarr"].specs}  # image viewers open the root
    for k, level in enumerate(label.data):
        np.testing.assert_array_equal(np.asarray(level), labels[:: 2**k, :: 2**k])
    attrs = zarr.open_group(str(tmp_path / "a.ome.zarr" / "labels" / "segmentation")).attrs
    ms = attrs["multiscales"][0]
    assert ms["version"] == "0.4" and [a["unit"] for a in ms["axes"]] == ["micrometer"] * 2
    assert ms["datasets"][1]["coordinateTransformations"][0]["scale"] == [1.0, 0.5]
    assert [c["label-value"] for c in attrs["image-label"]["colors"]] == [0, 1, 2]
    # and it is an input again, with its pixel size
    again = open_large_image(tmp_path / "a.ome.zarr")
    assert again.pixel_size == PixelSize(0.5, 0.25)
    np.testing.assert_array_equal(np.asarray(again.array[10:50, 20:90]), labels[10:50, 20:90])


def test_pyramidal_ome_tiff_from_the_store(tmp_path, labels) -> None:
    store = filled_store(tmp_path / "s.ome.zarr", labels)
    write_pyramidal_ome_tiff(store, tmp_path / "a.ome.tif", PixelSize(0.5, 0.25))
    with tifffile.TiffFile(tmp_path / "a.ome.tif") as tf:
        assert tf.is_ome and tf.pages[0].is_tiled and tf.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        levels = tf.series[0].levels
        assert [lv.shape for lv in levels] == pyramid_shapes(labels.shape, (96, 64))
        assert len(tf.pages[0].subifds) == len(levels) - 1  # a SubIFD pyramid, as QuPath and Bio-Formats read it
        for k, level in enumerate(levels):
            np.testing.assert_array_equal(level.asarray(), labels[:: 2**k, :: 2**k])
    back = open_large_image(tmp_path / "a.ome.tif")
    assert back.pixel_size == PixelSize(0.5, 0.25)
    np.testing.assert_array_equal(np.asarray(back.array[:]), labels)


def test_a_store_resumes_only_its_own_job(tmp_path, labels) -> None:
    store = LabelStore.create(tmp_path / "p", labels.shape, (96, 64), np.uint8, {"input": "a", "chunks": [64, 96]})
    store.write_block(0, 1, labels[store.block_box(0, 1)])
    again = LabelStore.resume(tmp_path / "p", {"input": "a", "chunks": [32, 32]})  # the block shape is the store's
    assert again is not None and again.done_blocks() == {(0, 1)} and again.chunks == (96, 64)
    assert LabelStore.resume(tmp_path / "p", {"input": "b"}) is None
    assert LabelStore.resume(tmp_path / "nothing", {"input": "a"}) is None


def test_inputs_of_every_kind_with_their_pixel_size(tmp_path) -> None:
    from ome_zarr.format import FormatV04
    from ome_zarr.writer import write_image

    a = np.random.default_rng(1).integers(0, 255, (200, 150), dtype=np.uint8)
    # a pyramidal OME-TIFF (SubIFDs), as Bio-Formats' bfconvert and QuPath write them
    with tifffile.TiffWriter(tmp_path / "p.ome.tif", bigtiff=True, ome=True) as tw:
        meta = {"axes": "YX", "PhysicalSizeX": 0.3, "PhysicalSizeY": 0.3, "PhysicalSizeXUnit": "nm"}
        tw.write(a, tile=(64, 64), subifds=1, metadata=meta)
        tw.write(a[::2, ::2], tile=(64, 64), subfiletype=1)
    # an ImageJ TIFF with its unit; a plain tiled TIFF with a resolution per centimetre; one without any
    tifffile.imwrite(tmp_path / "ij.tif", a, imagej=True, resolution=(2.0, 2.0), metadata={"unit": "micron"})
    tifffile.imwrite(tmp_path / "cm.tif", a, tile=(64, 64), resolution=(1e4 / 0.7, 1e4 / 0.7), resolutionunit=3)
    tifffile.imwrite(tmp_path / "plain.tif", a, tile=(64, 64))
    # OME-Zarr 0.4 (zarr v2) with a channel axis of length one, written by ome-zarr-py
    group = zarr.open_group(str(tmp_path / "c.ome.zarr"), mode="w", zarr_format=2)
    write_image(a[None], group, axes="cyx", fmt=FormatV04(), scale_factors=(2,))
    # OME-Zarr 0.5 (zarr v3, metadata under "ome") with a z axis of length one and a pixel size
    from ome_zarr.format import FormatV05

    group = zarr.open_group(str(tmp_path / "v5.ome.zarr"), mode="w", zarr_format=3)
    write_image(a[None], group, axes="zyx", fmt=FormatV05(), scale_factors=(), scale={"z": 1.0, "y": 0.4, "x": 0.2})
    names = ["p.ome.tif", "ij.tif", "cm.tif", "plain.tif", "c.ome.zarr", "v5.ome.zarr"]
    found = {p: open_large_image(tmp_path / p) for p in names}
    for name, image in found.items():
        assert tuple(image.array.shape) == a.shape, name
        np.testing.assert_array_equal(np.asarray(image.array[20:60, 5:140]), a[20:60, 5:140], err_msg=name)
    assert found["p.ome.tif"].pixel_size == PixelSize(0.3, 0.3, "nanometer")
    assert found["ij.tif"].pixel_size == PixelSize(0.5, 0.5, "micrometer")
    assert found["cm.tif"].pixel_size == pytest.approx(PixelSize(0.7, 0.7))
    assert found["plain.tif"].pixel_size is None
    assert found["v5.ome.zarr"].pixel_size == PixelSize(0.4, 0.2)


def test_bad_inputs_name_the_file(tmp_path) -> None:
    group = zarr.open_group(str(tmp_path / "rgb.ome.zarr"), mode="w", zarr_format=2)
    from ome_zarr.format import FormatV04
    from ome_zarr.writer import write_image

    write_image(np.zeros((3, 40, 30), np.uint8), group, axes="cyx", fmt=FormatV04(), scale_factors=())
    with pytest.raises(ValueError, match=r"rgb\.ome\.zarr.*C=3"):
        open_large_image(tmp_path / "rgb.ome.zarr")
    (tmp_path / "plain.zarr").mkdir()
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w", zarr_format=2)
    with pytest.raises(ValueError, match=r"plain\.zarr.*multiscales"):
        open_large_image(tmp_path / "plain.zarr")
    (tmp_path / "bad.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(ValueError, match=r"bad\.tif: cannot read the TIFF"):
        open_large_image(tmp_path / "bad.tif")
