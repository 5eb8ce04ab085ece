"""Choosing the tile: from a memory budget, by FLOPs, and by measured speed.

A larger tile pays the halo once for more output pixels, so it costs fewer FLOPs per output pixel (for features
16-256, depth 4: 125 kFLOP at a 572 tile, 105 at 1084). On a CPU it is not always faster: once a tile's
activations outgrow the cache, each FLOP gets slower (``scripts/profile_tiles.py`` on 2 cores: 106-122 GFLOP/s up
to a 828 tile, 65 GFLOP/s at 1212, so 1212 costs 1.6x more time per output pixel than 700-828), while 3D tiles
run at the same speed at any size. So, like ``torch.backends.cudnn.benchmark``, the default times forwards of
a ladder of tiles (cubic where the network's axes have the same rules; for an anisotropic network each axis takes
its largest valid size up to the rung), from small to large, until the time per output pixel gets worse
(:func:`speed_cap`). Among the tiles up to the rung after the fastest it then takes the one whose FLOPs over the
image (its overhang included: tiles fitted to the image) times the measured seconds per FLOP at its size
(:func:`seconds_per_flop`, interpolated between the timed tiles) is least. As the speed can fall off a cliff between
two rungs (on a 2-core AMD EPYC the rung 748 timed 20-30% slower per pixel than 620), the candidate fastest at
the better speed of the timed tiles around it is first timed in its own shape, until that candidate is one timed
already (at most :data:`CONTENDERS` of them). Every tile is timed three times, in passes, the median timing
kept, so neither a slow spell of a shared machine during one timing nor one timing that came out fast moves the
choice (:data:`TIMING_ROUNDS`); each pass comes after the one before has been paid for. The timings are kept per
network architecture, device, dtype, thread count and batch for the life of the process, and only tiles up to the one
the FLOPs pick are timed. The timing of a process costs at most the FLOPs of the inferences it served so far: each image
adds its FLOPs to a credit the timings spend, so a small first image lets FLOPs decide alone, the next ones go on
where it stopped, and a rung dearer than one image's inference is timed once enough images have paid for it, rather
than never (a 1024^2 image alone could not pay for the 748 rung and kept a 444 tile, 1.2x the time of 700). Where
the credit ends before the time per pixel got worse, the tiles larger than those timed are not trusted: on a CPU
the largest tile, the FLOPs' choice, is the slowest (a 1536^2 image in a new process took a 1724 tile, 1.5x the
time of a 700 one). Any tile gives the same result to float rounding.
"""

from __future__ import annotations

import itertools
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch

from monai_unet.inferers.tiling import (
    SizeRules,
    check_option,
    estimate_activation_bytes,
    estimate_flops,
    plan_axis,
)

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "TILE_SEARCHES",
    "auto_tile_size",
    "choose_tile_size",
    "clear_tile_timings",
    "default_memory_budget",
    "seconds_per_flop",
    "speed_cap",
    "speed_ladder",
    "tile_candidates",
    "time_forward",
]

# activation memory of one forward where the machine's memory cannot be read (see default_memory_budget)
DEFAULT_MEMORY_BUDGET = 2 * 2**30
TILE_SEARCHES = ("auto", "measure", "flops")

# measured speeds: (network architecture, device, dtype, threads, batch) -> {tile: seconds per output pixel}, the
# median of the tile's timings (see TIMING_ROUNDS)
_SPEEDS: dict[tuple, dict[tuple[int, ...], float]] = {}
# the timings of each of those tiles, seconds per output pixel
_SAMPLES: dict[tuple, dict[tuple[int, ...], list[float]]] = {}
# FLOPs of inference served but not yet spent on timing, per key of _SPEEDS (see speed_cap's max_flops)
_CREDIT: dict[tuple, float] = {}
# keys of _SPEEDS whose last speed_cap wanted a timing the credit could not pay for
_SHORT: set[tuple] = set()
# settled choices: (key of _SPEEDS, rules, image size, budget, batch, overlap) -> (tile, FLOPs of one inference),
# kept while nothing more is timed for the key, so that a call of the default costs what an explicit tile's does
_CHOICES: dict[tuple, tuple[tuple[int, ...], float]] = {}


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


def tile_shape(rules: SizeRules, size: int, dims: int, need: Sequence[int] | None = None) -> tuple[int, ...]:
    """The tile of nominal ``size``: along each axis the largest valid length no larger than ``size`` (the smallest
    valid one where none is), and no larger than ``need`` (the tile that covers the image along that axis)."""
    shape = tuple(rules.snap(size, a) for a in range(dims))
    if need is not None:
        shape = tuple(min(t, n) for t, n in zip(shape, need))
    return shape


def _image_need(rules: SizeRules, spatial: Sequence[int]) -> tuple[int, ...]:
    return tuple(rules.input_size(s, a) for a, s in enumerate(spatial))


def _nominal_cap(
    rules: SizeRules, dims: int, memory_budget: int, sw_batch_size: int = 1, need: Sequence[int] | None = None
) -> int:
    """The largest nominal tile size whose :func:`tile_shape` fits ``memory_budget``; ``ValueError`` if even the
    smallest valid tile does not."""
    if rules.axes is None:
        raise ValueError("choosing a tile from a memory budget needs a monai-unet UNet; give tile_size instead.")
    lo = min(r.first for r in rules.axes[:dims])

    def fits(t: int) -> bool:
        return estimate_activation_bytes(rules, tile_shape(rules, t, dims, need), sw_batch_size) <= memory_budget

    if not fits(lo):
        first = tile_shape(rules, lo, dims, need)
        need_bytes = estimate_activation_bytes(rules, first, sw_batch_size)
        raise ValueError(
            f"memory_budget={memory_budget} bytes is too small: the smallest valid tile {first} needs "
            f"about {need_bytes} bytes for sw_batch_size={sw_batch_size}; raise the budget or lower sw_batch_size."
        )
    top = max(need) if need is not None else 1 << 20
    step = 1
    while lo + step <= top and fits(lo + step):  # gallop up, then bisect between the last fit and the first miss
        lo += step
        step *= 2
    hi = min(lo + step, top + 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def choose_tile_size(rules: SizeRules, dims: int, memory_budget: int, sw_batch_size: int = 1) -> tuple[int, ...]:
    """The largest valid tile (cubic where the axes allow) whose estimated activation memory for ``sw_batch_size``
    tiles fits ``memory_budget`` bytes (see :func:`~monai_unet.inferers.tiling.estimate_activation_bytes`).

    Raises ``ValueError`` if even the smallest valid tile does not fit.
    """
    return tile_shape(rules, _nominal_cap(rules, dims, memory_budget, sw_batch_size), dims)


def tile_candidates(
    rules: SizeRules,
    spatial: Sequence[int],
    memory_budget: int,
    sw_batch_size: int = 1,
    overlap: float = 0.0,
    max_tile: int | None = None,
) -> list[Candidate]:
    """Every valid tile within ``memory_budget`` (and no larger than ``max_tile``, a nominal size) for an image of
    size ``spatial``, fitted to the image (see :func:`~monai_unet.inferers.tiling.plan_axis`), smallest first;
    tiles larger than the image needs are left out (they cost more and give nothing)."""
    dims = len(spatial)
    halo = rules.halo
    need = _image_need(rules, spatial)
    cap = _nominal_cap(rules, dims, memory_budget, sw_batch_size, need)
    if max_tile is not None:
        cap = min(cap, max(max_tile, min(r.first for r in rules.axes)))
    nominal = sorted({t for a in range(dims) for t in rules.valid_sizes(min(cap, need[a]), a)})
    out: list[Candidate] = []
    seen: set[tuple[int, ...]] = set()
    for t in nominal:
        shape = tile_shape(rules, t, dims, need)
        if any(
            shape[a] - 2 * halo[a] < rules.axis_align(a) and spatial[a] > shape[a] - 2 * halo[a] for a in range(dims)
        ):
            continue
        plans = [plan_axis(s, shape[a], halo[a], rules, overlap, axis=a) for a, s in enumerate(spatial)]
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
    if max(rules.halo) == 0:  # a padded network costs the same per pixel at any tile: take the largest (fewest seams)
        return choose_tile_size(rules, dims, memory_budget, sw_batch_size)
    best = tile_candidates(rules, spatial, memory_budget, sw_batch_size, overlap, max_tile)
    if not best:
        return choose_tile_size(rules, dims, memory_budget, sw_batch_size)
    return _fewest_flops(best, tolerance)


def _fewest_flops(candidates: list[Candidate], tolerance: float = 0.03) -> tuple[int, ...]:
    least = min(c.flops for c in candidates)
    return next(c.tile for c in candidates if c.flops <= (1.0 + tolerance) * least)


def clear_tile_timings() -> None:
    """Forget the measured speeds and the timing credit (for example after changing the number of threads by hand)."""
    _SPEEDS.clear()
    _SAMPLES.clear()
    _CREDIT.clear()
    _SHORT.clear()
    _CHOICES.clear()


def _speed_key(network: Any, device: torch.device, dtype: torch.dtype, batch: int) -> tuple:
    arch: tuple = (type(network).__qualname__,)
    if isinstance(network, torch.nn.Module):  # shapes and memory formats of the weights
        arch += tuple((tuple(p.shape), p.is_contiguous()) for p in network.parameters())
    threads = torch.get_num_threads() if device.type == "cpu" else 0
    if torch.is_autocast_enabled(device.type):  # mixed precision runs at another speed
        dtype = torch.get_autocast_dtype(device.type)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return (arch, name, str(dtype), threads, batch)


TIMED_FORWARDS = 2
"""Timed forwards per tile, the fastest kept: one alone moved by 10-15% on a shared 2-core CPU (enough to rank a
748 tile behind a 508 one and pick a tile 10% slower than the best on a 3000^2 image)."""
TIMING_FORWARDS = 1 + TIMED_FORWARDS
"""Forwards one timing costs (:func:`time_forward`), what :func:`speed_cap` budgets for it."""
CONTENDERS = 3
"""Candidate tiles of an image timed in their own shapes, at most (:func:`default_tile_size`)."""
TIMING_ROUNDS = 3
"""Timings per rung the choice rests on, the median kept (of two the faster), while the timing credit lasts (a pass
over the rungs before the next): the fastest of two forwards still moved by 10% on a shared 2-core CPU (a 748 rung
at 0.858 us per output pixel in one process, 0.776 in another), enough to take a 620 tile on a 16384^2 image where
700 ran 6% faster. The median, not the fastest: one timing can also come out fast (a 700 tile once timed 0.667 us
per output pixel where it ran the image at 0.828 and other processes timed it at 0.815-0.875), and the fastest of
three then took it on a 16384^2 image, 1.20x the time of 620.
"""


def time_forward(
    network: Callable, tile: tuple[int, ...], channels: int, device: torch.device, dtype: torch.dtype, batch: int
) -> float:
    """Seconds of one forward of ``batch`` tiles: one untimed forward (allocation, kernel choice: oneDNN creates its
    primitives, cuDNN picks its algorithms), then the fastest of :data:`TIMED_FORWARDS` timed, the accelerator
    synchronised around each; so a timing costs :data:`TIMING_FORWARDS` forwards.

    The input comes from a private generator, so timing does not move the global random state.
    """
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn((batch, channels, *tile), generator=gen, device=device, dtype=dtype)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    best = float("inf")
    with torch.no_grad():
        network(x)
        sync()
        for _ in range(TIMED_FORWARDS):
            t0 = time.perf_counter()
            network(x)
            sync()
            best = min(best, time.perf_counter() - t0)
    return best


def _out_pixels(rules: SizeRules, tile: Sequence[int]) -> int:
    return math.prod(t - 2 * h for t, h in zip(tile, rules.halo))


def _timing_cost(rules: SizeRules, tile: tuple[int, ...], batch: int) -> float:
    """FLOPs one timing of ``tile`` spends of the credit (:data:`TIMING_FORWARDS` forwards of ``batch`` tiles)."""
    return TIMING_FORWARDS * estimate_flops(rules, tile) * batch


def _time_tile(
    network: Callable,
    rules: SizeRules,
    tile: tuple[int, ...],
    channels: int,
    device: torch.device,
    dtype: torch.dtype,
    batch: int,
    key: tuple,
) -> None:
    """Time ``tile`` once more (:func:`time_forward`) into the speeds of ``key``: the median of its timings (the
    lower of the middle two, so of two the faster)."""
    seconds = time_forward(network, tile, channels, device, dtype, batch)
    for memo in [m for m in _CHOICES if m[0] == key]:  # a new timing may change any settled choice of the key
        del _CHOICES[memo]
    timings = _SAMPLES.setdefault(key, {}).setdefault(tile, [])
    timings.append(seconds / (_out_pixels(rules, tile) * batch))
    _SPEEDS.setdefault(key, {})[tile] = statistics.median_low(timings)


def speed_ladder(rules: SizeRules, dims: int, memory_budget: int, sw_batch_size: int = 1) -> list[int]:
    """The nominal tile sizes :func:`speed_cap` times (their shapes by :func:`tile_shape`): valid sizes about 20%
    apart, from the smallest that costs at most 1.4x the FLOPs per output pixel of the largest tile within
    ``memory_budget``, up to that largest tile."""
    cap = _nominal_cap(rules, dims, memory_budget, sw_batch_size)

    def per_pixel(t: int) -> float:
        shape = tile_shape(rules, t, dims)
        return estimate_flops(rules, shape) / _out_pixels(rules, shape)

    widest = max(range(dims), key=lambda a: (rules.axes[a].step, rules.axes[a].first))
    sizes = [
        t
        for t in rules.valid_sizes(cap, widest)
        if all(
            s - 2 * h >= max(rules.axis_align(a), 1)
            for a, (s, h) in enumerate(zip(tile_shape(rules, t, dims), rules.halo))
        )
    ]
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
    so far, in :data:`TIMING_ROUNDS` passes (the median timing of each rung kept). ``None`` when the largest rung
    is the fastest (no cap).

    ``up_to``: the tile the FLOPs pick for an image (it may not be cubic); the ladder is cut below its volume and
    it is timed as the last rung, after the tiles timed for earlier images below it.

    ``max_flops``: the FLOPs this call adds to the timing credit (the part of earlier calls' ``max_flops`` their
    timings did not spend); timing stops before it would cost more than the credit (a later call goes on from
    there, with more credit); then the best tile timed is the cap (``None`` when none was timed): tiles larger than
    those timed are not trusted.
    """
    if rules.halo is None or max(rules.halo) == 0 or rules.axes is None:
        return None
    key = _speed_key(network, device, dtype, sw_batch_size)
    table = _SPEEDS.setdefault(key, {})
    samples = _SAMPLES.setdefault(key, {})
    ladder = [tile_shape(rules, t, dims) for t in speed_ladder(rules, dims, memory_budget, sw_batch_size)]
    if up_to is not None:  # the rungs below, the shapes of earlier images (timed already), and up_to itself
        last = tuple(up_to)
        below = {t for t in ladder + list(table) if math.prod(t) < math.prod(last)}
        ladder = sorted(below | {last}, key=lambda t: (math.prod(t), t))
    allowed = float("inf") if max_flops is None else _CREDIT.get(key, 0.0) + max_flops
    spent, afford = 0.0, True

    def walk(rounds: int) -> tuple[int, ...] | None:
        """The fastest rung per output pixel, up the ladder until a rung is 15% slower than the best so far (past
        the point where larger tiles stop paying), timing each rung with fewer than ``rounds`` timings on the way
        while the credit lasts. A rung never timed ends the walk: it and those above are not trusted (the largest
        tile of the FLOP rule is the slowest on a CPU past its caches; default_tile_size looks one rung beyond)."""
        nonlocal spent, afford
        speeds: list[tuple[float, tuple[int, ...]]] = []
        for t in ladder:
            if afford and len(samples.get(t, ())) < rounds:
                need = _timing_cost(rules, t, sw_batch_size)
                if spent + need > allowed:
                    afford = False  # nothing more this call; a later one goes on from here, with more credit
                else:
                    spent += need
                    _time_tile(network, rules, t, channels, device, dtype, sw_batch_size, key)
            if t not in table:
                break
            speeds.append((table[t], t))
            if table[t] > 1.15 * min(speeds)[0]:
                break
        return min(speeds)[1] if speeds else None

    # in passes, each timing the rungs up to the knee (as the last pass left the timings) once more, so that every
    # rung is timed once before any is timed again and a rung's timings lie a pass apart (a slow spell of the
    # machine rarely covers both)
    for rounds in range(1, TIMING_ROUNDS + 1):
        tile = walk(rounds)
    if afford:
        _SHORT.discard(key)
    else:
        _SHORT.add(key)
    if max_flops is not None:
        _CREDIT[key] = allowed - spent
    return None if tile is None or tile == ladder[-1] else max(tile)


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
    ``"flops"``, no larger than the :func:`speed_cap`, by measured time (:data:`CONTENDERS`). With ``"auto"`` the
    timing may cost at most ``max_cost`` times the FLOPs of the inferences it served in this process, this one
    included (``repeats``: batch x flips); ``"measure"`` times without limit. Once nothing is left to time, the
    choice for an image size is kept until a new timing (a call then costs no more than with an explicit tile).
    """
    tile_search = check_option("tile_search", tile_search, TILE_SEARCHES)
    if tile_search == "flops" or rules.halo is None or max(rules.halo) == 0:
        return auto_tile_size(rules, spatial, memory_budget, sw_batch_size, overlap)
    key = _speed_key(network, device, dtype, sw_batch_size)
    memo = (key, rules, tuple(spatial), int(memory_budget), sw_batch_size, float(overlap))
    if memo in _CHOICES:  # settled: nothing more to time, so the same choice without the candidates again
        tile, flops = _CHOICES[memo]
        if tile_search == "auto":
            _CREDIT[key] = _CREDIT.get(key, 0.0) + max_cost * flops * max(repeats, 1)
        return tile
    candidates = tile_candidates(rules, spatial, memory_budget, sw_batch_size, overlap)
    if not candidates:
        return auto_tile_size(rules, spatial, memory_budget, sw_batch_size, overlap)
    flop_tile = _fewest_flops(candidates)
    flops = min(c.flops for c in candidates)  # of one inference at the tile the FLOPs pick
    work = flops * max(repeats, 1)
    max_flops = None if tile_search == "measure" else max_cost * work
    cap = speed_cap(
        network, rules, len(spatial), channels, device, dtype, memory_budget, sw_batch_size, flop_tile, max_flops
    )
    if cap is None:
        return flop_tile
    # the candidates up to the rung after the cap (a fitted tile no larger than that is also what fitting from a
    # nominal tile within it gives), by their time: FLOPs times the measured seconds per FLOP at their size
    dims = len(spatial)
    ladder = speed_ladder(rules, dims, memory_budget, sw_batch_size)
    limit = tile_shape(rules, min([t for t in ladder if t > cap] or [cap]), dims)
    capped = [c for c in candidates if all(t <= m for t, m in zip(c.tile, limit))]
    if not capped:
        return flop_tile
    left = math.inf if max_flops is None else _CREDIT.get(key, 0.0)  # what speed_cap left of the credit

    def best(optimistic: bool = False) -> tuple[int, ...]:
        rate = seconds_per_flop(_SPEEDS.get(key, {}), rules, optimistic)
        return min((c.flops * rate(c.tile), c.tile) for c in capped)[1]

    # the speed between two timed tiles is a guess, and it can fall off a cliff between two rungs (on a 2-core AMD
    # EPYC the rung 748 timed 20-30% slower per pixel than 620): so the candidate that would be fastest if
    # it ran at the better speed of the timed tiles around it is timed in its own shape (TIMING_ROUNDS times, a
    # candidate at a time, while the credit lasts) until that candidate is one timed already
    samples = _SAMPLES.setdefault(key, {})
    settled = key not in _SHORT
    for _ in range(CONTENDERS * TIMING_ROUNDS):
        tile = best(optimistic=True)
        need = _timing_cost(rules, tile, sw_batch_size)
        if len(samples.get(tile, ())) >= TIMING_ROUNDS:
            break
        settled = False
        if need > left:
            break
        left -= need
        _time_tile(network, rules, tile, channels, device, dtype, sw_batch_size, key)
    if max_flops is not None:
        _CREDIT[key] = left
    choice = best()
    if settled:  # nothing was left to time: later calls on this image size take the same tile
        _CHOICES[memo] = (choice, flops)
    return choice


def seconds_per_flop(
    table: dict[tuple[int, ...], float], rules: SizeRules, optimistic: bool = False
) -> Callable[[Sequence[int]], float]:
    """The measured speed of any tile: seconds per FLOP interpolated linearly in the tile's volume between the
    timed tiles of ``table`` (seconds per output pixel, as :func:`speed_cap` keeps them), flat beyond them;
    ``optimistic``: between two timed tiles the faster one's speed."""
    points = sorted((math.prod(t), spp * _out_pixels(rules, t) / estimate_flops(rules, t)) for t, spp in table.items())

    def rate(tile: Sequence[int]) -> float:
        if not points:
            return 1.0
        v = math.prod(tile)
        if v <= points[0][0]:
            return points[0][1]
        for (v0, r0), (v1, r1) in itertools.pairwise(points):
            if v == v1:
                return r1
            if v < v1:
                return min(r0, r1) if optimistic else r0 + (r1 - r0) * (v - v0) / (v1 - v0)
        return points[-1][1]

    return rate
