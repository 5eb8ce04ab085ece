"""The larger-than-RAM path of ``predict`` end to end: many blocks equal in-memory inference, OME-Zarr and
pyramidal OME-TIFF out and in, the pixel size carried, and a killed run resumed from the blocks it wrote."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tifffile
import zarr
from scipy.ndimage import gaussian_filter

from monai_unet.io.large_image import PixelSize, open_large_image
from monai_unet.io.ome_zarr import LabelStore
from monai_unet.predict import predict
from monai_unet.predict.large_image import BlockWorker, partial_path

BLOCKS_MB = 4  # an activation budget that cuts the test image into about 6 x 6 blocks of the narrow network


def run(runner, inputs, out, **kwargs):
    kwargs.setdefault("large_threshold", 0)
    kwargs.setdefault("large_memory_mb", BLOCKS_MB)
    return predict(
        runner.bundle, [str(i) for i in inputs], out, runner=runner, progress=False, stream=io.StringIO(), **kwargs
    )


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """A 300 x 260 tiled TIFF with a pixel size (0.25 um rows, 0.5 um columns) and its in-memory segmentation."""
    rng = np.random.default_rng(0)
    a = (gaussian_filter(rng.normal(size=(300, 260)), 3) * 800 + 128).clip(0, 255).astype(np.uint8)
    path = tmp_path_factory.mktemp("large") / "img.tif"
    tifffile.imwrite(
        path, a, tile=(64, 64), photometric="minisblack", resolution=(1e4 / 0.5, 1e4 / 0.25), resolutionunit=3
    )
    return path, a


@pytest.fixture(scope="module")
def in_memory(runners, image, tmp_path_factory):
    out = tmp_path_factory.mktemp("mem")
    results = run(runners["unet2d_membrane"], [image[0]], out, large_threshold=10**9)
    assert results[0].status == "done", results[0].reason
    return tifffile.imread(out / "img_seg.tif")


def read_labels(path):
    if path.name.endswith(".ome.zarr"):
        return zarr.open_array(str(path / "labels" / "segmentation" / "0"), mode="r")[:]
    return tifffile.imread(path)


@pytest.mark.parametrize("fmt", ["ome-tiff", "ome-zarr"])
def test_many_blocks_equal_in_memory_inference(runners, image, in_memory, tmp_path, fmt):
    results = run(runners["unet2d_membrane"], [image[0]], tmp_path, large_format=fmt)
    assert results[0].status == "done", results[0].reason
    out = results[0].outputs[0]
    assert out.name == ("img_seg.ome.zarr" if fmt == "ome-zarr" else "img_seg.ome.tif")
    assert not partial_path(out).exists()  # the partial store became the output, or was removed
    if fmt == "ome-zarr":
        grid = zarr.open_array(str(out / "labels" / "segmentation" / "0"), mode="r").chunks
        assert 300 / grid[0] >= 4 and 260 / grid[1] >= 4  # really many blocks
    np.testing.assert_array_equal(read_labels(out), in_memory)
    got = open_large_image(out)
    assert got.pixel_size == PixelSize(0.25, 0.5)  # from the TIFF's resolution to the output


def test_ome_zarr_and_pyramidal_ome_tiff_inputs(runners, image, in_memory, tmp_path):
    from ome_zarr.format import FormatV04
    from ome_zarr.writer import write_image

    _, a = image
    group = zarr.open_group(str(tmp_path / "in" / "z.ome.zarr"), mode="w", zarr_format=2)
    write_image(a[None, None], group, axes="tcyx", fmt=FormatV04(), scale_factors=(2,))
    with tifffile.TiffWriter(tmp_path / "in" / "p.ome.tif", bigtiff=True, ome=True) as tw:
        tw.write(a, tile=(64, 64), subifds=1, metadata={"axes": "YX", "PhysicalSizeX": 2.0, "PhysicalSizeY": 2.0})
        tw.write(a[::2, ::2], tile=(64, 64), subfiletype=1)
    # OME-Zarr images always take this path, whatever the threshold; the folder is one input, not searched
    results = run(runners["unet2d_membrane"], [tmp_path / "in"], tmp_path / "out", large_threshold=10**9)
    assert [r.status for r in results] == ["done", "done"], [r.reason for r in results]
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"p_seg.tif", "z_seg.ome.tif"}  # p.ome.tif is small
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / "z_seg.ome.tif"), in_memory)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / "p_seg.tif"), in_memory)
    results = run(runners["unet2d_membrane"], [tmp_path / "in" / "p.ome.tif"], tmp_path / "out2")
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out2" / "p_seg.ome.tif"), in_memory)
    assert open_large_image(tmp_path / "out2" / "p_seg.ome.tif").pixel_size == PixelSize(2.0, 2.0)


def test_existing_outputs_are_kept_without_overwrite(runners, image, tmp_path):
    runner = runners["unet2d_membrane"]
    out = tmp_path / "img_seg.ome.zarr"
    out.mkdir()
    (out / "mine.txt").write_text("the user's")
    assert run(runner, [image[0]], tmp_path, large_format="ome-zarr")[0].status == "skipped"
    assert (out / "mine.txt").read_text() == "the user's"
    assert run(runner, [image[0]], tmp_path, large_format="ome-zarr", overwrite=True)[0].status == "done"
    assert not (out / "mine.txt").exists() and (out / "labels").is_dir()


class Interrupt(Exception):
    pass


def test_a_killed_run_resumes_from_the_blocks_it_wrote(runners, image, in_memory, tmp_path, monkeypatch):
    runner = runners["unet2d_membrane"]
    computed = []
    compute = BlockWorker.compute
    monkeypatch.setattr(BlockWorker, "compute", lambda self, x: computed.append(1) or compute(self, x))
    write = LabelStore.write_block

    def dying_write(self, i, j, data):
        if len(self.done_blocks()) == 7:
            raise Interrupt("killed")
        write(self, i, j, data)

    monkeypatch.setattr(LabelStore, "write_block", dying_write)
    first = run(runner, [image[0]], tmp_path)
    assert first[0].status == "failed" and "killed" in first[0].reason
    out = tmp_path / "img_seg.ome.tif"
    assert not out.exists()  # no output half-written
    store = LabelStore(partial_path(out))
    assert len(store.done_blocks()) == 7
    total = int(np.prod(store.grid))
    # a block whose chunk was written but not marked is not taken as complete: garbage in one, no marker
    i, j = next((i, j) for i in range(store.grid[0]) for j in range(store.grid[1]) if (i, j) not in store.done_blocks())
    store.array[store.block_box(i, j)] = 77
    monkeypatch.setattr(LabelStore, "write_block", write)
    computed.clear()
    again = run(runner, [image[0]], tmp_path)
    assert again[0].status == "done", again[0].reason
    assert len(computed) == total - 7  # only the blocks not marked
    np.testing.assert_array_equal(tifffile.imread(out), in_memory)
    assert not partial_path(out).exists()


def test_a_partial_store_of_another_job_is_not_resumed(runners, image, checkpoints, tmp_path, monkeypatch):
    runner = runners["unet2d_membrane"]
    out = tmp_path / "img_seg.ome.tif"
    store = LabelStore.create(partial_path(out), (300, 260), (64, 64), np.uint8, {"input": "another image"})
    for i in range(5):
        for j in range(5):
            store.write_block(i, j, np.full(store.array[store.block_box(i, j)].shape, 9, np.uint8))
    results = run(runner, [image[0]], tmp_path)
    assert results[0].status == "done", results[0].reason
    assert 9 not in np.unique(tifffile.imread(out))
