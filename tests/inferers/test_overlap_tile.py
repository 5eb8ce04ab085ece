"""OverlapTileInferer: tiled inference equals one pass over the whole mirrored image, and its options work."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from torch import nn

from monai_unet.inferers import OverlapTileInferer, auto_tile_size, choose_tile_size, overlap_tile_inference
from monai_unet.inferers.tiling import (
    SizeRules,
    axis_spans,
    estimate_activation_bytes,
    estimate_flops,
    plan_axis,
    reflect_indices,
    size_rules_of,
)
from monai_unet.networks import UNet, input_size_1d

torch.set_num_threads(min(2, torch.get_num_threads()))

FEATS = {2: (4, 8, 16), 3: (4, 8)}


def make_net(dims: int, in_channels: int = 1, out_channels: int = 2, padding: str = "valid", seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    return UNet(dims, in_channels, out_channels, features=FEATS[dims], padding=padding).eval()


def mirror(x: torch.Tensor, before: int, sizes: list[int]) -> torch.Tensor:
    """The image mirrored at its borders: ``before`` pixels before each axis, ``sizes`` long in all."""
    for a, n in enumerate(sizes):
        x = x.index_select(a + 2, reflect_indices(-before, n, x.shape[a + 2]))
    return x


def whole_image(net: UNet, x: torch.Tensor) -> torch.Tensor:
    """The reference: one pass of the network over the whole mirrored image, cropped to the image."""
    spatial = x.shape[2:]
    sizes = [input_size_1d(s, net.n_pool, net.padding) for s in spatial]
    with torch.no_grad():
        y = net(mirror(x, net.halo[0], sizes))
    return y[(slice(None), slice(None), *(slice(0, s) for s in spatial))]


def assert_same(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    scale = float(b.abs().max()) or 1.0
    assert float((a - b).abs().max()) <= 1e-5 * scale


# ---- mirroring ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 2, 3, 7, 20])
@pytest.mark.parametrize("pad", [0, 1, 5, 19, 44])
def test_reflect_is_numpy_reflect_repeated(size: int, pad: int) -> None:
    """Mirroring without repeating the edge pixel, also for pads beyond the image size (ping-pong)."""
    a = np.arange(size)
    idx = reflect_indices(-pad, size + 2 * pad, size).numpy()
    if size == 1:
        assert (idx == 0).all()
        return
    ref = a
    while (len(ref) - size) // 2 < pad:  # numpy refuses pads >= size: pad step by step
        step = min(size - 1, pad - (len(ref) - size) // 2)
        ref = np.pad(ref, step, mode="reflect")
    np.testing.assert_array_equal(idx, ref)


@pytest.mark.parametrize("size", [1, 2, 5, 30, 131])
@pytest.mark.parametrize("tile,halo", [(44, 20), (60, 20), (12, 4)])
def test_tile_spans_read_the_mirrored_image(size: int, tile: int, halo: int) -> None:
    """Each tile's span (one reflection of its in-image block, or an index map for pads wider than the image)
    reads exactly the tile's part of the axis mirrored without end."""
    plan = plan_axis(size, tile, halo, SizeRules(spatial_dims=1, halo=(halo,)), fit=False)
    axis = torch.arange(size, dtype=torch.float32)
    for start, span in zip(plan.starts, axis_spans(plan)):
        want = axis[reflect_indices(start - halo, tile, size)]
        block = axis[span.lo : span.hi]
        index = span.gather_index(tile)  # the gather path (taken when any axis of the tile needs an index map)
        assert torch.equal(block if index is None else block[index], want)
        if span.index is None:  # the one-reflection path
            read = F.pad(block[None, None], (span.pad_before, span.pad_after), mode="reflect")[0, 0]
            assert torch.equal(read, want)


# ---- exactness ---------------------------------------------------------------------------------------------------

# smaller than the halo (20), mixed (one axis mirrored back and forth), odd, not multiples of the tile
CASES_2D = [(1, 1), (3, 5), (17, 2), (60, 7), (50, 77), (131, 200)]
CASES_3D = [(1, 2, 3), (9, 17, 20), (31, 24, 5)]


@pytest.mark.parametrize("dims,spatial", [(2, s) for s in CASES_2D] + [(3, s) for s in CASES_3D])
@pytest.mark.parametrize("tile", [None, "small"])
def test_tiled_equals_whole_mirrored_image(dims: int, spatial: tuple, tile: str | None) -> None:
    net = make_net(dims, in_channels=2, out_channels=3)
    x = torch.randn(2, 2, *spatial)
    tile_size = None if tile is None else net.valid_sizes(60 if dims == 2 else 40)[1]
    with torch.no_grad():
        y = OverlapTileInferer(tile_size=tile_size, sw_batch_size=3)(x, net)
    assert_same(y, whole_image(net, x))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    h=st.integers(1, 90),
    w=st.integers(1, 90),
    k=st.integers(1, 4),
    batch=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_tiled_equals_whole_property(h: int, w: int, k: int, batch: int, seed: int) -> None:
    """Any image size, any valid tile, any sw_batch_size: tiled == whole mirrored image."""
    net = make_net(2)
    tile = net.valid_sizes(200)[k]
    x = torch.randn(1, 1, h, w, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        y = overlap_tile_inference(x, net, tile_size=tile, sw_batch_size=batch)
    assert_same(y, whole_image(net, x))


def test_depth_four_paper_network_small_widths() -> None:
    """The paper's depth (halo 92) on an image smaller than the halo and one needing several tiles."""
    torch.manual_seed(0)
    net = UNet(2, 1, 2, features=(2, 4, 4, 4, 4)).eval()
    assert net.halo == (92, 92)
    for spatial in [(5, 90), (130, 61)]:
        x = torch.randn(1, 1, *spatial)
        with torch.no_grad():
            y = OverlapTileInferer(tile_size=220)(x, net)
        assert_same(y, whole_image(net, x))


# ---- networks the inferer gets the halo from ---------------------------------------------------------------------


class Opaque(nn.Module):
    """A network with no size attributes (as a user's wrapper would be)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_torchscript_and_wrapped_networks() -> None:
    net = make_net(2)
    x = torch.randn(1, 1, 45, 70)
    ref = whole_image(net, x)
    scripted = torch.jit.script(net)
    assert size_rules_of(scripted).halo == net.halo
    assert size_rules_of(nn.DataParallel(net)).halo == net.halo
    with torch.no_grad():
        assert_same(OverlapTileInferer(tile_size=60)(x, scripted), ref)
        assert_same(OverlapTileInferer(tile_size=60)(x, nn.DataParallel(net)), ref)
        # no size rules: halo given, or probed once from tile_size
        # (tile starts then align to 32 pixels, so the tile's output must be at least 32)
        assert_same(OverlapTileInferer(tile_size=76, halo=20)(x, Opaque(net)), ref)
        assert_same(OverlapTileInferer(tile_size=76)(x, Opaque(net)), ref)
        traced = torch.jit.trace(Opaque(net), torch.randn(1, 1, 76, 76))
        assert_same(OverlapTileInferer(tile_size=76)(x, traced), ref)


def test_bundle_config_instantiates() -> None:
    config = {
        "inferer": {
            "_target_": "monai_unet.inferers.OverlapTileInferer",
            "tile_size": 60,
            "sw_batch_size": 2,
            "overlap": 0.25,
            "mode": "gaussian",
        }
    }
    inferer = ConfigParser(config).get_parsed_content("inferer")
    assert isinstance(inferer, OverlapTileInferer)
    net = make_net(2)
    x = torch.randn(1, 1, 40, 33)
    with torch.no_grad():
        assert_same(inferer(x, net), whole_image(net, x))


def test_metatensor_keeps_metadata() -> None:
    x = MetaTensor(torch.randn(1, 1, 30, 41), meta={"filename_or_obj": "case1.nii.gz"})
    with torch.no_grad():
        y = OverlapTileInferer()(x, make_net(2))
    assert isinstance(y, MetaTensor) and y.meta["filename_or_obj"] == "case1.nii.gz"
    assert y.shape == (1, 2, 30, 41)


# ---- options -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["gaussian", "constant"])
@pytest.mark.parametrize("overlap", [0.25, 0.6])
def test_blending_keeps_exact_result(mode: str, overlap: float) -> None:
    """Blended overlapping tiles of an exact (unpadded) network still give the whole-image result."""
    net = make_net(2)
    x = torch.randn(1, 1, 97, 64)
    with torch.no_grad():
        y = OverlapTileInferer(tile_size=76, overlap=overlap, mode=mode, sw_batch_size=4)(x, net)
    assert_same(y, whole_image(net, x))


@pytest.mark.parametrize("dims", [2, 3])
def test_blending_weights_sum_to_one(dims: int) -> None:
    """With a pointwise network any tiling and blending must return the network's output exactly."""
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 1) if dims == 2 else nn.Conv3d(2, 3, 1)
    x = torch.randn(2, 2, *((37, 50) if dims == 2 else (13, 20, 9)))
    tile = 16 if dims == 2 else 8
    with torch.no_grad():
        ref = conv(x)
        for overlap in (0.0, 0.3, 0.6):
            y = OverlapTileInferer(tile_size=tile, halo=0, overlap=overlap, mode="gaussian", sigma_scale=0.2)(x, conv)
            assert_same(y, ref)


def test_same_padded_unet_is_a_sliding_window_drop_in() -> None:
    """A padding="same" UNet (halo 0): a window covering the image equals the network; tiles give the shape."""
    net = make_net(2, padding="same")
    assert size_rules_of(net).halo == (0, 0)
    x = torch.randn(1, 1, 64, 48)
    with torch.no_grad():
        assert_same(OverlapTileInferer(tile_size=(64, 48))(x, net), net(x))
        y = OverlapTileInferer(tile_size=32, overlap=0.5, mode="gaussian")(x, net)
        ref = net(x)
        assert_same(OverlapTileInferer()(x, net), ref)  # default: the largest tile, here the whole image
    assert y.shape == (1, 2, 64, 48) and torch.isfinite(y).all()
    # blending of the tiles' padded borders: the result stays close to one pass
    assert float((y - ref).abs().mean()) < 0.2 * float(ref.abs().mean())


@pytest.mark.parametrize("dims", [2, 3])
def test_flip_tta_equals_whole_image_tta(dims: int) -> None:
    net = make_net(dims)
    spatial = (45, 38) if dims == 2 else (13, 22, 9)
    x = torch.randn(1, 1, *spatial)
    sizes = [input_size_1d(s, net.n_pool, net.padding) for s in spatial]
    xm = mirror(x, net.halo[0], sizes)
    crop = (slice(None), slice(None), *(slice(0, s) for s in spatial))
    flips = [f for r in range(dims + 1) for f in itertools.combinations(range(2, dims + 2), r)]
    with torch.no_grad():
        probs = [torch.flip(torch.softmax(net(torch.flip(xm, f)), 1), f) for f in flips]
        ref = (sum(probs) / len(probs))[crop]
        tile = 48 if dims == 2 else 28
        y = OverlapTileInferer(tile_size=tile, tta=True)(x, net)
    assert len(flips) == 2**dims
    assert_same(y, ref)
    assert torch.allclose(y.sum(1), torch.ones(()), atol=1e-5)


def test_flip_tta_does_not_flip_an_axis_the_network_never_looks_across() -> None:
    """A 2d-configured 3D network (1-wide kernels and no pooling along z, as the committed brain plan): TTA runs the
    4 in-plane flips per tile, not 8, and gives the average over all 8 flips of the whole mirrored image."""
    torch.manual_seed(0)
    net = UNet(
        3, 1, 2, features=(4, 8, 16), kernel_size=[[3, 3, 1]] * 3, strides=[[1, 1, 1], [2, 2, 1], [2, 2, 1]]
    ).eval()
    rules = size_rules_of(net)
    assert [r.is_flat for r in net.axis_rules] == [False, False, True]
    spatial = (30, 26, 5)
    x = torch.randn(1, 1, *spatial)
    xm = x
    for a, s in enumerate(spatial):
        xm = xm.index_select(a + 2, reflect_indices(-rules.halo[a], rules.input_size(s, a), s))
    every = [f for r in range(4) for f in itertools.combinations(range(2, 5), r)]
    crop = (slice(None), slice(None), *(slice(0, s) for s in spatial))
    calls: list[int] = []
    net.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        ref = (sum(torch.flip(torch.softmax(net(torch.flip(xm, f)), 1), f) for f in every) / len(every))[crop]
        calls.clear()
        tile = (net.axis_rules[0].first + 4 * net.axis_rules[0].step,) * 2 + (5,)  # two tiles along x and y
        y = OverlapTileInferer(tile_size=tile, tta=True)(x, net)
    assert_same(y, ref)
    assert len(calls) == 4 * 4  # 4 tiles, 4 flips each


def test_memory_budget_picks_largest_fitting_tile() -> None:
    net = make_net(2)
    rules = size_rules_of(net)
    budget = 4 * 2**20
    (tile, _) = choose_tile_size(rules, 2, budget, sw_batch_size=2)
    assert estimate_activation_bytes(rules, (tile, tile), 2) <= budget
    assert estimate_activation_bytes(rules, (tile + 8, tile + 8), 2) > budget
    assert net.is_valid_size(tile)
    x = torch.randn(1, 1, 300, 170)
    with torch.no_grad():
        y = OverlapTileInferer(memory_budget=budget, sw_batch_size=2)(x, net)
    assert_same(y, whole_image(net, x))
    with pytest.raises(ValueError, match="memory_budget"):
        OverlapTileInferer(memory_budget=1000)(x, net)


def test_flop_rule_tile_has_fewest_flops_within_budget() -> None:
    """The FLOP rule's tile (the default where timing does not pay, and within the measured speed cap) costs
    (within 3%) the fewest FLOPs over the image of all valid tiles fitting the budget."""
    rules = size_rules_of(UNet(2, 1, 2, features=(16, 32, 64, 128, 256)))
    spatial, budget = (1000, 700), 256 * 2**20
    tile = auto_tile_size(rules, spatial, budget)

    def cost(t: int) -> int:
        plans = [plan_axis(s, t, 92, rules) for s in spatial]
        return math.prod(len(p.starts) for p in plans) * estimate_flops(rules, tuple(p.tile for p in plans))

    chosen = math.prod(len(plan_axis(s, t, 92, rules).starts) for s, t in zip(spatial, tile))
    chosen *= estimate_flops(rules, tile)
    fitting = [t for t in range(204, 2000, 16) if estimate_activation_bytes(rules, (t, t), 1) <= budget]
    assert estimate_activation_bytes(rules, tile, 1) <= budget
    assert chosen <= 1.03 * min(cost(t) for t in fitting)
    assert chosen < 0.9 * cost(204)  # much better than the smallest tiles


def test_memory_estimate_bounds_measured_peak() -> None:
    """The analytic estimate is not below what the forward really holds (measured by the profiler)."""
    from torch.profiler import ProfilerActivity, profile

    net = make_net(2)
    rules = size_rules_of(net)
    x = torch.randn(2, 1, 204, 204)
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        net(x)
    live, peak = 0, 0
    for e in sorted(prof.events(), key=lambda e: e.time_range.start):
        live += e.self_cpu_memory_usage or 0
        peak = max(peak, live)
    est = estimate_activation_bytes(rules, (204, 204), 2)
    assert peak <= est <= 4 * peak


@pytest.mark.parametrize("dims", [2, 3])
def test_channels_last_is_exact_and_puts_the_weights_back(dims: int) -> None:
    """The CPU default runs the weights in channels-last format: same result, and the network is as it was."""
    net = make_net(dims)
    before = [(p.data_ptr(), p.stride()) for p in net.parameters()]
    x = torch.randn(2, 1, *((150, 97) if dims == 2 else (50, 37, 45)))
    with torch.no_grad():
        fast = OverlapTileInferer(tile_size=92 if dims == 2 else 44)(x, net)  # default: channels_last on the CPU
        plain = OverlapTileInferer(tile_size=92 if dims == 2 else 44, channels_last=False)(x, net)
        forced = OverlapTileInferer(tile_size=92 if dims == 2 else 44, channels_last=True)(x, net)
    assert [(p.data_ptr(), p.stride()) for p in net.parameters()] == before
    ref = whole_image(net, x)
    for y in (fast, plain, forced):
        assert_same(y, ref)
    # the weights are put back also when the call fails with them converted (a tile size the network refuses)
    with pytest.raises(ValueError, match="not a valid input size"):
        OverlapTileInferer(tile_size=93 if dims == 2 else 45)(x, net)
    assert [(p.data_ptr(), p.stride()) for p in net.parameters()] == before


def test_channels_last_concurrent_calls_share_one_conversion() -> None:
    """Threads of a server inferring with one network: every result exact, the original weights back after."""
    from concurrent.futures import ThreadPoolExecutor

    net = make_net(2)
    before = [(p.data_ptr(), p.stride()) for p in net.parameters()]
    images = [torch.randn(1, 1, 120 + 7 * i, 90) for i in range(6)]

    def infer(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return OverlapTileInferer(tile_size=92, channels_last=True)(x, net)

    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(infer, images))
    for x, y in zip(images, results):
        assert_same(y, whole_image(net, x))
    assert [(p.data_ptr(), p.stride()) for p in net.parameters()] == before


def test_progress_bar(capsys: pytest.CaptureFixture) -> None:
    with torch.no_grad():
        OverlapTileInferer(tile_size=44, progress=True)(torch.randn(1, 1, 40, 40), make_net(2))
    assert "overlap-tile" in capsys.readouterr().err


def test_sw_device_and_device_cpu() -> None:
    net = make_net(2)
    x = torch.randn(1, 1, 33, 20)
    with torch.no_grad():
        y = OverlapTileInferer(sw_device="cpu", device="cpu")(x, net)
    assert y.device.type == "cpu"
    assert_same(y, whole_image(net, x))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_tiles_on_gpu_output_on_cpu() -> None:
    net = make_net(2).cuda()
    x = torch.randn(1, 1, 130, 70)
    with torch.no_grad():
        y = OverlapTileInferer(tile_size=60, sw_device="cuda", device="cpu")(x, net)
    assert y.device.type == "cpu"
    assert_same(y, whole_image(net.cpu(), x))


# ---- errors ------------------------------------------------------------------------------------------------------


def test_error_when_output_smaller_or_larger_than_halo_predicts() -> None:
    net = Opaque(make_net(2))
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        with pytest.raises(ValueError, match="smaller than the halo"):
            OverlapTileInferer(tile_size=60, halo=4)(x, net)
        with pytest.raises(ValueError, match="larger than the halo"):
            OverlapTileInferer(tile_size=60, halo=26)(x[..., :8, :8], net)


def test_error_wrong_dimensionality_and_bad_settings() -> None:
    net = make_net(2)
    with pytest.raises(ValueError, match="spatial dimensions"):
        OverlapTileInferer()(torch.randn(1, 1, 8, 8, 8), net)
    with pytest.raises(ValueError, match="spatial dimensions"):
        OverlapTileInferer()(torch.randn(8, 8), net)
    with pytest.raises(ValueError, match="not a valid input size"):
        OverlapTileInferer(tile_size=50)(torch.randn(1, 1, 8, 8), net)
    with pytest.raises(ValueError, match="halo"):
        OverlapTileInferer(halo=3)(torch.randn(1, 1, 8, 8), net)
    with pytest.raises(ValueError, match="overlap"):
        OverlapTileInferer(overlap=1.0)
    with pytest.raises(ValueError, match="mode"):
        OverlapTileInferer(mode="linear")
    with pytest.raises(ValueError, match="tile_size"):
        OverlapTileInferer()(torch.randn(1, 1, 8, 8), Opaque(net))


@pytest.mark.parametrize(
    "setting",
    [
        {"mode": "gausian"},
        {"tta_activation": "softplus"},
        {"tile_search": "fastest"},
        {"overlap": -0.1},
        {"sw_batch_size": 0},
        {"memory_budget": 0},
    ],
)
def test_bad_settings_are_refused_alike_by_the_function_and_the_inferer(setting: dict) -> None:
    """One check for both entry points: the same ValueError, naming the setting, before any work."""
    name = next(iter(setting))
    with pytest.raises(ValueError, match=name) as by_class:
        OverlapTileInferer(**setting)
    with pytest.raises(ValueError, match=name) as by_function:
        overlap_tile_inference(torch.randn(1, 1, 8, 8), make_net(2), tile_size=44, **setting)
    assert str(by_class.value) == str(by_function.value)


def test_tile_size_errors_name_the_nearest_valid_sizes_and_the_argument() -> None:
    net, x = make_net(2), torch.randn(1, 1, 8, 8)
    with pytest.raises(ValueError, match=r"tile_size 93 along spatial axis 1 .* 92 \(below\) and 96 \(above\)"):
        overlap_tile_inference(x, net, tile_size=(92, 93))
    with pytest.raises(ValueError, match=r"tile_size needs one value or 2 values"):
        overlap_tile_inference(x, net, tile_size=(92, 92, 92))
