"""Choosing the tile: from a memory budget, by FLOPs, and by measured speed.

A larger tile pays the halo once for more output pixels, so it costs fewer FLOPs per output pixel (for features
16-256, depth 4: 125 kFLOP at a 572 tile, 105 at 1084). On a CPU it is not always faster: once a tile's
activations outgrow the cache, each FLOP gets slower (``scripts/profile_tiles.py`` on 2 cores: 106-122 GFLOP/s up
to a 828 tile, 65 GFLOP/s at 1212, so 1212 costs 1.6x more time per output pixel than 700-828), while 3D tiles
run at the same speed at any size. So, like ``torch.backends.cudnn.benchmark``, the default times one forward of
a ladder of cubic tiles, from small to large, until the time per output pixel gets worse (:func:`speed_cap`),
and then takes the tile with the fewest FLOPs over the image among those no larger than the fastest
(:func:`auto_tile_size`). The timings are kept per network architecture, device, dtype, thread count and batch
for the life of the process, and only tiles up to the one the FLOPs pick are timed; one image's timing costs at
most the FLOPs of its own inference (small images: FLOPs decide alone; the next image goes on where it stopped).
Any tile gives the same result to float rounding.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch.utils import benchmark

from monai_unet.inferers.tiling import (
    SizeRules,
    check_option,
    estimate_activation_bytes,
    estimate_flops,
    plan_axis,
)
from monai_unet.networks.sizes import input_size_1d

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "TILE_SEARCHES",
    "auto_tile_size",
    "choose_tile_size",
    "clear_tile_timings",
    "default_memory_budget",
    "speed_cap",
    "speed_ladder",
    "tile_candidates",
    "time_forward",
]

# activation memory of one forward where the machine's memory cannot be read (see default_memory_budget)
DEFAULT_MEMORY_BUDGET = 2 * 2**30
TILE_SEARCHES = ("auto", "measure", "flops")

# measured speeds: (network architecture, device, dtype, threads, batch) -> {cubic tile: seconds per output pixel}
_SPEEDS: dict[tuple, dict[tuple[int, ...], float]] = {}


class Candidate(NamedTuple):
    """A tile for an image: its (fitted) shape and the FLOPs of all the tiles the image takes."""

    flops: int
    tile: tuple[int, ...]


def default_memory_budget(device: torch.device | str) -> int:
    """Bytes of activation memory one forward may use when no ``memory_budget`` is given: on CUDA half the free
    memory of the device; on the CPU a quarter of the physical memory, between 1 and 8 GiB
    (:data:`DEFAULT_MEMORY_BUDGET`, 2 GiB, where it cannot be read). Larger tiles pay the halo less often: a 3D
    volume of 256 x 256 x 128 fits one tile in 3 GiB and costs 23% fewer FLOPs than in four tiles of 2 GiB."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0] // 2)
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return DEFAULT_MEMORY_BUDGET
    return int(min(max(total // 4, 2**30), 8 * 2**30))


def choose_tile_size(rules: SizeRules, dims: int, memory_budget: int, sw_batch_size: int = 1) -> tuple[int, ...]:
    """The largest valid cubic tile whose estimated activation memory for ``sw_batch_size`` tiles fits
    ``memory_budget`` bytes (see :func:`~monai_unet.inferers.tiling.estimate_activation_bytes`).

    Raises ``ValueError`` if even the smallest valid tile does not fit.
    """
    if rules.depth is None:
        raise ValueError("choosing a tile from a memory budget needs a monai-unet UNet; give tile_size instead.")
    first = rules.smallest_valid()
    step = 1 << rules.depth

    def cost(t: int) -> int:
        return estimate_activation_bytes(rules, (t,) * dims, sw_batch_size)

    need = cost(first)
    if need > memory_budget:
        raise ValueError(
            f"memory_budget={memory_budget} bytes is too small: the smallest valid tile ({first} per axis) needs "
            f"about {need} bytes for sw_batch_size={sw_batch_size}; raise the budget or lower sw_batch_size."
        )
    lo, hi = 0, 1
    while cost(first + hi * step) <= memory_budget and hi < 1 << 20:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if cost(first + mid * step) <= memory_budget else (lo, mid)
    return (first + lo * step,) * dims


def tile_candidates(
    rules: SizeRules,
    spatial: Sequence[int],
    memory_budget: int,
    sw_batch_size: int = 1,
    overlap: float = 0.0,
    max_tile: int | None = None,
) -> list[Candidate]:
    """Every valid tile within ``memory_budget`` (and no larger than ``max_tile``) for an image of size
    ``spatial``, fitted to the image (see :func:`~monai_unet.inferers.tiling.plan_axis`), smallest first; tiles
    larger than the image needs are left out (they cost more and give nothing)."""
    halo = rules.halo[0]
    cap = choose_tile_size(rules, len(spatial), memory_budget, sw_batch_size)[0]
    if max_tile is not None:
        cap = min(cap, max(max_tile, rules.smallest_valid()))
    need = max(input_size_1d(s, rules.depth, rules.padding) for s in spatial)
    out: list[Candidate] = []
    seen: set[tuple[int, ...]] = set()
    for t in rules.valid_sizes(min(cap, need)):
        if t - 2 * halo < rules.align and max(spatial) > t - 2 * halo:
            continue
        plans = [plan_axis(s, t, halo, rules, overlap) for s in spatial]
        shape = tuple(p.tile for p in plans)
        if shape in seen or estimate_activation_bytes(rules, shape, sw_batch_size) > memory_budget:
            continue
        seen.add(shape)
        tiles = math.prod(len(p.starts) for p in plans)
        out.append(Candidate(tiles * estimate_flops(rules, shape), shape))
    return out


def auto_tile_size(
    rules: SizeRules,
    spatial: Sequence[int],
    memory_budget: int,
    sw_batch_size: int = 1,
    overlap: float = 0.0,
    tolerance: float = 0.03,
    max_tile: int | None = None,
) -> tuple[int, ...]:
    """The tile by FLOPs for an image of size ``spatial``: the smallest whose total FLOPs over the image are within
    ``tolerance`` of the least any tile within ``memory_budget`` (and no larger than ``max_tile``, for example
    the :func:`speed_cap`) achieves.
    """
    dims = len(spatial)
    if rules.halo[0] == 0:  # a padded network costs the same per pixel at any tile: take the largest (fewest seams)
        return choose_tile_size(rules, dims, memory_budget, sw_batch_size)
    best = tile_candidates(rules, spatial, memory_budget, sw_batch_size, overlap, max_tile)
    if not best:
        return choose_tile_size(rules, dims, memory_budget, sw_batch_size)
    return _fewest_flops(best, tolerance)


def _fewest_flops(candidates: list[Candidate], tolerance: float = 0.03) -> tuple[int, ...]:
    least = min(c.flops for c in candidates)
    return next(c.tile for c in candidates if c.flops <= (1.0 + tolerance) * least)


def clear_tile_timings() -> None:
    """Forget the measured speeds (for example after changing the number of threads by hand)."""
    _SPEEDS.clear()


def _speed_key(network: Any, device: torch.device, dtype: torch.dtype, batch: int) -> tuple:
    arch: tuple = (type(network).__qualname__,)
    if isinstance(network, torch.nn.Module):  # shapes and memory formats of the weights
        arch += tuple((tuple(p.shape), p.is_contiguous()) for p in network.parameters())
    threads = torch.get_num_threads() if device.type == "cpu" else 0
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return (arch, name, str(dtype), threads, batch)


def time_forward(
    network: Callable, tile: tuple[int, ...], channels: int, device: torch.device, dtype: torch.dtype, batch: int
) -> float:
    """Seconds of one forward of ``batch`` tiles, by :class:`torch.utils.benchmark.Timer` on this thread count:
    ``timeit(1)`` runs two untimed forwards (allocation, kernel choice) and times the third, synchronising the
    accelerator around it; so a timing costs three forwards, what :func:`speed_cap` budgets for it.

    The input comes from a private generator, so timing does not move the global random state.
    """
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn((batch, channels, *tile), generator=gen, device=device, dtype=dtype)
    timer = benchmark.Timer(
        stmt="network(x)", globals={"network": network, "x": x}, num_threads=torch.get_num_threads()
    )
    # the Timer synchronises the current accelerator: make it this one
    on_device = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
    with torch.no_grad(), on_device:
        return timer.timeit(number=1).raw_times[0]


def speed_ladder(rules: SizeRules, dims: int, memory_budget: int, sw_batch_size: int = 1) -> list[int]:
    """The cubic tiles :func:`speed_cap` times: valid sizes about 20% apart, from the smallest that costs at most
    1.4x the FLOPs per output pixel of the largest tile within ``memory_budget``, up to that largest tile."""
    cap = choose_tile_size(rules, dims, memory_budget, sw_batch_size)[0]
    halo = rules.halo[0]

    def per_pixel(t: int) -> float:
        return estimate_flops(rules, (t,) * dims) / (t - 2 * halo) ** dims

    sizes = [t for t in rules.valid_sizes(cap) if t - 2 * halo >= max(rules.align, 1)]
    if not sizes:
        return []
    limit = 1.4 * per_pixel(sizes[-1])
    ladder: list[int] = []
    for t in sizes:
        if per_pixel(t) <= limit and (not ladder or t >= 1.2 * ladder[-1]):
            ladder.append(t)
    if ladder[-1] != sizes[-1]:
        ladder.append(sizes[-1])
    return ladder


def speed_cap(
    network: Callable,
    rules: SizeRules,
    dims: int,
    channels: int,
    device: torch.device,
    dtype: torch.dtype,
    memory_budget: int,
    sw_batch_size: int = 1,
    up_to: Sequence[int] | None = None,
    max_flops: float | None = None,
) -> int | None:
    """The largest tile worth using on this device: the fastest per output pixel of :func:`speed_ladder`, timed
    from the smallest up (:func:`time_forward`, cached) until a tile is 15% slower per output pixel than the best
    so far. ``None`` when the largest rung is the fastest (no cap).

    ``up_to``: the tile the FLOPs pick for an image (it may not be cubic); the ladder is cut below its volume and
    it is timed as the last rung, after the tiles timed for earlier images below it.

    ``max_flops``: timing stops before it would cost more FLOPs than this (a later call goes on from there); then
    the best tile timed is the cap if the last rung gained less than 5% on the one before, else ``None`` (larger
    tiles are likely faster still, or too little is known).
    """
    if rules.halo is None or rules.halo[0] == 0 or rules.depth is None:
        return None
    table = _SPEEDS.setdefault(_speed_key(network, device, dtype, sw_batch_size), {})
    ladder = [(t,) * dims for t in speed_ladder(rules, dims, memory_budget, sw_batch_size)]
    if up_to is not None:  # the rungs below, the shapes of earlier images (timed already), and up_to itself
        last = tuple(up_to)
        below = {t for t in ladder + list(table) if math.prod(t) < math.prod(last)}
        ladder = sorted(below | {last}, key=lambda t: (math.prod(t), t))
    allowed = float("inf") if max_flops is None else max_flops
    halo = rules.halo[0]
    spent = 0.0
    speeds: list[tuple[float, tuple[int, ...]]] = []  # (seconds per output pixel, tile) in ladder order

    def cap(tile: tuple[int, ...]) -> int | None:
        return None if tile == ladder[-1] else max(tile)

    for t in ladder:
        if t not in table:
            need = 3.0 * estimate_flops(rules, t) * sw_batch_size  # time_forward: two untimed forwards, one timed
            if spent + need > allowed:
                if len(speeds) < 2 or speeds[-1][0] < 0.95 * speeds[-2][0]:
                    return None
                return cap(min(speeds)[1])
            spent += need
            seconds = time_forward(network, t, channels, device, dtype, sw_batch_size)
            table[t] = seconds / (math.prod(s - 2 * halo for s in t) * sw_batch_size)
        speeds.append((table[t], t))
        if table[t] > 1.15 * min(speeds)[0]:
            return cap(min(speeds)[1])  # past the point where larger tiles stop paying
    return cap(min(speeds)[1])


def default_tile_size(
    network: Callable,
    rules: SizeRules,
    spatial: Sequence[int],
    channels: int,
    device: torch.device,
    dtype: torch.dtype,
    memory_budget: int,
    sw_batch_size: int = 1,
    overlap: float = 0.0,
    repeats: int = 1,
    tile_search: str = "auto",
    max_cost: float = 1.0,
) -> tuple[int, ...]:
    """The tile :class:`~monai_unet.inferers.OverlapTileInferer` takes when none is given (see the module
    docstring): the fewest FLOPs over the image within ``memory_budget`` and, unless ``tile_search`` is
    ``"flops"``, no larger than the :func:`speed_cap`. With ``"auto"`` the timing may cost at most ``max_cost``
    times the FLOPs of the inference it serves (``repeats``: batch x flips); ``"measure"`` times without limit.
    """
    tile_search = check_option("tile_search", tile_search, TILE_SEARCHES)
    if tile_search == "flops" or rules.halo is None or rules.halo[0] == 0:
        return auto_tile_size(rules, spatial, memory_budget, sw_batch_size, overlap)
    candidates = tile_candidates(rules, spatial, memory_budget, sw_batch_size, overlap)
    if not candidates:
        return auto_tile_size(rules, spatial, memory_budget, sw_batch_size, overlap)
    flop_tile = _fewest_flops(candidates)
    work = min(c.flops for c in candidates) * max(repeats, 1)
    max_flops = None if tile_search == "measure" else max_cost * work
    cap = speed_cap(
        network, rules, len(spatial), channels, device, dtype, memory_budget, sw_batch_size, flop_tile, max_flops
    )
    if cap is None:
        return flop_tile
    # a fitted tile no larger than the cap is also what fitting from a nominal tile within the cap gives
    capped = [c for c in candidates if max(c.tile) <= cap]
    return _fewest_flops(capped) if capped else flop_tile
