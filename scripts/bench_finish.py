"""What the larger-than-RAM path spends after the network: the pyramid, and the OME-TIFF assembled from the store.

The large path writes each block once, into a resumable OME-Zarr store (kill and resume, parallel Dask workers
need a chunk-addressable store); for ``--large-format ome-tiff`` it then copies the store's zlib chunks, as they
are, into the tiles of a pyramidal OME-TIFF. This times those stages on a label map of ``--size`` squared, written
block by block into a store as the path writes it (membrane-like labels: thresholded smooth noise, 2 classes), so
their cost can be set beside the network's (B3: 16384^2 took 273 s of compute at 0.983 MP/s).

    python scripts/bench_finish.py                 # 16384^2, 1024^2 blocks (about a minute)
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from monai_unet.io.large_image import PixelSize, open_large_image
from monai_unet.io.ome_tiff import write_pyramidal_ome_tiff
from monai_unet.io.ome_zarr import LabelStore


def labels(shape: tuple[int, int], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    smooth = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), 6.0)
    return (smooth > 0.01).astype(np.uint8)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=16384)
    ap.add_argument("--block", type=int, default=1024)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_finish_"))
    work.mkdir(parents=True, exist_ok=True)
    store = LabelStore.create(work / "x.ome.zarr", (args.size, args.size), (args.block, args.block), np.uint8, {})
    gi, gj = store.grid
    t0 = time.perf_counter()
    for i in range(gi):
        for j in range(gj):
            rows, cols = store.block_box(i, j)
            store.write_block(i, j, labels((rows.stop - rows.start, cols.stop - cols.start), i * gj + j))
    t_blocks = time.perf_counter() - t0
    t0 = time.perf_counter()
    shapes = store.build_pyramid()
    store.write_metadata(PixelSize(0.004, 0.004, "micrometer"), 2, "synthetic")
    t_pyramid = time.perf_counter() - t0
    out = work / "x.ome.tif"
    t0 = time.perf_counter()
    write_pyramidal_ome_tiff(store, out, PixelSize(0.004, 0.004, "micrometer"))
    t_tiff = time.perf_counter() - t0
    stored = sum(f.stat().st_size for f in (store.level_dir / "0").rglob("*") if f.is_file())
    # the copy is faithful: a block read back from the TIFF equals the store's
    i, j = gi // 2, gj // 2
    box = store.block_box(i, j)
    same = np.array_equal(np.asarray(open_large_image(out).array[box]), np.asarray(store.array[box]))
    print(f"{args.size}^2 labels in {gi * gj} blocks of {args.block}^2, {len(shapes)} pyramid levels")
    print(f"  blocks into the store (labels made and written): {t_blocks:.1f} s; level 0 {stored / 2**20:.1f} MiB")
    print(f"  pyramid (levels 1..) and NGFF metadata: {t_pyramid:.1f} s")
    print(f"  OME-TIFF assembled from the store's chunks: {t_tiff:.2f} s ({out.stat().st_size / 2**20:.1f} MiB)")
    print(f"  a block read back from the OME-TIFF equals the store's: {same}")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
