"""One suite that every UNet variant users pick goes through (as segmentation_models.pytorch tests its models).

Each variant (2D/3D, padding valid/same, skip connections on/off, up-convolution or interpolation, no/batch/instance
norm, depth 2 to 4) is built once per module with small features; every test then checks one promise on it:
the forward pass gives the shape ``output_size`` predicts, the backward pass reaches every parameter with a finite
gradient, a saved ``state_dict`` loads into a fresh network with identical outputs, the TorchScript export (the
bundles' ``ckpt_export``) gives the eager outputs, and the size rules hold on the variant's own input.
"""

from __future__ import annotations

import copy
import io
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from monai_unet.networks import UNet

D3 = (4, 8, 16, 32)  # depth 3
D4 = (4, 8, 16, 32, 64)  # depth 4

VARIANTS = [
    pytest.param({"spatial_dims": 2, "features": D3}, id="2d-paper"),
    pytest.param({"spatial_dims": 2, "features": D4}, id="2d-depth4"),
    pytest.param({"spatial_dims": 2, "features": D3, "padding": "same"}, id="2d-same"),
    pytest.param({"spatial_dims": 2, "features": D3, "skip_connections": False}, id="2d-noskip"),
    pytest.param({"spatial_dims": 2, "features": D3, "upsample": "nontrainable"}, id="2d-interp"),
    pytest.param({"spatial_dims": 2, "features": D3, "norm": "batch"}, id="2d-batch"),
    pytest.param(
        {"spatial_dims": 2, "features": D3, "norm": "instance", "skip_connections": False}, id="2d-instance-noskip"
    ),
    pytest.param(
        {"spatial_dims": 2, "features": D4, "padding": "same", "upsample": "nontrainable", "norm": "batch"},
        id="2d-depth4-same-interp-batch",
    ),
    pytest.param({"spatial_dims": 3, "features": (4, 8, 16)}, id="3d-paper"),
    pytest.param({"spatial_dims": 3, "features": (2, 4, 8, 16), "norm": "batch"}, id="3d-depth3-batch"),
    pytest.param({"spatial_dims": 3, "features": (4, 8, 16), "norm": "instance"}, id="3d-bundle"),  # unet3d_volume's
    pytest.param({"spatial_dims": 3, "features": D3, "padding": "same", "norm": "instance"}, id="3d-same-instance"),
    pytest.param(
        {"spatial_dims": 3, "features": D4, "padding": "same", "skip_connections": False, "upsample": "nontrainable"},
        id="3d-depth4-same-noskip-interp",
    ),
]


@dataclass
class Case:
    """A variant in eval mode, an input of a valid, different size per axis, and its eager output."""

    kwargs: dict[str, Any]
    net: UNet
    x: torch.Tensor
    y: torch.Tensor


@pytest.fixture(scope="module", params=VARIANTS)
def case(request: pytest.FixtureRequest) -> Case:
    kwargs = {"in_channels": 2, "out_channels": 3, **request.param}
    torch.manual_seed(0)
    net = UNet(**kwargs).eval()
    sizes = net.valid_sizes(400)
    spatial = (sizes[1], sizes[0], sizes[0])[: net.spatial_dims]  # the first axis differs from the others
    if net.padding == "same":  # big enough that instance norm sees more than one voxel at the bottom
        spatial = tuple(s + (1 << net.depth) for s in spatial)
    x = torch.randn(2 if net.spatial_dims == 2 else 1, 2, *spatial)
    with torch.no_grad():
        y = net(x)
    return Case(kwargs, net, x, y)


def test_forward_gives_the_predicted_shape(case: Case) -> None:
    spatial = tuple(case.x.shape[2:])
    assert case.y.shape == (case.x.shape[0], 3, *case.net.output_size(spatial))
    if case.net.padding == "same":
        assert case.y.shape[2:] == spatial
    else:
        assert all(o == s - 2 * h for o, s, h in zip(case.y.shape[2:], spatial, case.net.halo))
    assert torch.isfinite(case.y).all()


def test_backward_reaches_every_parameter(case: Case) -> None:
    net = copy.deepcopy(case.net).train()  # a copy: training mode updates batch-norm statistics
    net(case.x).square().mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, f"{name} has no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


def test_state_dict_round_trip_gives_identical_outputs(case: Case) -> None:
    buffer = io.BytesIO()
    torch.save(case.net.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(1)
    fresh = UNet(**case.kwargs).eval()
    assert any(not torch.equal(a, b) for a, b in zip(fresh.parameters(), case.net.parameters()))
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    with torch.no_grad():
        assert torch.equal(fresh(case.x), case.y)


def test_torchscript_gives_the_eager_outputs(case: Case) -> None:
    scripted = torch.jit.script(case.net)
    with torch.no_grad():
        torch.testing.assert_close(scripted(case.x), case.y, rtol=0, atol=1e-6)
    with pytest.raises(Exception, match="nearest valid"):  # the size check survives scripting
        scripted(case.x[..., :-1])


def test_size_rules_on_the_variants_input(case: Case) -> None:
    net, spatial = case.net, tuple(case.x.shape[2:])
    step = 1 << net.depth
    assert net.is_valid_size(spatial)
    assert net.input_size(net.output_size(spatial)) == spatial
    for axis in range(net.spatial_dims):
        bad = tuple(s + 1 if a == axis else s for a, s in enumerate(spatial))
        assert not net.is_valid_size(bad)
        assert net.nearest_valid_sizes(bad)[axis] == (spatial[axis], spatial[axis] + step)
        expected = rf"axis {axis}\b.*\b{spatial[axis]}\b.*\b{spatial[axis] + step}\b"
        with pytest.raises(ValueError, match=expected):
            net.output_size(bad)
        with pytest.raises(ValueError, match=expected):
            net(torch.zeros(1, 2, *bad))
