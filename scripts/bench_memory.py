"""B3: peak memory of ``monai-unet predict`` on 2D TIFFs larger than RAM, and that it does not grow with the image.

For each size (default 4096, 8192, 16384 px square) a tiled uint8 TIFF is written tile by tile (never whole in
memory) and segmented by ``monai-unet predict --large-threshold 0`` in a subprocess (lazy reading, per-tile
preprocessing, blocks into a resumable OME-Zarr store whose chunks become the pyramidal OME-TIFF). The child's
peak RSS (``os.wait4``) and wall time are reported, beside the RSS of a child that only imports the same modules
(the fixed cost). Then:

- crop check: the bundle's in-memory inference (``BundleRunner``) on a crop of the largest image equals the tiled
  output on that crop's interior (away from the crop's mirrored borders by the network's halo); every 512 tile of
  the image holds a 0 and a 255, so the whole-image min/max scaling equals the crop's;
- MONAI's ``SlidingWindowInferer`` (roi 512, overlap 0.25, gaussian, on the ``padding="same"`` twin) on a
  4096x4096 crop held in memory, its peak RSS, and that peak scaled (above the import floor) to the largest size.

Usage: ``python scripts/bench_memory.py`` (the bundle's network, 4096/8192/16384: about 45 min on 2 CPU cores);
``--features 8 16 32 64 128 --sizes 4096 16384`` (a narrower network, about 15 min); ``--size 2048`` for a quick
check (sizes 512, 1024, 2048). The network is the 2D bundle's (features 16..256) with seeded random weights unless
``--checkpoint`` is given: memory and time do not depend on the weights. "MB" in the table are MiB (2**20 bytes).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BUNDLE = "unet2d_membrane"
TILE = 512


def write_tiff(path: Path, size: int, seed: int = 0) -> None:
    """A ``size`` x ``size`` uint8 tiled TIFF, made tile by tile; each tile holds a 0 and a 255."""
    import tifffile
    from scipy.ndimage import uniform_filter

    def tiles():
        for r in range(0, size, TILE):
            for c in range(0, size, TILE):
                rng = np.random.default_rng(seed * 1_000_003 + r * 7919 + c)
                t = uniform_filter(rng.normal(128, 60, (TILE, TILE)), 5)
                t = np.clip(t * 2 - 128, 0, 255).astype(np.uint8)
                t[0, 0], t[-1, -1] = 0, 255
                yield t

    tifffile.imwrite(path, tiles(), shape=(size, size), dtype=np.uint8, tile=(TILE, TILE), photometric="minisblack")


def run_child(cmd: list[str], threads: int) -> tuple[float, float, int]:
    """Run ``cmd``; return (peak RSS in MB, wall seconds, exit code)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    proc.stderr.close()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        print(err[-3000:], file=sys.stderr)
    return usage.ru_maxrss / 1024.0, wall, code


def make_checkpoint(path: Path, features: list[int] | None) -> Path:
    import torch
    from monai.bundle import ConfigParser

    from monai_unet.bundles import bundle_config, find_bundle

    parser = ConfigParser()
    parser.read_config(str(bundle_config(find_bundle(BUNDLE), "inference")))
    if features:
        parser["features"] = features
    torch.manual_seed(0)
    torch.save(parser.get_parsed_content("network_def").state_dict(), path)
    return path


IMPORT_ONLY = "import torch, monai, zarr, tifffile; import monai_unet.predict"

SWI_CHILD = """
import sys, numpy as np, torch, tifffile, zarr
from monai.bundle import ConfigParser
from monai.inferers import SlidingWindowInferer
from monai_unet.bundles import bundle_config, find_bundle
torch.set_num_threads({threads})
p = ConfigParser(); p.read_config(str(bundle_config(find_bundle("{bundle}"), "inference")))
p["network_def"]["padding"] = "same"
if {features}:
    p["features"] = {features}
net = p.get_parsed_content("network_def").eval()
crop = np.asarray(zarr.open(tifffile.imread(sys.argv[1], aszarr=True), mode="r")[:{crop}, :{crop}])  # the crop only
x = torch.from_numpy(crop.T.astype(np.float32) / 255.0)[None, None]
del crop
with torch.no_grad():
    y = SlidingWindowInferer(roi_size=(512, 512), sw_batch_size=1, overlap=0.25, mode="gaussian")(x, net)
print(tuple(y.shape))
"""


def crop_check(
    image: Path, output: Path, checkpoint: Path, size: int, crop: int, features: list[int] | None
) -> tuple[float, int]:
    """Fraction of interior crop pixels where the bundle's in-memory result equals the tiled output."""
    import tifffile
    import torch
    import zarr
    from monai.data import MetaTensor

    from monai_unet.predict.runner import BundleRunner

    runner = BundleRunner(
        BUNDLE, checkpoint=checkpoint, device="cpu", overrides={"features": features} if features else None
    )
    halo = max(runner.network.halo)
    off = max(0, (size // 2 - crop // 2) // TILE * TILE)  # on the pooling grid and on the TIFF's tiles
    with tifffile.TiffFile(image) as tf:
        block = np.asarray(zarr.open(tf.aszarr(), mode="r")[off : off + crop, off : off + crop])
    res = runner.run(MetaTensor(torch.from_numpy(block.T[None].astype(np.float32))))
    ours = np.asarray(res["pred"][0]).T.astype(np.uint8)
    with tifffile.TiffFile(output) as tf:  # the full-resolution level of the pyramidal OME-TIFF
        tiled = zarr.open(tf.aszarr(series=0, level=0), mode="r")[off : off + crop, off : off + crop]
    m = halo
    same = float((ours[m:-m, m:-m] == np.asarray(tiled)[m:-m, m:-m]).mean())
    return same, halo


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=None, help="largest size; sizes are size/4, size/2, size")
    ap.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192, 16384])
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--workdir", default=None, help="where images and outputs go (default: a temporary folder)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--crop", type=int, default=1024, help="crop size of the equality check")
    ap.add_argument("--swi-crop", type=int, default=4096, help="crop for MONAI's SlidingWindowInferer peak")
    ap.add_argument("--features", type=int, nargs="+", default=None, help="override the bundle's features")
    args = ap.parse_args()
    sizes = [args.size // 4, args.size // 2, args.size] if args.size else sorted(args.sizes)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_memory_"))
    work.mkdir(parents=True, exist_ok=True)
    tag = "" if not args.features else "_f" + "-".join(map(str, args.features))
    ckpt = Path(args.checkpoint) if args.checkpoint else make_checkpoint(work / f"model{tag}.pt", args.features)
    extra = ["--set", f"features={json.dumps(args.features)}"] if args.features else []
    print(
        f"work dir {work}; network: {BUNDLE} bundle, features {args.features or 'of the bundle'}; "
        f"{args.threads} threads"
    )

    floor, _, _ = run_child([sys.executable, "-c", IMPORT_ONLY], args.threads)
    rows = []
    for size in sizes:
        img = work / f"img{size}.tif"
        if not img.exists():
            t0 = time.perf_counter()
            write_tiff(img, size)
            print(f"wrote {img} ({size}x{size}, {time.perf_counter() - t0:.0f} s)", flush=True)
        out = work / f"out{size}{tag}"
        cmd = [sys.executable, "-m", "monai_unet.cli", "predict", "--bundle", BUNDLE, "--checkpoint", str(ckpt),
               "--input", str(img), "--output", str(out), "--large-threshold", "0", "--device", "cpu",
               "--no-progress", "--overwrite", *extra]  # fmt: skip
        rss, wall, code = run_child(cmd, args.threads)
        rows.append((size, rss, wall, code))
        print(f"  {size:>6}^2  peak RSS {rss:7.0f} MB  wall {wall:7.1f} s  exit {code}", flush=True)

    largest = sizes[-1]
    swi_crop = min(args.swi_crop, largest)
    child = SWI_CHILD.format(threads=args.threads, bundle=BUNDLE, crop=swi_crop, features=args.features)
    swi_rss, swi_wall, swi_code = run_child(
        [sys.executable, "-c", child, str(work / f"img{largest}.tif")], args.threads
    )
    scaled = floor + (swi_rss - floor) * (largest / swi_crop) ** 2
    same, halo = crop_check(
        work / f"img{largest}.tif",
        work / f"out{largest}{tag}" / f"img{largest}_seg.ome.tif",
        ckpt,
        largest,
        args.crop,
        args.features,
    )

    print()
    print(f"{'image':>12} {'Mpx':>7} {'peak RSS MB':>12} {'wall s':>8} {'Mpx/s':>7}")
    print(f"{'(imports)':>12} {'':>7} {floor:12.0f}")
    for size, rss, wall, code in rows:
        flag = "" if code == 0 else f"  FAILED (exit {code})"
        print(f"{size:>7}^2 {size * size / 1e6:7.1f} {rss:12.0f} {wall:8.1f} {size * size / 1e6 / wall:7.2f}{flag}")
    print(
        f"MONAI SlidingWindowInferer (same-padded twin, roi 512, overlap 0.25, in memory) on a {swi_crop}^2 crop: "
        f"peak {swi_rss:.0f} MB, {swi_wall:.0f} s{'' if swi_code == 0 else ' FAILED'}; scaled to {largest}^2: "
        f"{scaled:.0f} MB"
    )
    print(
        f"crop check: {args.crop}^2 crop, interior (halo {halo} px in): {same:.6f} of pixels equal in-memory inference"
    )
    peak = max(r[1] for r in rows)
    growth = rows[-1][1] - rows[0][1]
    ok = peak <= 1536 and same == 1.0 and all(r[3] == 0 for r in rows)
    print(
        f"B3: peak RSS {peak:.0f} MB for up to {largest}^2 (goal <= 1536 MB), {growth:+.0f} MB from {sizes[0]}^2 to "
        f"{largest}^2, {scaled / peak:.1f}x less than MONAI's in-memory sliding window scaled; crop equal: {same:.6f}"
        f" -> {'PASS' if ok else 'FAIL'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
