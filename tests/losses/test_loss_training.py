"""Every loss a bundle can choose trains a valid (unpadded) UNet: a few steps and the loss falls."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.losses import DiceCELoss, DiceFocalLoss, DiceLoss, FocalLoss
from scipy import ndimage as ndi

from monai_unet.losses import WeightedCrossEntropyLoss
from monai_unet.networks import UNet
from monai_unet.transforms import BorderWeightMap

IN_SIZE = 68  # valid for features (4, 8, 16); output 28x28


def blobs(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A noisy image of bright blobs and its (B, 1, H, W) label."""
    rng = np.random.default_rng(seed)
    label = ndi.gaussian_filter(rng.random((2, IN_SIZE, IN_SIZE)), (0, 3, 3)) > 0.52
    image = label + 0.3 * rng.standard_normal(label.shape)
    return torch.as_tensor(image[:, None], dtype=torch.float32), torch.as_tensor(label[:, None], dtype=torch.float32)


LOSSES = {
    "weighted_ce": (lambda: WeightedCrossEntropyLoss(), 2),
    "dice_focal": (lambda: DiceFocalLoss(to_onehot_y=True, softmax=True), 2),
    "dice": (lambda: DiceLoss(to_onehot_y=True, softmax=True), 2),
    "jaccard": (lambda: DiceLoss(to_onehot_y=True, softmax=True, jaccard=True), 2),
    "focal": (lambda: FocalLoss(to_onehot_y=True, use_softmax=True), 2),
    "dice_ce": (lambda: DiceCELoss(to_onehot_y=True, softmax=True), 2),
    "bce": (lambda: torch.nn.BCEWithLogitsLoss(), 1),
}


@pytest.mark.parametrize("name", list(LOSSES))
def test_loss_falls_on_a_valid_unet(name):
    make_loss, out_channels = LOSSES[name]
    torch.manual_seed(0)
    net = UNet(spatial_dims=2, in_channels=1, out_channels=out_channels, features=(4, 8, 16), dropout=0.0)
    out = net.output_size(IN_SIZE)
    image, label = blobs(0)
    offset = net.halo[0]
    target = label[..., offset : offset + out[0], offset : offset + out[1]]
    if name == "weighted_ce":
        weight = torch.stack([torch.as_tensor(BorderWeightMap()(lab.numpy())) for lab in label])
        target = torch.cat([target, weight[..., offset : offset + out[0], offset : offset + out[1]]], 1)
    loss_fn = make_loss()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(12):
        opt.zero_grad()
        loss = loss_fn(net(image), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.isfinite(losses).all()
    assert np.mean(losses[-3:]) < 0.9 * losses[0], losses
