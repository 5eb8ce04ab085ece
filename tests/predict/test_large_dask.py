"""``predict --dask``: a large image's blocks and a cohort's inputs on a LocalCluster of two worker processes give
the single-process result."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tifffile
from scipy.ndimage import gaussian_filter

from monai_unet.predict import predict
from monai_unet.predict.large_image import partial_path

distributed = pytest.importorskip("distributed", reason="the Dask tests need monai-unet[dask]")


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, worker_class=distributed.Nanny
    ) as c:
        yield c


def _built_here() -> tuple[int, int]:
    from monai_unet.predict import distributed as d

    return len(d._RUNNERS), len(d._WORKERS)


def run(runner, inputs, out, **kwargs):
    return predict(
        runner.bundle, [str(i) for i in inputs], out, runner=runner, progress=False, stream=io.StringIO(), **kwargs
    )


def test_blocks_and_inputs_on_two_workers_equal_one_process(runners, cluster, tmp_path):
    runner = runners["unet2d_membrane"]
    rng = np.random.default_rng(3)
    images = tmp_path / "in"
    images.mkdir()
    big = (gaussian_filter(rng.normal(size=(260, 230)), 3) * 800 + 128).clip(0, 255).astype(np.uint8)
    tifffile.imwrite(images / "big.tif", big, tile=(64, 64), photometric="minisblack")
    for k in range(3):  # a cohort of small images
        small = (gaussian_filter(rng.normal(size=(120, 100)), 2) * 800 + 128).clip(0, 255).astype(np.uint8)
        tifffile.imwrite(images / f"small{k}.tif", small, photometric="minisblack")
    options = {"large_threshold": 200 * 200, "large_memory_mb": 4, "large_format": "ome-zarr"}
    alone = run(runner, [images], tmp_path / "alone", **options)
    assert [r.status for r in alone] == ["done"] * 4, [r.reason for r in alone]
    spread = run(runner, [images], tmp_path / "dask", dask=cluster.scheduler_address, **options)
    assert [r.status for r in spread] == ["done"] * 4, [r.reason for r in spread]
    import zarr

    out = tmp_path / "dask" / "big_seg.ome.zarr"
    a = zarr.open_array(str(tmp_path / "alone" / "big_seg.ome.zarr" / "labels" / "segmentation" / "0"))[:]
    b = zarr.open_array(str(out / "labels" / "segmentation" / "0"))[:]
    np.testing.assert_array_equal(a, b)
    assert len(np.unique(b)) == 2 and not partial_path(out).exists()
    # the blocks really ran on both workers (each built its runner and a block worker for the image)
    with distributed.Client(cluster) as client:
        built = client.run(_built_here)
    assert len(built) == 2 and all(runners_ and blocks for runners_, blocks in built.values()), built
    for k in range(3):
        np.testing.assert_array_equal(
            tifffile.imread(tmp_path / "alone" / f"small{k}_seg.tif"),
            tifffile.imread(tmp_path / "dask" / f"small{k}_seg.tif"),
        )


def test_bad_address_is_refused(runners, tmp_path):
    from monai_unet.predict.distributed import connect

    with pytest.raises(ValueError, match="scheduler address"), connect("nowhere"):
        pass
    with pytest.raises(ValueError, match="at least 1"), connect("local:0"):
        pass
