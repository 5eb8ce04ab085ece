"""Deep supervision (nnU-Net's): the extra outputs of the decoder levels, where they sit, and their loss."""

from __future__ import annotations

import pytest
import torch
from monai.losses import DiceCELoss
from torch import nn

from monai_unet.export.network import unet_kwargs
from monai_unet.losses import StackedDeepSupervisionLoss, deep_supervision_loss, deep_supervision_weights
from monai_unet.networks import UNet

PLANNED = {  # the committed brain plan's topology: slice by slice along z
    "spatial_dims": 3,
    "in_channels": 4,
    "features": (4, 8, 16, 32),
    "norm": "instance",
    "kernel_size": [[3, 3, 1]] * 4,
    "strides": [[1, 1, 1], [2, 2, 1], [2, 2, 1], [2, 2, 1]],
}


def _support(grad: torch.Tensor, axis: int) -> tuple[int, int]:
    """First and last input index along ``axis`` that a gradient reaches."""
    dims = [d for d in range(grad.dim()) if d != axis]
    hit = torch.nonzero(grad.abs().sum(dim=dims) > 0).flatten()
    return int(hit[0]), int(hit[-1])


def test_a_head_voxel_sits_over_the_two_top_voxels_it_stands_for() -> None:
    """Level 1's voxel i is centred in the input where the top output's voxels 2i and 2i + 1 are: with the
    up-convolutions zeroed each output sees only its own level's path, whose receptive field is symmetric about it,
    and every gradient reaches its box (average pooling and a leaky activation in this copy). A crop one voxel off
    moves the head's centres by 2 input pixels."""
    torch.manual_seed(0)
    net = UNet(2, 1, 2, features=(2, 4, 8), act=("leakyrelu", {"negative_slope": 0.3}), dropout=0.0, deep_supervision=1)
    net.pools = nn.ModuleList(nn.AvgPool2d(2, 2) for _ in net.pools)
    for dec in net.decoders:
        nn.init.zeros_(dec.up.weight)
        nn.init.zeros_(dec.up.bias)
    net = net.double().train()
    x = torch.randn(1, 1, 60, 60, dtype=torch.float64, requires_grad=True)
    stacked = net(x)
    assert tuple(stacked.shape) == (1, 2, 2, 20, 20)
    top, head = stacked[:, 0], stacked[:, 1]
    torch.testing.assert_close(head[..., 0::2, :], head[..., 1::2, :])  # a level-1 voxel repeated over its two

    def centre(out: torch.Tensor, row: int, col: int) -> float:
        (g,) = torch.autograd.grad(out[0, 1, row, col], x, retain_graph=True)
        first, last = _support(g[0, 0], 0)
        return (first + last) / 2

    for i in range(10):
        assert centre(head, 2 * i, 6) == (centre(top, 2 * i, 6) + centre(top, 2 * i + 1, 6)) / 2 == 20.5 + 2 * i


@pytest.mark.parametrize("size", [(196, 204, 4), (236, 244, 5), (116, 124, 1)])
def test_the_planned_network_returns_its_top_output_and_level_1_cropped_to_it(size: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    net = UNet(**PLANNED, deep_supervision=1).train()
    x = torch.randn(1, 4, *size)
    stacked = net(x)
    assert stacked.shape == (1, 2, 2, *net.output_size(size))
    assert net.head_offsets == [[1, 1, 0]] and net.head_strides == [[2, 2, 1]]


def test_evaluation_gives_the_top_output_alone_and_the_heads_change_nothing_in_it() -> None:
    torch.manual_seed(0)
    net = UNet(**PLANNED, deep_supervision=1).eval()
    plain = UNet(**PLANNED).eval()
    plain.load_state_dict({k: v for k, v in net.state_dict().items() if not k.startswith("heads.")})
    x = torch.randn(1, 4, 116, 124, 2)
    with torch.no_grad():
        out = net(x)
        assert isinstance(out, torch.Tensor)
        torch.testing.assert_close(out, plain(x))


def test_a_level_whose_voxels_sit_half_a_voxel_off_is_refused() -> None:
    with pytest.raises(ValueError, match=r"level 2's voxels do not line up .* deep_supervision=1 or less"):
        UNet(**PLANNED, deep_supervision=2)
    with pytest.raises(ValueError, match="between 0 and 2"):
        UNet(**PLANNED, deep_supervision=3)
    same = UNet(2, 1, 2, features=(4, 8, 16, 32), padding="same", deep_supervision=2).train()
    stacked = same(torch.randn(1, 1, 64, 64))
    assert stacked.shape == (1, 3, 2, 64, 64)  # padded: every level lines up
    torch.testing.assert_close(stacked[:, 2, :, 0::4], stacked[:, 2, :, 3::4])


def test_scripted_and_exported_networks_keep_the_heads() -> None:
    torch.manual_seed(0)
    net = UNet(**PLANNED, deep_supervision=1).eval()
    x = torch.randn(1, 4, 116, 124, 1)
    scripted = torch.jit.script(net)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x))
        assert scripted.train()(x).shape == (1, 2, 2, *net.output_size(x.shape[2:]))  # scripted, it supervises too
    flat = UNet(2, 1, 2, features=(4, 8, 16), deep_supervision=1)  # the export reads a 2D network's arguments
    kwargs = unet_kwargs(flat)
    assert kwargs["deep_supervision"] == 1
    UNet(**kwargs).load_state_dict(flat.state_dict())


def test_nnunet_weights_and_the_loss_reach_every_head() -> None:
    assert deep_supervision_weights(0) == [1.0]
    assert deep_supervision_weights(1) == pytest.approx([2 / 3, 1 / 3])
    base = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
    assert deep_supervision_loss(base, 0) is base
    wrapped = deep_supervision_loss(base, 1)
    assert isinstance(wrapped, StackedDeepSupervisionLoss)
    torch.manual_seed(0)
    net = UNet(**PLANNED, deep_supervision=1).train()
    stacked = net(torch.randn(2, 4, 116, 124, 1))
    label = (torch.rand(2, 1, *stacked.shape[3:]) > 0.7).float()
    loss = wrapped(stacked, label)
    torch.testing.assert_close(loss, 2 / 3 * base(stacked[:, 0], label) + 1 / 3 * base(stacked[:, 1], label))
    torch.testing.assert_close(wrapped(stacked[:, 0], label), base(stacked[:, 0], label))  # one output: the loss
    loss.backward()
    assert net.heads[0].weight.grad is not None and net.heads[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"expects outputs stacked as \(B, 2, C"):
        wrapped(torch.cat([stacked, stacked], dim=1), label)
    with pytest.raises(ValueError, match=">= 0"):
        deep_supervision_loss(base, -1)
