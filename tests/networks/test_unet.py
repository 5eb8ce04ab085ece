"""UNet: the paper's figures, the size rules against real forward passes, init (every variant's forward, backward,
save/load and TorchScript: test_variants.py)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from monai_unet.networks import UNet
from monai_unet.networks.sizes import input_size_1d, nearest_valid_sizes_1d, output_size_1d, smallest_valid_size_1d


def _n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def test_paper_parameter_count() -> None:
    assert _n_params(UNet()) == 31_030_658


def test_paper_572_gives_388() -> None:
    net = UNet().eval()
    with torch.no_grad():
        y = net(torch.randn(1, 1, 572, 572))
    assert y.shape == (1, 2, 388, 388)
    assert net.output_size(572) == (388, 388)
    assert net.input_size(388) == (572, 572)
    assert net.halo == (92, 92)


def test_paper_valid_sizes_rule() -> None:
    net = UNet(features=(4, 8, 16, 32, 64))
    assert net.valid_sizes(300) == [188, 204, 220, 236, 252, 268, 284, 300]
    for k in range(10):
        assert net.output_size(16 * k + 124 + 64) == (16 * (k + 4) - 60,) * 2


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("features", [(4, 8), (4, 8, 16), (2, 4, 8, 16)])
@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("skip_connections", [True, False])
def test_shapes(spatial_dims: int, features: tuple, padding: str, skip_connections: bool) -> None:
    net = UNet(spatial_dims, 2, 3, features=features, padding=padding, skip_connections=skip_connections).eval()
    sizes = net.valid_sizes(400)[: 2 if spatial_dims == 2 else 1]
    for s in sizes:
        shape = (s,) * spatial_dims
        if spatial_dims == 3:  # anisotropic: a different valid size on the last axis
            shape = (s, s, net.valid_sizes(400)[1])
        with torch.no_grad():
            y = net(torch.randn(2, 2, *shape))
        assert y.shape == (2, 3, *net.output_size(shape))
        if padding == "same":
            assert y.shape[2:] == shape


@pytest.mark.parametrize("upsample", ["deconv", "nontrainable"])
@pytest.mark.parametrize("norm", [None, "batch", "instance", ("group", {"num_groups": 2})])
def test_variants_keep_size_rules(upsample: str, norm) -> None:
    net = UNet(2, 1, 2, features=(4, 8, 16), upsample=upsample, norm=norm).eval()
    s = net.valid_sizes(200)[0]
    with torch.no_grad():
        assert net(torch.randn(1, 1, s, s)).shape[2:] == net.output_size(s)


def test_skip_ablation_has_fewer_parameters() -> None:
    assert _n_params(UNet(skip_connections=False)) < _n_params(UNet())


@settings(max_examples=60, deadline=None)
@given(depth=st.integers(1, 4), size=st.integers(1, 260), padding=st.sampled_from(["valid", "same"]))
def test_size_rules_agree_with_forward(depth: int, size: int, padding: str) -> None:
    """The size helpers predict exactly which sizes a real forward pass accepts and what it returns."""
    net = UNet(2, 1, 1, features=(1,) * (depth + 1), padding=padding, dropout=0.0).eval()
    predicted = output_size_1d(size, depth, padding)
    x = torch.randn(1, 1, size, net.valid_sizes(400)[0])
    if predicted > 0:
        with torch.no_grad():
            assert net(x).shape[2] == predicted
        assert net.is_valid_size((size, x.shape[3]))
    else:
        with pytest.raises(ValueError):
            net(x)
        assert not net.is_valid_size((size, x.shape[3]))
        # the raw network would fail or give a different size: the rule is not stricter than the layers
        below, above = nearest_valid_sizes_1d(size, depth, padding)
        assert below < size < above
        assert output_size_1d(above, depth, padding) > 0
        assert below == -1 or output_size_1d(below, depth, padding) > 0


@settings(max_examples=100, deadline=None)
@given(depth=st.integers(1, 5), out=st.integers(1, 2000), padding=st.sampled_from(["valid", "same"]))
def test_input_size_is_smallest_valid(depth: int, out: int, padding: str) -> None:
    s = input_size_1d(out, depth, padding)
    assert output_size_1d(s, depth, padding) >= out
    # no smaller valid input reaches that output
    for t in range(smallest_valid_size_1d(depth, padding), s):
        o = output_size_1d(t, depth, padding)
        assert o < out or o < 0


@settings(max_examples=40, deadline=None)
@given(depth=st.integers(1, 4), size=st.integers(1, 500))
def test_valid_sizes_list_matches_rule(depth: int, size: int) -> None:
    net = UNet(3, 1, 1, features=(1,) * (depth + 1))
    listed = set(net.valid_sizes(size))
    assert listed == {t for t in range(1, size + 1) if output_size_1d(t, depth, "valid") > 0}


def test_invalid_size_error_names_nearest_sizes() -> None:
    net = UNet(features=(4, 8, 16, 32, 64))
    with pytest.raises(ValueError, match=r"570 along spatial axis 0.*556 \(below\) and 572 \(above\)"):
        net(torch.zeros(1, 1, 570, 572))
    with pytest.raises(ValueError, match=r"nearest valid size is 188"):
        net.output_size((100, 572))
    with pytest.raises(ValueError, match=r"axis 1"):
        net.check_input_size((572, 573))
    with pytest.raises(ValueError, match="4 dimensions"):
        net(torch.zeros(1, 572, 572))
    same = UNet(3, features=(4, 8, 16), padding="same")
    with pytest.raises(ValueError, match=r"valid sizes are 4 \+ 4k"):
        same.output_size((32, 32, 30))


def test_he_initialisation_spread() -> None:
    net = UNet()
    conv = net.decoders[0].conv.conv0  # 1024 -> 512, 3x3: N = 9216
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (1024 * 9)), rel=0.01)
    assert conv.weight.mean().abs().item() < 1e-3
    up = net.decoders[0].up  # 2x2 stride-2 up-convolution: each output sees 1024 inputs
    assert up.weight.std().item() == pytest.approx(math.sqrt(2 / 1024), rel=0.01)
    assert all(m.bias.abs().sum() == 0 for m in net.modules() if isinstance(m, torch.nn.Conv2d))


def test_same_seed_same_network() -> None:
    torch.manual_seed(7)
    a = UNet(features=(4, 8, 16)).state_dict()
    torch.manual_seed(7)
    b = UNet(features=(4, 8, 16)).state_dict()
    torch.manual_seed(8)
    c = UNet(features=(4, 8, 16)).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="spatial_dims"):
        UNet(spatial_dims=1)
    with pytest.raises(ValueError, match="padding"):
        UNet(padding="reflect")
    with pytest.raises(ValueError, match="upsample"):
        UNet(upsample="pixelshuffle")
    with pytest.raises(ValueError, match="features"):
        UNet(features=(64,))


def test_bundle_config_target_is_unambiguous() -> None:
    from monai.bundle import ConfigParser

    parser = ConfigParser({"net": {"_target_": "monai_unet.networks.UNet", "features": [4, 8, 16]}})
    assert isinstance(parser.get_parsed_content("net"), UNet)
