"""The bundle's U-Net as bioimage.io tools hold images: spatial axes reversed, constructor arguments recovered.

MONAI readers return images in ``(x, y[, z])`` order (``reverse_indexing``: PILReader, ITKReader, NibabelReader),
so a bundle's network is trained and run on ``(C, x, y[, z])`` tensors. Fiji, ilastik, QuPath and napari hand a
model ``(y, x)`` / ``(z, y, x)`` arrays, the order bioimage.io declares. Transposing an image changes what a trained
network sees, but every layer of the U-Net (convolutions, pooling, up-convolutions, centre crops, normalisation)
commutes with a permutation of the spatial axes once its kernels are permuted the same way. So the exported network
is a plain :class:`~monai_unet.networks.UNet` whose per-axis kernel sizes and strides are reversed and whose
convolution kernels are transposed: on a ``(z,) y, x`` array it computes exactly what the bundle's network computes on
the ``(x, y[, z])`` array, transposed back.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from monai_unet.networks import UNet
from monai_unet.networks.sizes import AxisRule

__all__ = ["HaloTiling", "PaddedOutputUNet", "check_reversed", "halo_tiling", "reverse_spatial_axes", "unet_kwargs"]


def _norm_arg(network: UNet) -> Any:
    """The ``norm`` argument that built ``network``'s normalisation layers (``None`` without any)."""
    layer = getattr(network.encoders[0] if len(network.encoders) else network.bottom, "norm0", None)
    if layer is None:
        return None
    if isinstance(layer, nn.GroupNorm):
        return ["group", {"num_groups": layer.num_groups, "eps": layer.eps, "affine": layer.affine}]
    for name, kind in (("instance", nn.modules.instancenorm._InstanceNorm), ("batch", nn.modules.batchnorm._BatchNorm)):
        if isinstance(layer, kind):
            if layer.eps == 1e-5 and layer.momentum == 0.1 and layer.affine == (name == "batch"):
                if layer.track_running_stats == (name == "batch"):
                    return name
            return [
                name,
                {
                    "eps": layer.eps,
                    "momentum": layer.momentum,
                    "affine": layer.affine,
                    "track_running_stats": layer.track_running_stats,
                },
            ]
    return type(layer).__name__.lower()


def _act_arg(network: UNet) -> Any:
    """The ``act`` argument that built ``network``'s activations."""
    layer = (network.encoders[0] if len(network.encoders) else network.bottom).act0
    if isinstance(layer, nn.ReLU):
        return "relu" if not layer.inplace else ["relu", {"inplace": True}]
    if isinstance(layer, nn.LeakyReLU):
        return ["leakyrelu", {"negative_slope": layer.negative_slope, "inplace": layer.inplace}]
    if isinstance(layer, nn.ELU):
        return ["elu", {"alpha": layer.alpha, "inplace": layer.inplace}]
    if isinstance(layer, nn.PReLU):
        return ["prelu", {"num_parameters": layer.num_parameters}]
    return type(layer).__name__.lower()


def _per_level(values: tuple[tuple[int, ...], ...], default: tuple[int, ...]) -> list | None:
    """``None`` when every level uses ``default`` on every axis, else a JSON-able list of per-axis lists."""
    if all(all(v == d for v in level) for level, d in zip(values, default)):
        return None
    return [list(level) for level in values]


def unet_kwargs(network: nn.Module) -> dict[str, Any]:
    """The constructor arguments of ``network`` (JSON-able), checked by building a twin and comparing the two.

    Raises:
        ValueError: ``network`` is not a :class:`~monai_unet.networks.UNet`, or its arguments cannot be recovered
            (a layer built from something this function does not recognise).
    """
    if not isinstance(network, UNet):
        raise ValueError(
            f"the bundle's network_def is {type(network).__module__}.{type(network).__name__}; the bioimage.io export "
            "needs monai_unet.networks.UNet (its size rules give the valid tile sizes and the cropped border)."
        )
    levels = len(network.features)
    kwargs: dict[str, Any] = {
        "spatial_dims": network.spatial_dims,
        "in_channels": network.in_channels,
        "out_channels": network.out_channels,
        "features": list(network.features),
        "padding": network.padding,
        "skip_connections": network.skip_connections,
        "dropout": float(network.dropout.p) if isinstance(network.dropout, nn.modules.dropout._DropoutNd) else 0.0,
        "upsample": "nontrainable" if isinstance(network.decoders[0].up, nn.Sequential) else "deconv",
        "norm": _norm_arg(network),
        "act": _act_arg(network),
        "kernel_size": _per_level(network.kernel_size, (3,) * levels),
        "strides": _per_level(network.strides, (1,) + (2,) * (levels - 1)),
        "deep_supervision": network.deep_supervision,
    }
    kwargs = json.loads(json.dumps(kwargs))  # exactly what the package's rdf.yaml will hold
    twin = UNet(**kwargs)
    if repr(twin) != repr(network) or _shapes(twin) != _shapes(network):
        raise ValueError(
            "cannot recover the constructor arguments of the bundle's UNet for the pytorch_state_dict weights "
            f"(tried {kwargs}); export from a network_def that uses this package's documented UNet options."
        )
    return kwargs


def _shapes(network: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in network.state_dict().items()}


def reverse_spatial_axes(network: UNet) -> tuple[UNet, dict[str, Any]]:
    """A copy of ``network`` that takes its spatial axes in reverse order, and that copy's constructor arguments.

    For ``x`` of shape ``(B, C, *S)``: ``reversed(x.permute(0, 1, *reversed spatial axes))`` equals ``network(x)``
    with its spatial axes reversed, to float rounding. The copy is in ``eval`` mode on the CPU.

    Raises:
        ValueError: as :func:`unet_kwargs`.
    """
    kwargs = unet_kwargs(network)
    for key in ("kernel_size", "strides"):
        if kwargs[key] is not None:
            kwargs[key] = [level[::-1] for level in kwargs[key]]
    dims = network.spatial_dims
    order = (0, 1, *range(dims + 1, 1, -1))  # (B, C, a, b[, c]) -> (B, C, [c,] b, a)
    state = {
        k: (v.permute(*order).contiguous() if v.ndim == dims + 2 else v.clone())
        for k, v in network.state_dict().items()
    }
    reversed_net = UNet(**kwargs)
    reversed_net.load_state_dict(state)
    return reversed_net.eval(), kwargs


def check_reversed(network: UNet, reversed_net: UNet, atol: float = 1e-4) -> None:
    """Raise ``RuntimeError`` unless ``reversed_net`` on a reversed random tile gives ``network``'s output reversed
    (a guard: an exported model that silently computed something else would be worse than none)."""
    dims = network.spatial_dims
    size = tuple(r.first + r.step for r in network.axis_rules)
    order = (0, 1, *range(dims + 1, 1, -1))
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1, network.in_channels, *size, generator=gen)
    training = network.training
    network.eval()
    try:
        with torch.no_grad():
            want = network(x).permute(*order)
            got = reversed_net(x.permute(*order).contiguous())
    finally:
        network.train(training)
    if got.shape != want.shape or not torch.allclose(got, want, atol=atol, rtol=1e-4):
        raise RuntimeError(
            "the axis-reversed network does not reproduce the bundle's network (max difference "
            f"{(got - want).abs().max().item() if got.shape == want.shape else 'shape ' + str(tuple(got.shape))}); "
            "please report this."
        )


@dataclass(frozen=True)
class HaloTiling:
    """How one axis of the U-Net is declared for tools that tile with a symmetric ``halo`` (bioimage.io).

    Such a tool cuts tiles of a valid size ``T`` starting at ``n * (T - 2 * halo) - halo`` (mirroring at the image
    border) and keeps the middle ``T - 2 * halo`` of each output. A valid U-Net gives the same values for a pixel in
    every tile only if the tiles start on its pooling grid (shifts by multiples of ``step``), and the same values as
    ``monai-unet predict`` only on the grid that starts ``network halo`` before the image. So the exported network
    drops ``crop_start``/``crop_end`` input pixels (moving its grid onto that one), and the declared ``halo`` makes
    tile starts move by multiples of ``step``; the output is padded by ``pad_start``/``pad_end`` to the tile's size.

    Attributes:
        halo: the halo to declare (the paper's network: 102 = 92 + 10).
        first: the smallest tile to declare (valid, with a non-empty inside: 220 for the paper's network).
        crop_start, crop_end: input pixels the exported network drops (10 and 6), ``crop_start + crop_end`` a
            multiple of the step.
        pad_start, pad_end: zeros around the network's output (102 and 98), so the output has the tile's size.
        exact: whether such a declaration exists (else halo = the network's, and tiles give slightly other values).
    """

    halo: int
    first: int
    crop_start: int
    crop_end: int
    pad_start: int
    pad_end: int
    exact: bool


def halo_tiling(rule: AxisRule) -> HaloTiling:
    """The :class:`HaloTiling` of one axis of a U-Net, from its size rule."""
    step, h = rule.step, rule.halo
    smallest_out = rule.first - 2 * h
    for e in range(2 * step):
        r = -e % step
        if (2 * e - smallest_out) % step == 0 and r <= e:
            first = rule.first + e + r
            while first - 2 * (h + e) <= 0:
                first += step
            return HaloTiling(h + e, first, e, r, h + e, h + r, True)
    return HaloTiling(h, rule.first, 0, 0, h, h, False)


class PaddedOutputUNet(nn.Module):
    """A :class:`~monai_unet.networks.UNet` for tools that tile with a symmetric halo: input ``(B, C, *T)`` with each
    ``T[i]`` valid, output ``(B, out_channels, *T)``.

    Drops ``crop[i] = (start, end)`` pixels of the input along spatial axis ``i``, runs the U-Net, and pads its
    output with zeros by ``pad[i] = (start, end)`` back to the input's size (see :class:`HaloTiling`); the padded
    border is what the declared halo crops. Takes the UNet's arguments besides; its weights are the UNet's under
    ``unet.``.
    """

    def __init__(self, crop: Sequence[Sequence[int]], pad: Sequence[Sequence[int]], **kwargs: Any) -> None:
        super().__init__()
        self.unet = UNet(**kwargs)
        self.crop = [[int(a), int(b)] for a, b in crop]
        flat: list[int] = []
        for a, b in reversed([tuple(p) for p in pad]):  # F.pad lists the last axis first
            flat += [int(a), int(b)]
        self.pad = flat

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for d, (start, end) in enumerate(self.crop):
            x = x.narrow(d + 2, start, x.shape[d + 2] - start - end)
        return F.pad(self.unet(x), self.pad)
