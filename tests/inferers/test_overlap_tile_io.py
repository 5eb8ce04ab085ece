"""OverlapTileInferer on arrays larger than memory: lazily read inputs and outputs written tile by tile."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from monai_unet.inferers import OverlapTileInferer
from monai_unet.networks import UNet


def make_net(dims: int = 2) -> UNet:
    torch.manual_seed(0)
    return UNet(dims, 1, 2, features=(4, 8, 16) if dims == 2 else (4, 8)).eval()


class CountingArray:
    """A read-only array that records every region read (what a lazy reader would fetch from disk)."""

    def __init__(self, data: np.ndarray) -> None:
        self.data = data
        self.shape = data.shape
        self.dtype = data.dtype
        self.reads: list[int] = []

    def __getitem__(self, index: tuple) -> np.ndarray:
        block = self.data[index]
        self.reads.append(block.size)
        return block


def reference(net: UNet, image: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        return OverlapTileInferer(tile_search="flops")(torch.from_numpy(image.astype(np.float32))[None, None], net)[0]


@pytest.mark.parametrize("dims", [2, 3])
def test_lazy_input_is_read_tile_by_tile(dims: int) -> None:
    rng = np.random.default_rng(0)
    image = rng.standard_normal((150, 131) if dims == 2 else (60, 45, 40)).astype(np.float32)
    src = CountingArray(image)
    net = make_net(dims)
    tile = 84 if dims == 2 else 36
    with torch.no_grad():
        y = OverlapTileInferer(tile_size=tile)(src, net)
    assert y.shape == (1, 2, *image.shape)
    torch.testing.assert_close(y[0], reference(net, image), rtol=0, atol=1e-5)
    assert len(src.reads) > 1
    assert max(src.reads) <= tile**dims < image.size  # never the whole image, at most one tile per read


def test_memmap_in_memmap_out(tmp_path) -> None:
    image = np.lib.format.open_memmap(tmp_path / "in.npy", mode="w+", dtype=np.uint8, shape=(2, 1, 97, 120))
    image[:] = np.random.default_rng(1).integers(0, 255, image.shape, dtype=np.uint8)
    out = np.lib.format.open_memmap(tmp_path / "out.npy", mode="w+", dtype=np.float32, shape=(2, 2, 97, 120))
    net = make_net()
    with torch.no_grad():
        got = OverlapTileInferer(tile_size=76, sw_batch_size=3)(image, net, out=out)
        ref = OverlapTileInferer(tile_search="flops")(torch.from_numpy(np.asarray(image, dtype=np.float32)), net)
    assert got is out
    np.testing.assert_allclose(np.asarray(out), ref.numpy(), rtol=0, atol=1e-5 * float(ref.abs().max()))


@pytest.mark.parametrize("overlap", [0.0, 0.5])
@pytest.mark.parametrize("layout", ["CS", "S"])
def test_zarr_in_zarr_out(tmp_path, overlap: float, layout: str) -> None:
    import zarr

    rng = np.random.default_rng(2)
    image = rng.standard_normal((70, 91)).astype(np.float32)
    shape_in = (1, 70, 91) if layout == "CS" else (70, 91)
    src = zarr.open_array(tmp_path / "in.zarr", mode="w", shape=shape_in, chunks=(1, 32, 32)[-len(shape_in) :])
    src[...] = image.reshape(shape_in)
    dst = zarr.open_array(tmp_path / "out.zarr", mode="w", shape=(2, 70, 91), chunks=(1, 32, 32), dtype="f4")
    net = make_net()
    with torch.no_grad():
        OverlapTileInferer(tile_size=68, overlap=overlap, mode="gaussian")(src, net, out=dst)
    ref = reference(net, image).numpy()
    np.testing.assert_allclose(dst[...], ref, rtol=0, atol=1e-5 * float(np.abs(ref).max()))


def test_tifffile_zarr_store(tmp_path) -> None:
    import tifffile
    import zarr

    image = np.random.default_rng(3).integers(0, 255, (130, 101), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "img.tif", image, tile=(64, 64))
    with tifffile.imread(tmp_path / "img.tif", aszarr=True) as store:
        src = zarr.open(store, mode="r")
        with torch.no_grad():
            y = OverlapTileInferer(tile_size=84)(src, make_net())
    ref = reference(make_net(), image)
    torch.testing.assert_close(y[0], ref, rtol=0, atol=1e-5 * float(ref.abs().max()))


def test_out_shape_is_checked(tmp_path) -> None:
    out = np.zeros((3, 40, 40), dtype=np.float32)
    with torch.no_grad(), pytest.raises(ValueError, match="out has shape"):
        OverlapTileInferer()(torch.randn(1, 1, 40, 40), make_net(), out=out)


def test_single_channel_output_into_spatial_array() -> None:
    torch.manual_seed(0)
    net = UNet(2, 1, 1, features=(4, 8, 16)).eval()
    image = np.random.default_rng(4).standard_normal((50, 61)).astype(np.float32)
    out = np.zeros((50, 61), dtype=np.float32)
    with torch.no_grad():
        OverlapTileInferer(tile_size=60)(image, net, out=out)
        ref = OverlapTileInferer(tile_search="flops")(torch.from_numpy(image)[None, None], net)[0, 0]
    assert math.isclose(float(np.abs(out - ref.numpy()).max()), 0.0, abs_tol=1e-5 * float(ref.abs().max()))
