"""The exported network: the bundle's U-Net with its spatial axes reversed, and its tiling for a halo declaration."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from monai_unet.export.network import PaddedOutputUNet, halo_tiling, reverse_spatial_axes, unet_kwargs
from monai_unet.networks import UNet
from monai_unet.networks.sizes import AxisRule

VARIANTS = {
    "2d": {"spatial_dims": 2, "features": (4, 8, 16, 32, 64)},
    "3d_instance": {"spatial_dims": 3, "features": (4, 8, 16), "norm": "instance"},
    "3d_anisotropic": {
        "spatial_dims": 3,
        "features": (4, 8, 16),
        "kernel_size": [(3, 3, 1), 3, 3],
        "strides": [1, (2, 2, 1), 2],
    },
    "2d_group_leaky_interp": {
        "spatial_dims": 2,
        "features": (4, 8),
        "norm": ("group", {"num_groups": 2}),
        "act": ("leakyrelu", {"negative_slope": 0.1}),
        "upsample": "nontrainable",
    },
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_reversed_network_is_the_bundle_network_transposed(variant: str) -> None:
    """On a (z,) y, x tile the exported network gives the bundle's (x, y[, z]) result, transposed; its arguments
    rebuild it (the pytorch_state_dict architecture)."""
    torch.manual_seed(0)
    net = UNet(**VARIANTS[variant]).eval()
    rev, kwargs = reverse_spatial_axes(net)
    dims = net.spatial_dims
    size = [r.first + r.step * (i + 1) for i, r in enumerate(net.axis_rules)]  # a different size per axis
    order = (0, 1, *range(dims + 1, 1, -1))
    x = torch.rand(2, 1, *size)
    with torch.no_grad():
        want = net(x).permute(*order)
        # float rounding relative to the output's scale: the transposed layout sums in another order (instance norm
        # over 6144 voxels differed by 2.2e-5 at a scale of 5.7 on an AMD EPYC without AVX-512)
        scale = float(want.abs().max())
        torch.testing.assert_close(rev(x.permute(*order).contiguous()), want, atol=1e-5 * scale, rtol=1e-4)
    twin = UNet(**kwargs)
    twin.load_state_dict(rev.state_dict())
    assert repr(twin) == repr(rev)
    assert rev.halo == tuple(reversed(net.halo))
    assert [(r.first, r.step) for r in rev.axis_rules] == [(r.first, r.step) for r in reversed(net.axis_rules)]


def test_kwargs_refuse_other_networks() -> None:
    from monai.networks.nets import BasicUNet

    with pytest.raises(ValueError, match=r"needs monai_unet\.networks\.UNet"):
        unet_kwargs(BasicUNet(spatial_dims=2, in_channels=1, out_channels=2))


@pytest.mark.parametrize(
    "rule", [AxisRule.paper(4), AxisRule.paper(3), AxisRule.paper(2), AxisRule((1, 3, 3), (1, 1, 2))]
)
def test_halo_tiling_steps_on_the_pooling_grid(rule: AxisRule) -> None:
    t = halo_tiling(rule)
    assert t.exact and rule.is_valid(t.first) and rule.is_valid(t.first - t.crop_start - t.crop_end)
    assert (t.first - 2 * t.halo) % rule.step == 0 and t.first - 2 * t.halo > 0  # tiles move by whole steps
    assert (t.halo - t.crop_start - rule.halo) % rule.step == 0  # on the grid that starts `halo` before the image
    assert t.pad_start == t.halo and t.pad_end == rule.halo + t.crop_end
    if rule == AxisRule.paper(4):
        assert (t.halo, t.first) == (102, 220)


def test_halo_tiles_give_the_whole_image_result() -> None:
    """Tiles cut as a bioimage.io tool cuts them (start n * (T - 2 halo) - halo, mirrored border, middle kept) through
    the exported network give exactly one pass over the image mirrored by the network's halo: overlap-tile inference
    as monai-unet predict does it."""
    torch.manual_seed(0)
    net = UNet(spatial_dims=2, features=(4, 8, 16, 32, 64)).eval()
    kwargs = unet_kwargs(net)
    rule = net.axis_rules[0]
    t = halo_tiling(rule)
    padded = PaddedOutputUNet(crop=[[t.crop_start, t.crop_end]] * 2, pad=[[t.pad_start, t.pad_end]] * 2, **kwargs)
    padded.unet.load_state_dict(net.state_dict())
    image = torch.rand(1, 1, 192, 192)
    size = t.first + 5 * rule.step  # tiles of 300 with an inside of 96: 2 x 2 of them
    inside = size - 2 * t.halo
    with torch.no_grad():
        grown = F.pad(image, [rule.halo, rule.halo + 4] * 2, mode="reflect")  # 192 + 188 = 380 is valid
        want = net(grown)[..., :192, :192]
        mirrored = F.pad(image, [t.halo] * 4, mode="reflect")
        got = torch.zeros_like(want)
        for y in range(0, 192, inside):
            for x in range(0, 192, inside):
                out = padded.eval()(mirrored[..., y : y + size, x : x + size])
                got[..., y : y + inside, x : x + inside] = out[..., t.halo : t.halo + inside, t.halo : t.halo + inside]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
