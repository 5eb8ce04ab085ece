"""B1 at every size: the default tile of ``OverlapTileInferer()`` against the best explicit tile, timed.

For each image side in ``--sizes`` (2D, B1's network: features 16-256, valid padding, channels-last on the CPU), a
fresh tile choice is made as a new process would (timings cleared), then the default inferer and the same inferer
with each explicit candidate tile (the valid tiles within the memory budget, fitted to the image; every
``--every``-th one, plus the default's own) segment the same smooth image; the best of ``--rounds`` runs of each is
kept, the default and the explicit tiles taking turns within each round. The default is first run until its tile
choice has settled (its timings spend a credit each image adds to, so a mid-size image may take a few calls before
the ladder is timed far enough: the calls of a folder of such images), then timed. The report gives, per size, the
default's tile and seconds, the best explicit tile and its seconds, and the ratio (goal: the default within 5% of
the best, so B1's ratios hold at every size). The tile choice's own time (its timed forwards, once per process and
network) and the calls it took (the last 3 of them timing nothing) are reported beside it.

    python scripts/bench_tile_default.py                       # 1024 1536 2048 3000 4096 (about 15 min, 2 cores)
    python scripts/bench_tile_default.py --sizes 1536 --every 1
    python scripts/bench_tile_default.py --sizes 8192 --tiles 572 620 700     # about 11 min
    python scripts/bench_tile_default.py --sizes 16384 --tiles 620 700 --max-calls 3   # about 31 min

Exit status 1 when a size misses the goal.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from monai_unet.inferers import OverlapTileInferer, default_memory_budget, overlap_tile
from monai_unet.inferers import tile_choice as tc
from monai_unet.inferers.tiling import size_rules_of
from monai_unet.networks import UNet

GOAL = 1.05
CHOSEN: list[tuple[int, ...]] = []


def _recording_default_tile_size(*args, **kwargs) -> tuple[int, ...]:
    tile = tc.default_tile_size(*args, **kwargs)
    CHOSEN.append(tuple(tile))
    return tile


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def smooth_image(side: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((1, 1, side, side), generator=g)
    k = torch.exp(-0.5 * (torch.arange(-6, 7, dtype=torch.float32) / 2.0) ** 2)
    k = (k / k.sum()).view(1, 1, 1, -1)
    x = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (6, 6, 0, 0), mode="reflect"), k)
    return torch.nn.functional.conv2d(torch.nn.functional.pad(x, (0, 0, 6, 6), mode="reflect"), k.transpose(-1, -2))


def timings_done() -> int:
    """Timings the tile choice has made in this process (since the last ``clear_tile_timings``)."""
    return sum(len(t) for table in tc._SAMPLES.values() for t in table.values())


def best_seconds(inferers: dict, image: torch.Tensor, net: UNet, rounds: int) -> dict:
    """Best of ``rounds`` runs of each inferer, the inferers taking turns within a round (drift on a shared
    machine then touches each of them alike, not the ones timed last)."""
    best = dict.fromkeys(inferers, float("inf"))
    with torch.no_grad():
        for _ in range(rounds):
            for key, inferer in inferers.items():
                t0 = time.perf_counter()
                inferer(image, net)
                best[key] = min(best[key], time.perf_counter() - t0)
    return best


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1024, 1536, 2048, 3000, 4096])
    p.add_argument("--rounds", type=int, default=2, help="timed runs per tile, best kept")
    p.add_argument("--every", type=int, default=1, help="time every N-th explicit candidate (1: all)")
    p.add_argument("--min-tile", type=int, default=300, help="skip explicit candidates smaller than this")
    p.add_argument("--max-calls", type=int, default=20, help="calls of the default before it is timed, at most")
    p.add_argument(
        "--tiles",
        type=int,
        nargs="+",
        default=None,
        help="time only these explicit tile sides (and the default's own), not the ladder (for the largest images)",
    )
    p.add_argument("--device", default="cpu")
    args = p.parse_args()

    overlap_tile.default_tile_size = _recording_default_tile_size  # to report the default's tile
    torch.manual_seed(0)
    device = torch.device(args.device)
    net = UNet(2, 1, 2, features=(16, 32, 64, 128, 256), padding="valid", dropout=0.0).eval().to(device)
    rules = size_rules_of(net)
    budget = default_memory_budget(device)
    print(f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}, device {device}")
    head = f"{'size':>6} {'default tile':>13} {'s':>7} {'best tile':>10} {'s':>7} {'ratio':>6} {'choice s':>8}"
    print(f"{head} {'calls':>5}")
    ok = True
    for side in args.sizes:
        image = smooth_image(side).to(device)
        tc.clear_tile_timings()
        default = OverlapTileInferer()
        CHOSEN.clear()
        warmup, timings, calls, quiet = 0.0, 0, 0, 0
        # until 3 calls in a row time nothing (a call may wait for the credit of the next): the choice a folder of
        # such images settles on
        while calls < args.max_calls and quiet < 3:
            t0 = time.perf_counter()
            with torch.no_grad():
                default(image, net)
            warmup += time.perf_counter() - t0
            calls += 1
            done = timings_done()
            quiet = quiet + 1 if done == timings else 0
            timings = done
        chosen = CHOSEN[-1] if CHOSEN else None
        cands = [c.tile for c in tc.tile_candidates(rules, (side, side), budget) if max(c.tile) >= args.min_tile]
        picked = cands[:: max(1, args.every)] if args.tiles is None else [c for c in cands if c[0] in args.tiles]
        missing = sorted(set(args.tiles or ()) - {c[0] for c in picked})
        if missing:
            print(f"       --tiles {missing}: not candidate tiles at {side}^2 (within the memory budget); skipped")
        if chosen is not None and chosen not in picked:
            picked.append(chosen)
        inferers = {"default": default} | {tile: OverlapTileInferer(tile_size=tile) for tile in picked}
        first_round_call, done = len(CHOSEN), timings_done()
        timings = best_seconds(inferers, image, net, args.rounds)
        # the default's calls in the timed rounds: the tiles they took and the timings they made (none, once settled)
        round_tiles = sorted({"x".join(map(str, t)) for t in CHOSEN[first_round_call:]})
        round_timings = timings_done() - done
        t_default = timings.pop("default")
        choice_s = max(0.0, warmup - calls * t_default)
        best_tile = min(timings, key=timings.get)
        ratio = t_default / timings[best_tile]
        ok &= ratio <= GOAL
        shown = "x".join(map(str, chosen)) if chosen else "?"
        print(
            f"{side:>6} {shown:>13} {t_default:>7.2f} {'x'.join(map(str, best_tile)):>10} {timings[best_tile]:>7.2f} "
            f"{ratio:>6.3f} {choice_s:>8.1f} {calls:>5}",
            flush=True,
        )
        detail = ", ".join(f"{t[0]}:{s:.2f}" for t, s in sorted(timings.items()))
        print(f"       explicit tiles (side: s): {detail}", flush=True)
        shown_rounds = ", ".join(round_tiles)
        print(f"       the default in the timed rounds: tiles {shown_rounds}; {round_timings} timings", flush=True)
        rungs = ", ".join(
            f"{t[0]}:{spp * 1e6:.3f} ({' '.join(f'{v * 1e6:.3f}' for v in tc._SAMPLES[key][t])})"
            for key, table in tc._SPEEDS.items()
            for t, spp in sorted(table.items())
        )
        print(f"       the choice's timed tiles (side: median us per output pixel (each timing)): {rungs}", flush=True)
    print(f"goal: default <= {GOAL:.2f} x best at every size: {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
