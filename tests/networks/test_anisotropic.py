"""Per-level, per-axis kernels and strides: the size rules agree with a real forward for many random settings."""

from __future__ import annotations

import random

import pytest
import torch

from monai_unet.inferers import OverlapTileInferer
from monai_unet.networks import UNet
from monai_unet.networks.sizes import AxisRule


def _random_setting(rng: random.Random, dims: int) -> dict:
    levels = rng.randint(2, 4)
    kernels, strides = [], []
    for level in range(levels):
        kernels.append(tuple(rng.choice((1, 3, 3, 5)) for _ in range(dims)))
        strides.append((1,) * dims if level == 0 else tuple(rng.choice((1, 2, 2, 3)) for _ in range(dims)))
    return {
        "spatial_dims": dims,
        "features": tuple(2 * (level + 1) for level in range(levels)),
        "kernel_size": kernels,
        "strides": strides,
        "padding": rng.choice(("valid", "valid", "same")),
        "upsample": rng.choice(("deconv", "nontrainable")),
        "dropout": 0.0,
    }


@pytest.mark.parametrize("seed", range(12))
def test_size_rules_match_a_real_forward(seed: int) -> None:
    rng = random.Random(seed)
    dims = 2 if seed % 2 == 0 else 3
    setting = _random_setting(rng, dims)
    torch.manual_seed(seed)
    net = UNet(in_channels=1, out_channels=2, **setting).eval()
    rules = net.axis_rules
    for r in rules:
        assert r.valid(r.first + 3 * r.step) == [r.first + k * r.step for k in range(4)]
    # every valid size gives the predicted output; every size in between is refused, by the rules and by forward
    for trial in range(4):
        size = tuple(r.first + rng.randint(0, 2) * r.step for r in rules)
        assert net.is_valid_size(size)
        expected = net.output_size(size)
        with torch.no_grad():
            y = net(torch.randn(1, 1, *size))
        assert tuple(y.shape[2:]) == expected, (setting, size)
        assert all(s - o == 2 * h for s, o, h in zip(size, expected, net.halo))
        assert net.input_size(expected) == size
        if trial == 0:
            axis = rng.randrange(dims)
            if rules[axis].step > 1:
                bad = list(size)
                bad[axis] += rng.randint(1, rules[axis].step - 1)
                assert not net.is_valid_size(bad)
                below, above = net.nearest_valid_sizes(bad)[axis]
                assert below == size[axis] and above == size[axis] + rules[axis].step
                with pytest.raises(ValueError, match=f"along spatial axis {axis}.*nearest valid sizes are {below}"):
                    net(torch.randn(1, 1, *bad))
    # below the smallest valid size nothing is valid: forward of first - 1 fails (or, if torch lets it through, the
    # rules were right that it is not a valid size)
    for axis, r in enumerate(rules):
        if r.first > 1:
            small = [x.first for x in rules]
            small[axis] = r.first - 1
            assert not net.is_valid_size(small)
            with pytest.raises((ValueError, RuntimeError)):
                net(torch.randn(1, 1, *small))


def test_axis_rule_matches_a_brute_force_search() -> None:
    rng = random.Random(0)
    for _ in range(200):
        levels = rng.randint(1, 5)
        kernels = tuple(rng.choice((1, 3, 5, 7)) for _ in range(levels))
        strides = (1, *(rng.choice((1, 2, 3, 4)) for _ in range(levels - 1)))
        rule = AxisRule(kernels, strides, rng.choice(("valid", "same")))
        limit = rule.first + 4 * rule.step
        brute = [s for s in range(1, limit + 1) if rule.output(s) > 0]
        assert brute == rule.valid(limit) and brute[0] == rule.first
        assert {s - rule.output(s) for s in brute} == {2 * rule.halo}


def test_one_wide_kernels_lose_nothing_along_their_axis() -> None:
    net = UNet(3, 1, 2, features=(4, 8, 16), kernel_size=[(3, 3, 1), (3, 3, 1), (3, 3, 1)], strides=[1, (2, 2, 1), 2])
    assert net.halo[2] == 0
    # the z stride of 2 at the last level still asks for even sizes along z
    assert net.axis_rules[2].step == 2 and net.axis_rules[2].first == 2


def test_defaults_are_the_paper_network() -> None:
    net = UNet()
    assert sum(p.numel() for p in net.parameters()) == 31_030_658
    assert net.output_size(572) == (388, 388)
    assert net.kernel_size == ((3, 3),) * 5 and net.strides == ((1, 1),) + ((2, 2),) * 4
    explicit = UNet(kernel_size=[3] * 5, strides=[1, 2, 2, 2, 2])
    assert [p.shape for p in explicit.parameters()] == [p.shape for p in net.parameters()]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kernel_size": [3, 3]}, "one entry per level"),
        ({"kernel_size": [3, 4, 3]}, "odd"),
        ({"strides": [2, 2, 2]}, r"strides\[0\] must be 1"),
        ({"strides": [1, (2, 2, 2), 2]}, "one int or 2 values"),
    ],
)
def test_bad_kernel_and_stride_settings_are_named(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        UNet(2, 1, 2, features=(4, 8, 16), **kwargs)


@pytest.mark.parametrize("dims", [2, 3])
def test_overlap_tile_is_exact_for_anisotropic_networks(dims: int) -> None:
    """Tiled inference equals one forward over the mirrored whole image, with a per-axis halo."""
    torch.manual_seed(0)
    if dims == 2:
        net = UNet(2, 1, 2, features=(4, 8, 16), kernel_size=[(3, 1), (3, 3), 3], strides=[1, (2, 1), 2], dropout=0)
        spatial = (45, 37)
    else:
        net = UNet(
            3, 1, 2, features=(4, 8, 16), kernel_size=[(3, 3, 1), (3, 3, 1), 3], strides=[1, (2, 2, 1), 2], dropout=0
        )
        spatial = (41, 38, 11)
    net.eval()
    x = torch.randn(1, 1, *spatial)
    whole = OverlapTileInferer(tile_size=net.input_size(spatial))(x, net)
    rules = net.axis_rules
    tile = tuple(r.first + r.step for r in rules)
    tiled = OverlapTileInferer(tile_size=tile)(x, net)
    assert tiled.shape == (1, 2, *spatial)
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=1e-5)
    blended = OverlapTileInferer(tile_size=tile, overlap=0.25, mode="gaussian")(x, net)
    torch.testing.assert_close(blended, whole, atol=1e-5, rtol=1e-5)
    default = OverlapTileInferer(tile_search="flops")(x, net)
    torch.testing.assert_close(default, whole, atol=1e-5, rtol=1e-5)


def test_torchscript_keeps_the_anisotropic_size_rules() -> None:
    net = UNet(3, 1, 2, features=(4, 8, 16), kernel_size=[(3, 3, 1), 3, 3], strides=[1, (2, 2, 1), 2]).eval()
    scripted = torch.jit.script(net)
    size = tuple(r.first + r.step for r in net.axis_rules)
    x = torch.randn(1, 1, *size)
    torch.testing.assert_close(scripted(x), net(x))
    with pytest.raises(Exception, match="along spatial axis 2"):
        scripted(torch.randn(1, 1, size[0], size[1], size[2] + 1))
    assert OverlapTileInferer(tile_size=size)(x, scripted).shape == (1, 2, *size)


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_slice_by_slice_network_normalises_each_slice_on_its_own(padding: str) -> None:
    # nnU-Net's 2d configuration on a volume: kernel 1 and no pooling along z; with instance normalisation a
    # slice's result must not depend on the slices sharing its tile (4 in training, the whole volume in inference)
    torch.manual_seed(0)
    kernels, strides = [(3, 3, 1)] * 3, [1, (2, 2, 1), (2, 2, 1)]
    net = UNet(3, 2, 2, features=(4, 8, 16), padding=padding, norm="instance", kernel_size=kernels, strides=strides)
    net = net.eval()
    assert net.slice_axis == 2
    size = tuple(r.first + 2 * r.step for r in net.axis_rules[:2])
    x = torch.randn(1, 2, *size, 5)
    x[..., 3] = x[..., 3] * 7.0 + 4.0  # one slice with very different statistics
    whole = net(x)
    for k in range(5):
        torch.testing.assert_close(net(x[..., k : k + 1])[..., 0], whole[..., k], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.jit.script(net)(x), whole)
    # a network that looks across z normalises the whole tile together (no slice axis); 2D networks have none
    assert UNet(3, 1, 2, features=(4, 8), norm="instance").slice_axis is None
    assert UNet(2, 1, 2, features=(4, 8), kernel_size=[(3, 1), (3, 1)], strides=[1, (2, 1)]).slice_axis is None
