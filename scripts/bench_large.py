"""B3: the larger-than-RAM path of ``monai-unet predict`` against in-memory inference, and its memory, in one run.

For the 2D bundle's network (features 16-256, seeded random weights unless ``--checkpoint``) this measures, each
in a child process of its own (so each starts cold, as a ``monai-unet predict`` run does, and its peak RSS is its
own, read by ``os.wait4``):

- throughput (output megapixels per second of the timed call) of the in-memory ``OverlapTileInferer()`` (default
  settings, the image already a tensor) and of the large path (``predict(..., large_threshold=0)``: lazy TIFF in,
  pipelined blocks, pyramidal OME-TIFF out) on the same image (``--compare-size``), and their ratio (goal >= 0.9);
- peak RSS of the large path per size (``--sizes``; goal <= 1536 MiB whatever the size), and one run of a narrower
  network (``--narrow-features`` at ``--narrow-size``, e.g. 32768);
- the large path on a local Dask cluster of 1 and 2 worker processes (``--dask-size``), one thread each;
- that the large path's labels equal in-memory inference (the bundle's own ``BundleRunner``) on a crop.

It ends with a markdown table for the README's B3. Images are written tile by tile, never whole in memory.

    python scripts/bench_large.py                       # 4096 and 16384, narrow 32768, Dask at 4096: hours on 2 cores
    python scripts/bench_large.py --quick               # 1024/2048, narrow 2048, Dask at 1024: a few minutes
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_memory import BUNDLE, make_checkpoint, write_tiff

CHILD_LARGE = """
import json, sys, time
from monai_unet.predict import BundleRunner, predict
ckpt, image, out, memory_mb, dask, features = sys.argv[1:7]
overrides = {"features": json.loads(features)} if features != "null" else None
runner = BundleRunner("BUNDLE", checkpoint=ckpt, device="cpu", overrides=overrides)
if dask.startswith("local:"):  # the cluster started and its workers ready before the clock starts
    import distributed
    from monai_unet.predict.distributed import prepare_workers
    cluster = distributed.LocalCluster(n_workers=int(dask[6:]), threads_per_worker=1, dashboard_address=None)
    with distributed.Client(cluster) as client:
        prepare_workers(client, runner.spec)
    dask = cluster.scheduler_address
t0 = time.perf_counter()
r = predict(runner.bundle, [image], out, runner=runner, large_threshold=0, large_memory_mb=int(memory_mb),
            overwrite=True, progress=False, dask=None if dask == "none" else dask)
dt = time.perf_counter() - t0
assert r[0].status == "done", r[0].reason
print(json.dumps({"seconds": dt}))
""".replace("BUNDLE", BUNDLE)

CHILD_MEMORY = """
import json, sys, time
import numpy as np, tifffile, torch
from monai_unet.inferers import OverlapTileInferer
from monai_unet.predict import BundleRunner
ckpt, image, features = sys.argv[1:4]
overrides = {"features": json.loads(features)} if features != "null" else None
runner = BundleRunner("BUNDLE", checkpoint=ckpt, device="cpu", overrides=overrides)
a = tifffile.imread(image)
x = torch.from_numpy(a.T.astype(np.float32))[None, None]
x = (x - x.min()) / (x.max() - x.min())  # the bundle's ScaleIntensityd
del a
with torch.no_grad():
    t0 = time.perf_counter()
    y = OverlapTileInferer()(x, runner.network)
    dt = time.perf_counter() - t0
print(json.dumps({"seconds": dt, "shape": list(y.shape)}))
""".replace("BUNDLE", BUNDLE)


class Child:
    """A child process whose peak RSS is its own (``os.wait4`` on its pid)."""

    @staticmethod
    def run(code: str, args: list[str], threads: int) -> tuple[dict, float]:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        with tempfile.TemporaryFile(mode="w+") as out, tempfile.TemporaryFile(mode="w+") as err:
            proc = subprocess.Popen([sys.executable, "-c", code, *args], env=env, stdout=out, stderr=err, text=True)
            _, status, usage = os.wait4(proc.pid, 0)
            out.seek(0)
            err.seek(0)
            text, errors = out.read(), err.read()
        rss = usage.ru_maxrss / 1024.0
        if os.waitstatus_to_exitcode(status) != 0:
            print(errors[-3000:], file=sys.stderr)
            return {"error": os.waitstatus_to_exitcode(status)}, rss
        return json.loads(text.strip().splitlines()[-1]), rss


def crop_equal(image: Path, output: Path, ckpt: Path, features: list[int] | None, crop: int) -> float:
    """Fraction of a crop's interior (the halo in from its mirrored borders) where the large path's labels equal the
    bundle's in-memory inference of the crop; the crop is on the pooling grid, and every 512 tile of the image holds
    a 0 and a 255, so the crop's min-max scaling is the image's."""
    import torch
    from monai.data import MetaTensor

    from monai_unet.io.large_image import open_large_image
    from monai_unet.predict.runner import BundleRunner

    runner = BundleRunner(BUNDLE, checkpoint=ckpt, device="cpu", overrides={"features": features} if features else None)
    src = open_large_image(image).array
    size = int(src.shape[0])
    crop = min(crop, size)
    off = max(0, (size // 2 - crop // 2) // 512 * 512)
    block = np.asarray(src[off : off + crop, off : off + crop])
    res = runner.run(MetaTensor(torch.from_numpy(block.T[None].astype(np.float32))))
    ours = np.asarray(res["pred"][0]).T.astype(np.uint8)
    tiled = np.asarray(open_large_image(output).array[off : off + crop, off : off + crop])
    m = max(runner.network.halo)
    return float((ours[m:-m, m:-m] == tiled[m:-m, m:-m]).mean())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384], help="large-path sizes (RSS, MP/s)")
    ap.add_argument("--compare-size", type=int, default=4096, help="in-memory vs large path on this size")
    ap.add_argument("--narrow-size", type=int, default=32768, help="one run of the narrow network (0: none)")
    ap.add_argument("--narrow-features", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    ap.add_argument("--dask-size", type=int, default=4096, help="size of the Dask runs (0: none)")
    ap.add_argument("--memory-mb", type=int, default=192, help="--large-memory-mb of the large path")
    ap.add_argument("--crop", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--quick", action="store_true", help="1024/2048, narrow 2048, Dask at 1024 (a check of the script)")
    args = ap.parse_args()
    if args.quick:
        args.sizes, args.compare_size, args.narrow_size, args.dask_size = [1024, 2048], 1024, 2048, 1024
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_large_"))
    work.mkdir(parents=True, exist_ok=True)
    ckpt = Path(args.checkpoint) if args.checkpoint else make_checkpoint(work / "model.pt", None)
    narrow = make_checkpoint(work / "model_narrow.pt", args.narrow_features) if args.narrow_size else None
    print(f"work dir {work}; {args.threads} threads; large path with --large-memory-mb {args.memory_mb}", flush=True)

    def image(size: int) -> Path:
        path = work / f"img{size}.tif"
        if not path.exists():
            t0 = time.perf_counter()
            write_tiff(path, size)
            print(f"wrote {path.name} ({time.perf_counter() - t0:.0f} s)", flush=True)
        return path

    def large(size: int, ck: Path, features: list[int] | None, dask: str = "none") -> tuple[dict, float, Path]:
        out = work / f"out{size}{'_narrow' if features else ''}{'_' + dask.replace(':', '') if dask != 'none' else ''}"
        res, rss = Child.run(
            CHILD_LARGE, [str(ck), str(image(size)), str(out), str(args.memory_mb), dask, json.dumps(features)],
            args.threads,
        )  # fmt: skip
        mpx = size * size / 1e6 / res["seconds"] if "seconds" in res else float("nan")
        print(f"  large {size}^2 {'narrow ' if features else ''}{dask}: {res} peak {rss:.0f} MiB, {mpx:.3f} MP/s")
        return {**res, "mpx": mpx}, rss, out / f"img{size}_seg.ome.tif"

    rows = []  # (what, size, network, MP/s, peak RSS)
    mem, mem_rss = Child.run(CHILD_MEMORY, [str(ckpt), str(image(args.compare_size)), "null"], args.threads)
    mem_mpx = args.compare_size**2 / 1e6 / mem["seconds"] if "seconds" in mem else float("nan")
    print(f"  in memory {args.compare_size}^2: {mem} peak {mem_rss:.0f} MiB, {mem_mpx:.3f} MP/s", flush=True)
    rows.append(("in memory, OverlapTileInferer()", args.compare_size, "bundle", mem_mpx, mem_rss))
    outputs = {}
    for size in sorted(set(args.sizes) | {args.compare_size}):
        res, rss, outputs[size] = large(size, ckpt, None)
        rows.append(("larger-than-RAM path", size, "bundle", res["mpx"], rss))
    ratio = next(r[3] for r in rows if r[0].startswith("larger") and r[1] == args.compare_size) / mem_mpx
    if args.narrow_size:
        res, rss, _ = large(args.narrow_size, narrow, args.narrow_features)
        rows.append(("larger-than-RAM path", args.narrow_size, "features " + "-".join(map(str, args.narrow_features)),
                     res["mpx"], rss))  # fmt: skip
    for n in (1, 2) if args.dask_size else ():
        res, rss, _ = large(args.dask_size, ckpt, None, f"local:{n}")
        rows.append(
            (f"larger-than-RAM path, Dask local:{n} (1 thread each)", args.dask_size, "bundle", res["mpx"], rss)
        )
    largest = max(args.sizes)
    same = crop_equal(image(largest), outputs[largest], ckpt, None, args.crop)

    print()
    print("| run | image | network | MP/s | peak RSS |")
    print("|---|---|---|---|---|")
    for what, size, net, mpx, rss in rows:
        rss_text = f"{rss:.0f} MiB" if "Dask" not in what else f"{rss:.0f} MiB (client)"
        print(f"| {what} | {size} x {size} | {net} | {mpx:.3f} | {rss_text} |")
    peak = max(r[4] for r in rows if r[0] == "larger-than-RAM path")
    print()
    print(
        f"large / in-memory throughput at {args.compare_size}^2: {ratio:.2f}x (goal >= 0.9); peak RSS of the large "
        f"path {peak:.0f} MiB (goal <= 1536); labels equal in-memory inference on a {args.crop}^2 crop of the "
        f"{largest}^2 image: {same:.6f}"
    )
    ok = ratio >= 0.9 and peak <= 1536 and same == 1.0
    print("B3:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
