"""Tile choice: the FLOP rule, the measured speed cap, what timing may cost, and that any choice stays exact."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from test_overlap_tile import assert_same, make_net, whole_image

from monai_unet.inferers import (
    OverlapTileInferer,
    auto_tile_size,
    clear_tile_timings,
    default_tile_size,
)
from monai_unet.inferers import tile_choice as tc
from monai_unet.inferers.tiling import estimate_flops, plan_axis, size_rules_of
from monai_unet.networks import UNet

CPU = torch.device("cpu")
BIG = UNet(2, 1, 2, features=(16, 32, 64, 128, 256))  # the benchmark's network (never run here, only its rules)
RULES = size_rules_of(BIG)


@pytest.fixture(autouse=True)
def fresh_timings():
    clear_tile_timings()
    yield
    clear_tile_timings()


class FakeClock:
    """Stands in for :func:`tc.time_forward`: seconds = FLOPs of the tile at 100 GFLOP/s, or 60 GFLOP/s past
    ``knee`` (a CPU whose cache a larger tile outgrows); records which tiles were timed."""

    def __init__(self, knee: int | None) -> None:
        self.knee, self.timed = knee, []

    def __call__(self, network, tile, channels, device, dtype, batch) -> float:
        self.timed.append(tile[0])
        rate = 100e9 if self.knee is None or tile[0] <= self.knee else 60e9
        return estimate_flops(RULES, tile) * batch / rate


def test_ladder_spans_the_efficient_tiles() -> None:
    ladder = tc.speed_ladder(RULES, 2, tc.DEFAULT_MEMORY_BUDGET)
    assert ladder == sorted(ladder) and all(RULES.is_valid(t) for t in ladder)
    assert ladder[-1] == tc.choose_tile_size(RULES, 2, tc.DEFAULT_MEMORY_BUDGET)[0]
    assert all(b >= 1.2 * a for a, b in itertools.pairwise(ladder[:-1]))

    def per_px(t: int) -> float:
        return estimate_flops(RULES, (t, t)) / (t - 184) ** 2

    assert all(per_px(t) <= 1.4 * per_px(ladder[-1]) for t in ladder)


def test_speed_cap_stops_at_the_knee_and_is_cached(monkeypatch) -> None:
    clock = FakeClock(knee=892)
    monkeypatch.setattr(tc, "time_forward", clock)
    cap = tc.speed_cap(BIG, RULES, 2, 1, CPU, torch.float32, tc.DEFAULT_MEMORY_BUDGET)
    assert cap == 892
    ladder = tc.speed_ladder(RULES, 2, tc.DEFAULT_MEMORY_BUDGET)
    # one tile past the knee, no further, in TIMING_ROUNDS passes
    assert clock.timed == ladder[: ladder.index(892) + 2] * tc.TIMING_ROUNDS
    # the default tile for a large image: fewest FLOPs among tiles no larger than the cap
    tile = default_tile_size(BIG, RULES, (4096, 4096), 1, CPU, torch.float32, tc.DEFAULT_MEMORY_BUDGET)
    assert max(tile) <= 892
    assert tile == auto_tile_size(RULES, (4096, 4096), tc.DEFAULT_MEMORY_BUDGET, max_tile=892)
    assert tile != auto_tile_size(RULES, (4096, 4096), tc.DEFAULT_MEMORY_BUDGET)  # the FLOP rule goes larger
    n, rungs = len(clock.timed), set(ladder[: ladder.index(892) + 2])
    default_tile_size(BIG, RULES, (3000, 2000), 1, CPU, torch.float32, tc.DEFAULT_MEMORY_BUDGET)
    # the rungs are cached per network architecture: none timed again, only the new image's best candidates
    assert clock.timed[n:] and not rungs & set(clock.timed[n:])
    assert len(clock.timed) - n <= tc.CONTENDERS * tc.TIMING_ROUNDS


def test_no_knee_means_the_flop_rule(monkeypatch) -> None:
    """Where larger tiles are faster all the way (3D on a CPU, a GPU), the choice is the FLOP rule's."""
    clock = FakeClock(knee=None)
    monkeypatch.setattr(tc, "time_forward", clock)
    spatial = (4096, 4096)
    budget = tc.DEFAULT_MEMORY_BUDGET
    flop_tile = auto_tile_size(RULES, spatial, budget)
    tile = default_tile_size(BIG, RULES, spatial, 1, CPU, torch.float32, budget, tile_search="measure")
    # only tiles up to the one the FLOPs pick are timed: a cap above it would change nothing
    below = [t for t in tc.speed_ladder(RULES, 2, budget) if t < max(flop_tile)]
    assert clock.timed == [*below, max(flop_tile)] * tc.TIMING_ROUNDS
    assert tile == flop_tile
    assert tc.speed_cap(BIG, RULES, 2, 1, CPU, torch.float32, budget) is None  # the whole ladder: no knee either


def test_timing_costs_at_most_the_inference(monkeypatch) -> None:
    clock = FakeClock(knee=892)
    monkeypatch.setattr(tc, "time_forward", clock)
    # a small image: timing even the smallest ladder tile would cost more than the whole inference
    tile = default_tile_size(BIG, RULES, (300, 300), 1, CPU, torch.float32, tc.DEFAULT_MEMORY_BUDGET)
    assert clock.timed == [] and tile == auto_tile_size(RULES, (300, 300), tc.DEFAULT_MEMORY_BUDGET)
    # "flops" never times, "measure" always does
    default_tile_size(BIG, RULES, (4096, 4096), 1, CPU, torch.float32, tc.DEFAULT_MEMORY_BUDGET, tile_search="flops")
    assert clock.timed == []
    default_tile_size(BIG, RULES, (300, 300), 1, CPU, torch.float32, tc.DEFAULT_MEMORY_BUDGET, tile_search="measure")
    assert clock.timed
    # what one image's timing spends stays within the FLOPs of its own inference; large images find the knee
    for spatial in [(1500, 1500), (2048, 2048), (4096, 4096), (6000, 4000)]:
        clear_tile_timings()
        clock.timed.clear()
        tile = default_tile_size(BIG, RULES, spatial, 1, CPU, torch.float32, tc.DEFAULT_MEMORY_BUDGET)
        work = min(c.flops for c in tc.tile_candidates(RULES, spatial, tc.DEFAULT_MEMORY_BUDGET))
        assert timing_flops(clock.timed) <= work
        if min(spatial) >= 4000:
            assert max(tile) <= 892 and 1084 in clock.timed
        # the next image goes on where the timing stopped, within the FLOPs of both images; once the knee (the
        # first rung slower per pixel, 1084) has been timed in every pass, nothing more is timed
        settled, n = clock.timed.count(1084) == tc.TIMING_ROUNDS, len(clock.timed)
        default_tile_size(BIG, RULES, spatial, 1, CPU, torch.float32, tc.DEFAULT_MEMORY_BUDGET)
        assert timing_flops(clock.timed) <= 2 * work
        assert not settled or not {492, 604, 732, 892, 1084} & set(clock.timed[n:])


def timing_flops(timed: list[int]) -> float:
    return sum(tc.TIMING_FORWARDS * estimate_flops(RULES, (t, t)) for t in timed)


def test_a_rung_dearer_than_one_image_is_timed_once_images_paid_for_it(monkeypatch) -> None:
    """A 1024^2 image alone cannot pay for timing the rungs that suit it (748 and up): the images of a process
    add up to a credit, so a folder of them reaches the knee, and timing never costs more than the images served."""
    clock = MeasuredClock(knee=None)
    monkeypatch.setattr(tc, "time_forward", clock)
    budget, spatial = tc.DEFAULT_MEMORY_BUDGET, (1024, 1024)
    work = min(c.flops for c in tc.tile_candidates(RULES, spatial, budget))
    ladder = tc.speed_ladder(RULES, 2, budget)
    dearer = [t for t in ladder if tc.TIMING_FORWARDS * estimate_flops(RULES, (t, t)) > work]
    assert dearer and dearer[0] <= 908  # the premise: one image cannot pay for a rung it needs
    best = min(clock.seconds(spatial, c.tile) for c in tc.tile_candidates(RULES, spatial, budget))
    for images in range(1, 11):
        tile = default_tile_size(BIG, RULES, spatial, 1, CPU, torch.float32, budget)
        assert timing_flops(clock.timed) <= images * work
    assert dearer[0] in clock.timed
    assert clock.seconds(spatial, tile) <= 1.05 * best, tile


class MeasuredClock(FakeClock):
    """The speeds ``scripts/profile_tiles.py`` measured on 2 cores: 115 GFLOP/s up to an 828 tile, falling to 65 at
    1212 and beyond (the activations outgrow the cache)."""

    def rate(self, t: int) -> float:
        return 115e9 - 50e9 * min(1.0, max(0.0, (t - 828) / (1212 - 828)))

    def __call__(self, network, tile, channels, device, dtype, batch) -> float:
        self.timed.append(tile[0])
        return estimate_flops(RULES, tile) * batch / self.rate(max(tile))

    def seconds(self, spatial, tile) -> float:
        """The time of the whole image with ``tile`` (fitted to the image): its tiles' FLOPs at their speed."""
        plans = [plan_axis(s, t, h, RULES, axis=a) for a, (s, t, h) in enumerate(zip(spatial, tile, RULES.halo))]
        shape = tuple(p.tile for p in plans)
        return math.prod(len(p.starts) for p in plans) * estimate_flops(RULES, shape) / self.rate(max(shape))


@pytest.mark.parametrize("warm", [False, True])
def test_default_tile_is_within_5_percent_of_the_best_at_every_size(monkeypatch, warm) -> None:
    """The default at 1024^2 ... 16384^2 costs at most 5% more than the best tile, whether the timings are cached
    (``warm``: an earlier image went up the ladder) or this image's timing budget runs out before the knee (a mid-size
    image in a new process: the tiles not timed are not trusted, rather than the largest, slowest one taken)."""
    clock = MeasuredClock(knee=None)
    monkeypatch.setattr(tc, "time_forward", clock)
    budget = tc.DEFAULT_MEMORY_BUDGET
    for size in (1024, 1536, 2048, 3000, 4096, 8192, 16384):
        spatial = (size, size)
        clear_tile_timings()
        if warm:
            default_tile_size(BIG, RULES, spatial, 1, CPU, torch.float32, budget, tile_search="measure")
        tile = default_tile_size(BIG, RULES, spatial, 1, CPU, torch.float32, budget)
        best = min(clock.seconds(spatial, c.tile) for c in tc.tile_candidates(RULES, spatial, budget))
        assert clock.seconds(spatial, tile) <= 1.05 * best, (size, tile)


class OneOddTiming:
    """Mixed into a model clock: the first timing of the tile of side ``side`` takes ``factor`` times its time (a
    shared machine: another process beside it, or a timing that came out fast)."""

    def __init__(self, side: int, factor: float) -> None:
        super().__init__(knee=None)
        self.side, self.factor = side, factor

    def __call__(self, network, tile, channels, device, dtype, batch) -> float:
        seconds = super().__call__(network, tile, channels, device, dtype, batch)
        return seconds * (self.factor if tile[0] == self.side and self.timed.count(self.side) == 1 else 1.0)


class SlowSpell(OneOddTiming, MeasuredClock):
    """:class:`MeasuredClock` with one slow timing (``factor`` > 1), as a 748 rung timed 10% slow in one 16384^2 run
    and took the choice from a 700 tile to a 620 one, 5% slower."""


def _choose(monkeypatch, clock: FakeClock, spatial: tuple[int, int]) -> tuple[int, ...]:
    """The default tile of a new process whose forwards ``clock`` times."""
    clear_tile_timings()
    monkeypatch.setattr(tc, "time_forward", clock)
    return default_tile_size(BIG, RULES, spatial, 1, CPU, torch.float32, tc.DEFAULT_MEMORY_BUDGET)


def test_a_slow_spell_on_one_timing_does_not_move_the_choice(monkeypatch) -> None:
    """Each rung is timed in TIMING_ROUNDS passes, the median kept: where an image's credit pays for them, a
    timing 10-30% slow leaves the tile what it is on a quiet machine. With one pass it would not."""
    budget = tc.DEFAULT_MEMORY_BUDGET
    rungs = tc.speed_ladder(RULES, 2, budget)[:5]

    for size in (4096, 8192, 16384):
        spatial = (size, size)
        quiet = _choose(monkeypatch, MeasuredClock(knee=None), spatial)
        for slow, factor in itertools.product(rungs, (1.1, 1.3)):
            clock = SlowSpell(slow, factor)
            tile = _choose(monkeypatch, clock, spatial)
            assert clock.seconds(spatial, tile) <= 1.01 * clock.seconds(spatial, quiet), (size, slow, factor, tile)
    # the premise: one timing per rung (and no candidate timed in its own shape), and a 10% spell on the 892 rung
    # costs a 16384^2 image 3% or more
    spatial, clock = (16384, 16384), SlowSpell(892, 1.1)
    monkeypatch.setattr(tc, "TIMING_ROUNDS", 1)
    monkeypatch.setattr(tc, "CONTENDERS", 0)
    tile = _choose(monkeypatch, clock, spatial)
    best = min(clock.seconds(spatial, c.tile) for c in tc.tile_candidates(RULES, spatial, budget))
    assert clock.seconds(spatial, tile) >= 1.03 * best, tile


def test_one_fast_timing_does_not_move_the_choice(monkeypatch) -> None:
    """The median of a tile's timings is kept, not the fastest: one timing 20% fast (a 700 tile once timed 0.667 us
    per output pixel and ran the image at 0.828) leaves the choice within 1% of a quiet machine's, whichever tile
    (rung or candidate timed in its own shape) it hits. With the fastest kept, it took a 16384^2 image to 1.20x."""

    def worst(spatial: tuple[int, int]) -> float:
        quiet_clock = CliffClock(knee=None)
        quiet = _choose(monkeypatch, quiet_clock, spatial)
        costs = []
        for fast in sorted(set(quiet_clock.timed)):
            clock = FastFluke(fast, 0.8)
            costs.append(clock.seconds(spatial, _choose(monkeypatch, clock, spatial)) / clock.seconds(spatial, quiet))
        return max(costs)

    for size in (4096, 8192, 16384):
        assert worst((size, size)) <= 1.01, size
    # the premise: with the fastest timing kept, one fast timing moves the 16384^2 choice by more than 5%
    monkeypatch.setattr(tc.statistics, "median_low", min)
    assert worst((16384, 16384)) > 1.05


class CliffClock(MeasuredClock):
    """A CPU whose speed falls off a cliff between two rungs: 115 GFLOP/s up to a 716 tile, 85 from 748 on (a
    model: on a 2-core AMD EPYC the rung 748 timed 20-30% slower per output pixel than 620)."""

    def rate(self, t: int) -> float:
        return 115e9 if t <= 716 else 85e9


class FastFluke(OneOddTiming, CliffClock):
    """:class:`CliffClock` with one fast timing (``factor`` < 1)."""


@pytest.mark.parametrize("size", [2048, 8192])
def test_the_best_candidates_are_timed_in_their_own_shapes(monkeypatch, size) -> None:
    """Between two rungs the speed is interpolated, which a cliff makes wrong: the candidates nearest the best
    estimate are timed themselves, so the choice is within 5% of the best tile (where the image pays for it)."""
    budget, spatial = tc.DEFAULT_MEMORY_BUDGET, (size, size)

    def cost(clock: CliffClock) -> float:
        clear_tile_timings()
        monkeypatch.setattr(tc, "time_forward", clock)
        for _ in range(4):  # a folder of such images: the credit of a few pays for the rungs and the contenders
            tile = default_tile_size(BIG, RULES, spatial, 1, CPU, torch.float32, budget)
        best = min(clock.seconds(spatial, c.tile) for c in tc.tile_candidates(RULES, spatial, budget))
        return clock.seconds(spatial, tile) / best

    assert cost(CliffClock(knee=None)) <= 1.05
    monkeypatch.setattr(tc, "CONTENDERS", 0)  # the premise: only the rungs are timed, the rest interpolated
    assert cost(CliffClock(knee=None)) > 1.05


def test_speed_between_timed_tiles_is_interpolated() -> None:
    t1, t2 = (492, 492), (892, 892)
    table = {t: s / tc._out_pixels(RULES, t) * estimate_flops(RULES, t) for t, s in ((t1, 1e-11), (t2, 3e-11))}
    rate = tc.seconds_per_flop(table, RULES)
    assert rate(t1) == pytest.approx(1e-11) and rate(t2) == pytest.approx(3e-11)
    assert rate((300, 300)) == pytest.approx(1e-11) and rate((2000, 2000)) == pytest.approx(3e-11)  # flat beyond
    mid = (int(((492**2 + 892**2) / 2) ** 0.5),) * 2
    assert rate(mid) == pytest.approx(2e-11, rel=0.01)  # linear in the tile's volume


def test_invalid_tile_search() -> None:
    with pytest.raises(ValueError, match="tile_search"):
        OverlapTileInferer(tile_search="fastest")
    with pytest.raises(ValueError, match="tile_search"):
        default_tile_size(BIG, RULES, (512, 512), 1, CPU, torch.float32, 2**30, tile_search="fast")


def test_timing_leaves_the_global_random_state() -> None:
    net = make_net(2)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    seconds = tc.time_forward(net, (60, 60), 1, CPU, torch.float32, 2)
    assert seconds > 0
    assert torch.equal(torch.rand(3), expected)


def test_a_timing_costs_the_forwards_budgeted_for_it() -> None:
    """speed_cap budgets TIMING_FORWARDS forwards per timing: one warm-up, then the fastest of TIMED_FORWARDS."""
    calls = []
    net = make_net(2)
    handle = net.register_forward_hook(lambda *a: calls.append(1))
    try:
        tc.time_forward(net, (60, 60), 1, CPU, torch.float32, 1)
    finally:
        handle.remove()
    assert len(calls) == tc.TIMING_FORWARDS == 1 + tc.TIMED_FORWARDS >= 3


@pytest.mark.parametrize("dims", [2, 3])
def test_measured_default_is_exact(dims: int) -> None:
    """Timing real forwards changes which tile runs, never the result: still equal to whole-image inference."""
    net = make_net(dims)
    shape = (300, 170) if dims == 2 else (70, 45, 52)
    x = torch.randn(1, 1, *shape)
    with torch.no_grad():
        y = OverlapTileInferer(tile_search="measure", memory_budget=64 * 2**20)(x, net)
    assert tc._SPEEDS  # it did time
    assert_same(y, whole_image(net, x))


def test_default_memory_budget_follows_the_machine() -> None:
    import os

    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    budget = tc.default_memory_budget("cpu")
    assert budget == min(max(total // 4, 2**30), 8 * 2**30)
    # within it, the inferer's default tile fits (the estimate is checked against the profiler elsewhere)
    tile = default_tile_size(BIG, RULES, (4096, 4096), 1, CPU, torch.float32, budget, tile_search="flops")
    assert tc.estimate_activation_bytes(RULES, tile, 1) <= budget


def test_a_settled_choice_is_kept_without_choosing_again(monkeypatch) -> None:
    """Once nothing is left to time, the default takes the same tile without listing the candidates again (a call
    costs what an explicit tile's does); the credit still grows, and a new timing or clearing the timings drops it."""
    clock = MeasuredClock(knee=None)
    monkeypatch.setattr(tc, "time_forward", clock)
    budget, spatial = tc.DEFAULT_MEMORY_BUDGET, (1024, 1024)
    tiles = [default_tile_size(BIG, RULES, spatial, 1, CPU, torch.float32, budget) for _ in range(20)]
    assert tc._CHOICES, "twenty 1024^2 images leave nothing to time"
    listed = []
    real = tc.tile_candidates
    monkeypatch.setattr(tc, "tile_candidates", lambda *a, **k: listed.append(a) or real(*a, **k))
    credit, timed = sum(tc._CREDIT.values()), len(clock.timed)
    again = default_tile_size(BIG, RULES, spatial, 1, CPU, torch.float32, budget)
    assert again == tiles[-1] and not listed and len(clock.timed) == timed
    assert sum(tc._CREDIT.values()) == pytest.approx(credit + min(c.flops for c in real(RULES, spatial, budget)))
    tc._time_tile(BIG, RULES, (700, 700), 1, CPU, torch.float32, 1, next(iter(tc._CHOICES))[0])  # a new timing
    assert not tc._CHOICES
    default_tile_size(BIG, RULES, spatial, 1, CPU, torch.float32, budget)
    assert listed  # chosen again from the candidates
    clear_tile_timings()
    assert not tc._CHOICES
