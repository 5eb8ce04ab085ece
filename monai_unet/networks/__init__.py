"""Networks: the U-Net and its size rules."""

from __future__ import annotations

from monai_unet.networks.sizes import AxisRule, halo_1d, input_size_1d, nearest_valid_sizes_1d, output_size_1d
from monai_unet.networks.unet import UNet

__all__ = ["AxisRule", "UNet", "halo_1d", "input_size_1d", "nearest_valid_sizes_1d", "output_size_1d"]
