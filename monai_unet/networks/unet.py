"""The U-Net of Ronneberger, Fischer & Brox (MICCAI 2015), for 2D and 3D, unpadded or padded."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import torch
from monai.networks.layers.factories import Conv, Dropout, Pool
from monai.networks.layers.utils import get_act_layer, get_norm_layer
from monai.utils import ensure_tuple_rep
from torch import nn

from monai_unet.networks.sizes import AxisRule, invalid_size_message

__all__ = ["UNet"]

_PADDINGS = ("valid", "same")
_UPSAMPLES = ("deconv", "nontrainable")


def _size_error(size: int, axis: int, first: int, step: int, padding: str) -> str:
    return (
        invalid_size_message(size, axis, first, step, padding)
        + ". Crop or pad the input to a valid size, or use monai_unet.inferers.OverlapTileInferer for any size."
    )


class _SliceInstanceNorm(nn.Module):
    """Instance normalisation of each slice on its own, for a network that never looks across slices.

    A slice-by-slice network (kernel 1 and no pooling along ``axis`` at every level: nnU-Net's ``2d``
    configuration on a volume) is a 2D network applied to each slice; normalising a 3D tile's statistics together
    would make a slice's result depend on how many neighbours share its tile (4 in training, the whole volume in
    inference). The parameters are those of the 3D layer it stands for (``weight``/``bias`` when affine).
    """

    def __init__(self, layer: nn.Module, axis: int) -> None:
        super().__init__()
        self.axis = axis
        self.eps = float(layer.eps)
        self.weight = layer.weight
        self.bias = layer.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.axis + 2
        moved = x.movedim(d, 1)  # (B, slices, C, ...)
        flat = moved.flatten(0, 1)
        out = nn.functional.instance_norm(flat, weight=self.weight, bias=self.bias, eps=self.eps)
        return out.reshape(moved.shape).movedim(1, d)


def _norm_layer(norm: str | tuple, spatial_dims: int, channels: int, slice_axis: int | None) -> nn.Module:
    layer = get_norm_layer(norm, spatial_dims, channels)
    is_instance = isinstance(layer, nn.modules.instancenorm._InstanceNorm) and not layer.track_running_stats
    if slice_axis is not None and is_instance:
        return _SliceInstanceNorm(layer, slice_axis)
    return layer


class _DoubleConv(nn.Sequential):
    """Two convolutions of ``kernel_size`` (per axis), each followed by optional normalisation and the activation."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        padding: str,
        norm: str | tuple | None,
        act,
        kernel_size: tuple[int, ...] = (3, 3, 3),
        slice_axis: int | None = None,
    ) -> None:
        super().__init__()
        conv_type = Conv[Conv.CONV, spatial_dims]
        kernel = tuple(kernel_size[:spatial_dims])
        pad = tuple((k - 1) // 2 for k in kernel) if padding == "same" else 0
        for i, c_in in enumerate((in_channels, out_channels)):
            self.add_module(
                f"conv{i}", conv_type(c_in, out_channels, kernel_size=kernel, padding=pad, bias=norm is None)
            )
            if norm is not None:
                self.add_module(f"norm{i}", _norm_layer(norm, spatial_dims, out_channels, slice_axis))
            self.add_module(f"act{i}", get_act_layer(act))


class _UpBlock(nn.Module):
    """Up-convolution by ``stride``, crop-and-concatenate with the contracting path's features, two convolutions."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        padding: str,
        skip: bool,
        upsample: str,
        norm: str | tuple | None,
        act,
        kernel_size: tuple[int, ...],
        stride: tuple[int, ...],
        slice_axis: int | None = None,
    ) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.skip = skip
        if upsample == "deconv":
            self.up: nn.Module = Conv[Conv.CONVTRANS, spatial_dims](
                in_channels, out_channels, kernel_size=stride, stride=stride
            )
        else:
            mode = "bilinear" if spatial_dims == 2 else "trilinear"
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=tuple(float(s) for s in stride), mode=mode, align_corners=False),
                Conv[Conv.CONV, spatial_dims](in_channels, out_channels, kernel_size=1),
            )
        self.conv = _DoubleConv(
            spatial_dims, out_channels * (2 if skip else 1), out_channels, padding, norm, act, kernel_size, slice_axis
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        if self.skip:
            for d in range(self.spatial_dims):
                diff = skip.shape[d + 2] - x.shape[d + 2]
                skip = skip.narrow(d + 2, diff // 2, x.shape[d + 2])
            x = torch.cat([skip, x], dim=1)
        return self.conv(x)


class UNet(nn.Module):
    """The original U-Net for 2D and 3D images.

    With the defaults this is the network of the paper: unpadded 3x3 convolutions with ReLU, 2x2 max pooling,
    2x2 transposed up-convolutions that halve the channels, crop-and-concatenate skip connections, a final 1x1
    convolution, dropout at the end of the contracting path and He initialisation: 31,030,658 parameters,
    and a 572x572 input gives a 388x388 output.

    For anisotropic data the kernel sizes and the pooling are set per level and per axis, named as MONAI's
    ``DynUNet`` names them (a planned network: ``monai-unet plan``).

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: output channels (classes, 2 for object/background).
        features: channels per level, from the top level to the bottom; the depth (number of poolings) is
            ``len(features) - 1``.
        padding: ``"valid"`` (unpadded, the paper: the output is smaller than the input by ``2 * halo``) or
            ``"same"`` (a conventional padded U-Net, output size equals input size).
        skip_connections: ``False`` drops the skip connections (the FCN-style ablation).
        dropout: dropout probability at the end of the contracting path (0 disables it).
        upsample: ``"deconv"`` (transposed convolution, kernel = stride) or ``"nontrainable"`` (linear
            interpolation by the stride followed by a 1x1 convolution); both keep the size rules.
        norm: ``None`` (the paper) or a MONAI norm name/tuple such as ``"batch"``, ``"instance"``,
            ``("group", {"num_groups": 8})``. A 3D network that never looks across one axis (kernel 1 and stride 1
            there at every level: a slice-by-slice plan) normalises instances slice by slice, as the 2D network
            it is; its result for a slice then does not depend on the slices that share its tile.
        act: MONAI activation name/tuple, ``"relu"`` by default.
        kernel_size: the kernel of each level's two convolutions, one entry per level (``len(features)``), each an
            odd int or one per axis; ``None``: 3 everywhere (the paper). A 1-wide kernel along an axis loses
            nothing along it.
        strides: the down-sampling factor before each level (max pooling with kernel = stride; the up-sampling
            mirrors it), one entry per level, each an int or one per axis, ``strides[0] = 1``; ``None``:
            ``(1, 2, 2, ...)`` (the paper).
        deep_supervision: nnU-Net's deep supervision: the number of decoder levels below the top that get their own
            1x1 output convolution (0, the paper: none; at most ``len(features) - 2``, every level but the bottom,
            and only levels whose voxels line up with the top output's: with 3-wide kernels and stride 2 unpadded,
            level 1 and not level 2, whose voxels sit half a voxel off; nnU-Net gives its lowest decoder output no
            weight, so for four levels it supervises level 1 as well).
            In training mode the network then returns them stacked along dimension 1, as MONAI's ``DynUNet`` does,
            ``(B, 1 + deep_supervision, out_channels, *output_size(S))``: the top output first, then level 1, 2, ...,
            each cropped to the top output's region and repeated by the level's total stride to its size (exact:
            a level's voxel stands for that many top voxels), which :func:`monai_unet.losses.deep_supervision_loss`
            scores against the label. In evaluation mode it returns the top output alone, as without deep
            supervision (one tensor either way, so TorchScript and the export wrappers take it).

    Input ``(B, in_channels, *S)`` with every ``S[i]`` a valid size (see :meth:`is_valid_size`); output
    ``(B, out_channels, *output_size(S))`` (in training mode with ``deep_supervision``, stacked as above).
    """

    __jit_unused_properties__: ClassVar[list[str]] = ["depth", "halo", "axis_rules"]

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 2,
        features: Sequence[int] = (64, 128, 256, 512, 1024),
        padding: str = "valid",
        skip_connections: bool = True,
        dropout: float = 0.5,
        upsample: str = "deconv",
        norm: str | tuple | None = None,
        act: str | tuple = "relu",
        kernel_size: Sequence[int | Sequence[int]] | None = None,
        strides: Sequence[int | Sequence[int]] | None = None,
        deep_supervision: int = 0,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        if padding not in _PADDINGS:
            raise ValueError(f"padding must be one of {_PADDINGS}, got {padding!r}.")
        if upsample not in _UPSAMPLES:
            raise ValueError(f"upsample must be one of {_UPSAMPLES}, got {upsample!r}.")
        features = tuple(int(f) for f in features)
        if len(features) < 2 or min(features) < 1:
            raise ValueError(f"features needs at least two positive channel counts (one per level), got {features}.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}.")
        levels = len(features)
        kernels = self._per_level(3 if kernel_size is None else kernel_size, levels, spatial_dims, "kernel_size")
        steps = self._per_level(
            (1,) + (2,) * (levels - 1) if strides is None else strides, levels, spatial_dims, "strides"
        )
        if any(k < 1 or k % 2 == 0 for level in kernels for k in level):
            raise ValueError(f"kernel_size needs odd sizes >= 1, got {kernels}.")
        if any(s != 1 for s in steps[0]) or any(s < 1 for level in steps for s in level):
            raise ValueError(
                f"strides[0] must be 1 (no down-sampling before the top level) and every stride >= 1, got {steps}."
            )
        if not 0 <= int(deep_supervision) <= levels - 2:
            raise ValueError(
                f"deep_supervision must be between 0 and {levels - 2} (the decoder levels below the top, the bottom "
                f"level excluded, for {levels} levels), got {deep_supervision}."
            )
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.features = features
        self.padding = padding
        self.skip_connections = skip_connections
        self.n_pool = levels - 1
        self.kernel_size = kernels
        self.strides = steps
        self._axis_rules = tuple(
            AxisRule(tuple(k[a] for k in kernels), tuple(s[a] for s in steps), padding) for a in range(spatial_dims)
        )
        # per-axis smallest valid size and step, for the check inside forward (TorchScript reads plain int lists)
        self.size_first = [r.first for r in self._axis_rules]
        self.size_step = [r.step for r in self._axis_rules]
        # per supervised level (1, 2, ...) and axis: its total stride and the voxels it reaches beyond the top
        # output's region on each side (deep supervision crops them off)
        self.head_strides = [
            [r.step_to(level) for r in self._axis_rules] for level in range(1, int(deep_supervision) + 1)
        ]
        self.head_offsets: list[list[int]] = []
        for level in range(1, int(deep_supervision) + 1):
            margins = [r.decoder_margin(level) for r in self._axis_rules]
            off = [a for a, m in enumerate(margins) if m != int(m)]
            if off:
                a = off[0]
                raise ValueError(
                    f"deep_supervision={deep_supervision}: level {level}'s voxels do not line up with the top output's "
                    f"along axis {a} (it reaches {margins[a]:g} of its voxels beyond the top output's region on each "
                    f"side, kernels {[k[a] for k in kernels]}, strides {[st[a] for st in steps]}); use "
                    f"deep_supervision={level - 1} or less."
                )
            self.head_offsets.append([int(m) for m in margins])
        flat = [a for a, r in enumerate(self._axis_rules) if r.is_flat]
        self.slice_axis = flat[0] if spatial_dims == 3 and len(flat) == 1 else None

        pool_type = Pool[Pool.MAX, spatial_dims]
        self.encoders = nn.ModuleList()
        self.pools = nn.ModuleList()
        c_in = in_channels
        for level, f in enumerate(features[:-1]):
            self.encoders.append(
                _DoubleConv(spatial_dims, c_in, f, padding, norm, act, kernels[level], self.slice_axis)
            )
            self.pools.append(pool_type(kernel_size=steps[level + 1], stride=steps[level + 1]))
            c_in = f
        self.bottom = _DoubleConv(
            spatial_dims, features[-2], features[-1], padding, norm, act, kernels[-1], self.slice_axis
        )
        self.dropout = Dropout[Dropout.DROPOUT, spatial_dims](p=dropout) if dropout > 0 else nn.Identity()
        self.decoders = nn.ModuleList(
            _UpBlock(
                spatial_dims,
                features[i + 1],
                features[i],
                padding,
                skip_connections,
                upsample,
                norm,
                act,
                kernels[i],
                steps[i + 1],
                self.slice_axis,
            )
            for i in reversed(range(self.n_pool))
        )
        self.final = Conv[Conv.CONV, spatial_dims](features[0], out_channels, kernel_size=1)
        self.deep_supervision = int(deep_supervision)
        # one 1x1 output convolution per supervised level (1, 2, ...)
        self.heads = nn.ModuleList(
            Conv[Conv.CONV, spatial_dims](features[level], out_channels, kernel_size=1)
            for level in range(1, self.deep_supervision + 1)
        )
        self.reset_parameters()

    @staticmethod
    def _per_level(value, levels: int, dims: int, name: str) -> tuple[tuple[int, ...], ...]:
        if isinstance(value, int):
            value = (value,) * levels
        if len(value) != levels:
            raise ValueError(
                f"{name} needs one entry per level ({levels}: len(features)), each an int or {dims} values; "
                f"got {value}."
            )
        out = []
        for v in value:
            try:
                out.append(tuple(int(x) for x in ensure_tuple_rep(v, dims)))
            except (ValueError, TypeError) as e:
                raise ValueError(
                    f"{name} entries need one int or {dims} values (one per spatial axis), got {v}."
                ) from e
        return tuple(out)

    def reset_parameters(self) -> None:
        """He initialisation: normal with std ``sqrt(2 / N)``, ``N`` the inputs feeding one output unit."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d)):
                fan_in = m.in_channels * math.prod(m.kernel_size)
            elif isinstance(m, (nn.ConvTranspose2d, nn.ConvTranspose3d)):
                # each output pixel of a stride-k, k-wide transposed convolution sees one input pixel per channel
                fan_in = m.in_channels * math.prod(m.kernel_size) // math.prod(m.stride)
            else:
                continue
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_in))
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    # ---- size rules (all delegate to monai_unet.networks.sizes.AxisRule) -----------------------------------------

    @property
    def depth(self) -> int:
        """Number of down-sampling steps, ``len(features) - 1``."""
        return self.n_pool

    @property
    def axis_rules(self) -> tuple[AxisRule, ...]:
        """The size rules of each spatial axis."""
        return self._axis_rules

    @property
    def halo(self) -> tuple[int, ...]:
        """Pixels lost per side along each spatial axis (92 for the paper's network, 0 for ``"same"``)."""
        return tuple(r.halo for r in self._axis_rules)

    def _per_axis(self, value: int | Sequence[int], name: str) -> tuple[int, ...]:
        try:
            return tuple(int(v) for v in ensure_tuple_rep(value, self.spatial_dims))
        except ValueError as e:
            raise ValueError(
                f"{name} needs one int or {self.spatial_dims} values (one per spatial axis), got {value}."
            ) from e

    def is_valid_size(self, size: int | Sequence[int]) -> bool:
        """Whether ``size`` (one int for every axis, or one per axis) is a valid input size."""
        return all(r.is_valid(s) for r, s in zip(self._axis_rules, self._per_axis(size, "size")))

    def check_input_size(self, size: int | Sequence[int]) -> None:
        """Raise ``ValueError`` naming the nearest valid sizes if ``size`` is not a valid input size."""
        for axis, (r, s) in enumerate(zip(self._axis_rules, self._per_axis(size, "size"))):
            if not r.is_valid(s):
                raise ValueError(_size_error(s, axis, r.first, r.step, self.padding))

    def output_size(self, input_size: int | Sequence[int]) -> tuple[int, ...]:
        """Spatial output size for a valid ``input_size``; ``ValueError`` with suggestions otherwise."""
        sizes = self._per_axis(input_size, "input_size")
        self.check_input_size(sizes)
        return tuple(r.output(s) for r, s in zip(self._axis_rules, sizes))

    def input_size(self, output_size: int | Sequence[int]) -> tuple[int, ...]:
        """The smallest valid input size whose output is at least ``output_size`` along every axis."""
        return tuple(r.input_for(s) for r, s in zip(self._axis_rules, self._per_axis(output_size, "output_size")))

    def nearest_valid_sizes(self, size: int | Sequence[int]) -> tuple[tuple[int, int], ...]:
        """Per axis, the nearest valid input sizes ``(below, above)`` (``below`` is -1 when there is none)."""
        return tuple(r.nearest(s) for r, s in zip(self._axis_rules, self._per_axis(size, "size")))

    def valid_sizes(self, max_size: int, min_size: int = 1, axis: int = 0) -> list[int]:
        """All valid input lengths of spatial ``axis`` in ``[min_size, max_size]``."""
        return self._axis_rules[axis].valid(max_size, min_size)

    # ---- forward ------------------------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, *S) -> (B, out_channels, *output_size(S))``; in training mode with
        ``deep_supervision``, ``(B, 1 + deep_supervision, out_channels, *output_size(S))``: that output, then each
        supervised level's, cropped to its region and repeated to its size."""
        if x.dim() != self.spatial_dims + 2:
            raise ValueError(
                "UNet(spatial_dims="
                + str(self.spatial_dims)
                + ") expects input of shape (B, C, *spatial) with "
                + str(self.spatial_dims + 2)
                + " dimensions, got "
                + str(x.dim())
                + "."
            )
        for axis in range(self.spatial_dims):
            s = x.shape[axis + 2]
            first, step = self.size_first[axis], self.size_step[axis]
            if s < first or (s - first) % step != 0:
                raise ValueError(_size_error(s, axis, first, step, self.padding))
        skips: list[torch.Tensor] = []
        for enc, pool in zip(self.encoders, self.pools):
            x = enc(x)
            skips.append(x)
            x = pool(x)
        x = self.dropout(self.bottom(x))
        supervise = self.training and self.deep_supervision > 0
        levels: list[torch.Tensor] = []  # decoder outputs, level n_pool - 1 first (kept only to supervise them)
        for i, dec in enumerate(self.decoders):
            x = dec(x, skips[len(skips) - 1 - i])
            if supervise:
                levels.append(x)
        out = self.final(x)
        if not supervise:
            return out
        outputs = [out]
        for k, head in enumerate(self.heads):
            y = head(levels[len(levels) - 2 - k])  # decoder level k + 1, cropped to the top output's region
            for axis in range(self.spatial_dims):
                stride = self.head_strides[k][axis]
                y = y.narrow(axis + 2, self.head_offsets[k][axis], out.shape[axis + 2] // stride)
                y = y.repeat_interleave(stride, dim=axis + 2)
            outputs.append(y)
        return torch.stack(outputs, dim=1)
