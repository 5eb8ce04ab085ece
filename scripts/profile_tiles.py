"""Where inference time goes as the tile grows: FLOPs per output pixel against the speed one forward reaches.

For the benchmark networks of ``bench_inference.py`` (2D: features 16-256, depth 4; 3D: features 8-64, depth 3)
and a range of valid tile sizes, times one plain forward (best of ``--repeat``) and prints, per tile: output
size, FLOPs per output pixel (torch.utils.flop_counter), GFLOP/s reached, microseconds per output pixel (what a
large image costs per pixel when tiled with this tile), and the largest activation tensor in MiB.

    python scripts/profile_tiles.py              # 2D and 3D on the CPU (about 3 minutes on 2 cores)
    python scripts/profile_tiles.py --channels-last   # as the inferer runs it on the CPU
    python scripts/profile_tiles.py --device cuda
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from monai_unet.inferers import channels_last_weights
from monai_unet.networks import UNet


def largest_activation(net: UNet, x: torch.Tensor) -> int:
    sizes = []
    hooks = [m.register_forward_hook(lambda m, i, o: sizes.append(o.numel() * o.element_size())) for m in net.modules()]
    try:
        net(x)
    finally:
        for h in hooks:
            h.remove()
    return max(sizes)


def profile(
    net: UNet, tiles: list[int], dims: int, device: torch.device, repeat: int, channels_last: bool = False
) -> list[dict]:
    rows = []
    fmt = torch.channels_last if dims == 2 else torch.channels_last_3d
    with torch.inference_mode(), channels_last_weights(net, channels_last):
        for t in tiles:
            x = torch.randn((1, 1, *(t,) * dims), device=device)
            if channels_last:
                x = x.contiguous(memory_format=fmt)
            with FlopCounterMode(display=False) as fc:
                y = net(x)
            out_px = y[0, 0].numel()
            best = float("inf")
            for _ in range(repeat):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                net(x)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                best = min(best, time.perf_counter() - t0)
            rows.append(
                {
                    "tile": t,
                    "out": y.shape[2],
                    "kflop_px": fc.get_total_flops() / out_px / 1e3,
                    "gflops": fc.get_total_flops() / best / 1e9,
                    "us_px": best / out_px * 1e6,
                    "act_mib": largest_activation(net, x) / 2**20,
                }
            )
            r = rows[-1]
            print(
                f"{dims}D tile {t:>5} -> {r['out']:>5}  {r['kflop_px']:7.1f} kFLOP/px  {r['gflops']:7.1f} GFLOP/s  "
                f"{r['us_px']:7.3f} us/px  largest activation {r['act_mib']:7.1f} MiB",
                flush=True,
            )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument(
        "--channels-last", action="store_true", help="weights and input channels-last (the inferer's CPU default)"
    )
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(2)
    torch.manual_seed(0)
    net2 = UNet(2, 1, 2, features=(16, 32, 64, 128, 256), dropout=0.0).eval().to(device)
    net2(torch.zeros((1, 1, 188, 188), device=device))  # warm-up
    tiles2 = [252, 316, 380, 444, 508, 572, 700, 828, 956, 1084, 1212]
    rows2 = profile(net2, tiles2, 2, device, args.repeat, args.channels_last)
    net3 = UNet(3, 1, 2, features=(8, 16, 32, 64), dropout=0.0).eval().to(device)
    rows3 = profile(net3, [108, 124, 140, 156, 172, 188, 204, 220], 3, device, args.repeat, args.channels_last)
    for dims, rows in ((2, rows2), (3, rows3)):
        best = min(rows, key=lambda r: r["us_px"])
        fewest = min(rows, key=lambda r: r["kflop_px"])
        print(
            f"{dims}D: fastest per output pixel: tile {best['tile']} ({best['us_px']:.3f} us/px, "
            f"largest activation {best['act_mib']:.1f} MiB); fewest FLOPs: tile {fewest['tile']} "
            f"({fewest['us_px']:.3f} us/px)"
        )


if __name__ == "__main__":
    main()
