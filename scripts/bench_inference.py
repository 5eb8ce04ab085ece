"""B1/B2: overlap-tile inference throughput against MONAI's sliding-window inferers (see BENCHMARKS.md).

All competitors run in this one process, in turn, and the report gives ratios (absolute numbers drift on a
shared machine). For 2D and 3D it prints output megapixels per second of

  (a) monai_unet's OverlapTileInferer, default settings, on the valid (unpadded) UNet (its tile choice times a
      few tiles once per process; that is done before the timed runs and reported);
  (b) MONAI's SlidingWindowInferer, gaussian, on the padding="same" twin (same weights), at overlap 0.5
      (nnU-Net's step, MONAI's model-zoo bundles) and at MONAI's default 0.25;
  (c) MONAI's SlidingWindowHoVerNetInferer set up as an overlap-tile inferer on the valid network
      (overlap = 1 - out/in, extra_input_padding = halo, reflect padding), with the paper's tile (572 in
      2D) and with (a)'s tile;
  on the CPU, where (a) runs the weights in channels-last memory format by default, also (b) at 0.25 and (c)
  at the paper's tile given channels-last weights and image (marked "(cl)"): the tiling alone compared;

the floor (the network's FLOPs per output pixel at (a)'s tile, over the GFLOP/s one plain forward of that tile
reaches in the memory format (a) uses), and how far each inferer is from whole-image inference on a crop (max
abs difference / output scale).

    python scripts/bench_inference.py                 # B1 4096x4096 and B2 256x256x128
    python scripts/bench_inference.py --quick         # small sizes, one round
"""

from __future__ import annotations

import argparse
import time

import torch
from monai.apps.pathology.inferers import SlidingWindowHoVerNetInferer
from monai.inferers import SlidingWindowInferer
from torch.utils.flop_counter import FlopCounterMode

from monai_unet.inferers import (
    OverlapTileInferer,
    auto_tile_size,
    channels_last_weights,
    default_memory_budget,
    default_tile_size,
)
from monai_unet.inferers.tiling import reflect_indices, size_rules_of
from monai_unet.networks import UNet, input_size_1d


def smooth_image(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """Gaussian-filtered noise, ``(1, 1, *shape)``, unit-ish scale."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((1, 1, *shape), generator=g)
    k = torch.exp(-0.5 * (torch.arange(-6, 7, dtype=torch.float32) / 2.0) ** 2)
    k = k / k.sum()
    dims = len(shape)
    for a in range(dims):
        view = [1] * (dims + 2)
        view[a + 2] = -1
        conv = torch.nn.functional.conv2d if dims == 2 else torch.nn.functional.conv3d
        w = k.view(view)
        pad = [0] * (2 * dims)
        pad[2 * (dims - 1 - a)] = pad[2 * (dims - 1 - a) + 1] = 6
        x = conv(torch.nn.functional.pad(x, pad, mode="reflect"), w)
    return (x - x.mean()) / x.std()


def whole_image(net: UNet, x: torch.Tensor) -> torch.Tensor:
    spatial = x.shape[2:]
    h = net.halo[0]
    for a, s in enumerate(spatial):
        x = x.index_select(a + 2, reflect_indices(-h, input_size_1d(s, net.n_pool, net.padding), s))
    return net(x)[(slice(None), slice(None), *(slice(0, s) for s in spatial))]


def timed(fn, device: torch.device) -> tuple[float, torch.Tensor]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    y = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, y


def bench(dims: int, shape: tuple[int, ...], feats: tuple[int, ...], roi: int, paper_tile: int, args) -> dict:
    device = torch.device(args.device)
    torch.manual_seed(0)
    valid = UNet(dims, 1, 2, features=feats, padding="valid", dropout=0.0).eval().to(device)
    same = UNet(dims, 1, 2, features=feats, padding="same", dropout=0.0).eval().to(device)
    same.load_state_dict(valid.state_dict())
    x = smooth_image(shape).to(device)
    npx = x[0, 0].numel()
    halo = valid.halo[0]
    rules = size_rules_of(valid)

    # (a)'s tile: what the default settings choose for this image. Choosing it times a ladder of tiles once per
    # process (the speed cap, see monai_unet.inferers.tile_choice); done here, untimed, and reported, so that the
    # timed runs of (a) find the timings cached, as every image after the first one in a process does
    budget = default_memory_budget(device)
    cl = device.type == "cpu"  # (a) runs channels-last weights on the CPU by default
    t0 = time.perf_counter()
    with channels_last_weights(valid, cl):
        tile = default_tile_size(valid, rules, shape, 1, device, torch.float32, budget, tile_search="measure")
    tuning = time.perf_counter() - t0
    flop_tile = auto_tile_size(rules, shape, budget)

    def hover(t: int) -> SlidingWindowHoVerNetInferer:
        out = t - 2 * halo
        return SlidingWindowHoVerNetInferer(
            roi_size=(t,) * dims,
            sw_batch_size=1,
            overlap=1.0 - out / t,
            mode="constant",
            padding_mode="reflect",
            extra_input_padding=(halo,) * (2 * dims),
            sw_device=device,
            device=device,
        )

    # name: (inferer, network, whether the network's weights and the image are put in channels-last format first)
    competitors = {
        "a overlap-tile (ours)": (OverlapTileInferer(), valid, False),
        "b sliding window 0.5": (
            SlidingWindowInferer((roi,) * dims, 1, 0.5, mode="gaussian", sw_device=device, device=device),
            same,
            False,
        ),
        "b sliding window 0.25": (
            SlidingWindowInferer((roi,) * dims, 1, 0.25, mode="gaussian", sw_device=device, device=device),
            same,
            False,
        ),
        f"c HoVerNet tile {paper_tile}": (hover(paper_tile), valid, False),
        f"c HoVerNet tile {max(tile)}": (hover(max(tile)), valid, False),
    }
    if cl:  # MONAI's inferers given what (a) does by itself: the fair comparison of the tiling alone
        competitors["b sliding window 0.25 (cl)"] = (competitors["b sliding window 0.25"][0], same, True)
        competitors[f"c HoVerNet tile {paper_tile} (cl)"] = (hover(paper_tile), valid, True)
    fmt = torch.channels_last if dims == 2 else torch.channels_last_3d

    def run(inferer, net, net_cl: bool, image: torch.Tensor) -> torch.Tensor:
        if not net_cl:
            return inferer(image, net)
        with channels_last_weights(net):
            return inferer(image.contiguous(memory_format=fmt), net)

    times: dict[str, float] = {}
    with torch.inference_mode():
        # floor: FLOPs per output pixel of (a)'s tile at the speed of one plain forward of that tile, in the
        # memory format (a) runs it
        xt = torch.randn((1, 1, *tile), device=device)
        with FlopCounterMode(display=False) as fc:
            yt = valid(xt)
        flops_px = fc.get_total_flops() / yt[0, 0].numel()

        def plain_forward() -> torch.Tensor:
            return run(lambda image, net: net(image), valid, cl, xt)

        plain_forward()  # warm-up
        ft = float("inf")
        for _ in range(args.rounds):
            for name, (inferer, net, net_cl) in competitors.items():
                dt, y = timed(lambda i=inferer, n=net, c=net_cl: run(i, n, c, x), device)
                assert tuple(y.shape[2:]) == shape, (name, y.shape)
                times[name] = min(times.get(name, float("inf")), dt)
                # the plain forward is timed between the competitors, so it sees the same machine load
                ft = min(ft, timed(plain_forward, device)[0])
        gflops = fc.get_total_flops() / ft / 1e9
        floor_mpx = gflops * 1e9 / flops_px / 1e6
        # agreement with whole-image inference, on a crop that needs several of (a)'s tiles
        crop = tuple(min(s, int(1.6 * (t - 2 * halo)) + 3) for s, t in zip(shape, tile))
        xc = x[(slice(None), slice(None), *(slice(0, c) for c in crop))].contiguous()
        ref = whole_image(valid, xc)
        scale = float(ref.abs().max())
        err = {
            name: float((run(inferer, net, net_cl, xc) - ref).abs().max()) / scale
            for name, (inferer, net, net_cl) in competitors.items()
            if not name.startswith("b")
        }
    mpx = {k: npx / v / 1e6 for k, v in times.items()}
    return {
        "dims": dims,
        "shape": shape,
        "tile": tile,
        "flop_tile": flop_tile,
        "tuning": tuning,
        "flops_px": flops_px,
        "gflops": gflops,
        "floor": floor_mpx,
        "mpx": mpx,
        "err": err,
        "crop": crop,
    }


def report(r: dict) -> dict:
    a = r["mpx"]["a overlap-tile (ours)"]
    print(
        f"\n{r['dims']}D image {'x'.join(map(str, r['shape']))}, (a)'s tile {'x'.join(map(str, r['tile']))}: "
        f"{r['flops_px'] / 1e3:.1f} kFLOP per output pixel at {r['gflops']:.1f} GFLOP/s -> floor {r['floor']:.3f} Mpx/s"
    )
    print(
        f"  tile chosen in {r['tuning']:.1f} s (speed cap timed once per process; the FLOP rule alone would take "
        f"{'x'.join(map(str, r['flop_tile']))})"
    )
    print(f"{'inferer':<28}{'Mpx/s':>9}{'ours / it':>11}{'max|diff| vs whole-image':>27}")
    for name, v in r["mpx"].items():
        e = r["err"].get(name)
        es = f"{e:.1e}" if e is not None else "(padded net)"
        print(f"{name:<28}{v:>9.3f}{a / v:>11.2f}{es:>27}")
    print(f"{'floor (plain forward)':<28}{r['floor']:>9.3f}{a / r['floor']:>11.2f}")
    names = list(r["mpx"])
    out = {
        "b05": a / r["mpx"][names[1]],
        "b025": a / r["mpx"][names[2]],
        "c": a / r["mpx"][names[3]],
        "c_same": a / r["mpx"][names[4]],
        "floor": a / r["floor"],
        "err": r["err"]["a overlap-tile (ours)"],
    }
    if len(names) > 5:  # MONAI's inferers with channels-last weights too
        out["b025_cl"] = a / r["mpx"][names[5]]
        out["c_cl"] = a / r["mpx"][names[6]]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=4096, help="2D image side (B1: 4096)")
    p.add_argument("--size3d", type=str, default="256,256,128", help="3D volume shape (B2: 256,256,128)")
    p.add_argument("--device", type=str, default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="small sizes, one round (for development)")
    p.add_argument("--rounds", type=int, default=None, help="timing rounds, best kept (default 2, quick 1)")
    p.add_argument("--skip3d", action="store_true")
    args = p.parse_args()
    if args.rounds is None:
        args.rounds = 1 if args.quick else 2
    if args.device == "cpu":
        torch.set_num_threads(2)
    size = 1024 if args.quick and args.size == 4096 else args.size
    size3d = tuple(int(s) for s in args.size3d.split(","))
    if args.quick and args.size3d == "256,256,128":
        size3d = (96, 96, 80)
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, rounds {args.rounds} (best kept)")
    summary = {}
    r2 = bench(2, (size, size), (16, 32, 64, 128, 256), 512, 572, args)
    summary["2D"] = report(r2)
    if not args.skip3d:
        r3 = bench(3, size3d, (8, 16, 32, 64), 128, 140, args)
        summary["3D"] = report(r3)
    print()
    parts = []
    for k, s in summary.items():
        part = (
            f"{k}: {s['b05']:.2f}x SW@0.5, {s['b025']:.2f}x SW@0.25, {s['c']:.2f}x HoVerNet(paper tile), "
            f"{s['c_same']:.2f}x HoVerNet(same tile), {100 * s['floor']:.0f}% of floor, err {s['err']:.0e}"
        )
        if "c_cl" in s:
            part += f"; both channels-last: {s['b025_cl']:.2f}x SW@0.25, {s['c_cl']:.2f}x HoVerNet(paper tile)"
        parts.append(part)
    print("SUMMARY " + " | ".join(parts))


if __name__ == "__main__":
    main()
