"""Tiling plans for overlap-tile inference: the network's size rules, mirrored index maps, tile grids, weights.

Everything here works per spatial axis on plain integers (and small 1D tensors), so the inferer never
materialises a padded copy of the image: a tile is gathered from the source through index maps, and
stitching weights are separable products of per-axis vectors. The size arithmetic itself is asked of
:mod:`monai_unet.networks.sizes` (one rule, one place).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from monai.utils import ensure_tuple_rep, look_up_option
from torch import nn

from monai_unet.networks.sizes import AxisRule

__all__ = [
    "AxisPlan",
    "SizeRules",
    "TileGrid",
    "TileSpan",
    "estimate_activation_bytes",
    "gaussian_weights_1d",
    "plan_axis",
    "plan_tiles",
    "reflect_indices",
    "size_rules_of",
    "unet_size_rules",
]

# tile starts of a valid network without size attributes are aligned to this (exact for depth <= 5)
UNKNOWN_ALIGN = 32


def unwrap_network(network: object) -> object:
    """The module inside DataParallel / DistributedDataParallel wrappers (anything with ``.module``)."""
    seen = 0
    while isinstance(network, nn.Module) and hasattr(network, "module") and isinstance(network.module, nn.Module):
        network = network.module
        seen += 1
        if seen > 8:
            break
    return network


@dataclass(frozen=True)
class SizeRules:
    """What the inferer needs to know about a network's sizes.

    Attributes:
        spatial_dims: 2 or 3 (``None`` when unknown: taken from the input).
        halo: pixels lost per side along each axis.
        axes: the size rules of each axis (:class:`~monai_unet.networks.sizes.AxisRule`: kernels and strides per
            level) when the network is a monai-unet UNet (plain or TorchScript), else ``None``.
        padding: ``"valid"`` or ``"same"`` when known.
        align: tile starts are multiples of this (one value, or one per axis), so that every tile sees the pooling
            grid of the whole image.
        features, in_channels, out_channels: for the FLOP and activation-memory estimates (``None`` when unknown).
    """

    spatial_dims: int | None
    halo: tuple[int, ...] | None
    axes: tuple[AxisRule, ...] | None = None
    padding: str | None = None
    align: int | tuple[int, ...] = 1
    features: tuple[int, ...] | None = None
    in_channels: int | None = None
    out_channels: int | None = None

    @property
    def known(self) -> bool:
        """Whether the network's own size rules are known (a monai-unet UNet)."""
        return self.axes is not None

    def axis_align(self, axis: int) -> int:
        return self.align if isinstance(self.align, int) else self.align[axis]

    def is_valid(self, size: int, axis: int = 0) -> bool:
        if self.axes is None:
            return size > 0
        return self.axes[axis].is_valid(size)

    def valid_sizes(self, max_size: int, axis: int = 0) -> list[int]:
        """Valid tile lengths of ``axis`` up to ``max_size`` (ascending), from the network's size rules."""
        assert self.axes is not None
        return self.axes[axis].valid(max_size)

    def smallest_valid(self, axis: int = 0) -> int:
        assert self.axes is not None
        return self.axes[axis].first

    def input_size(self, output_size: int, axis: int = 0) -> int:
        """The smallest valid tile of ``axis`` whose output covers ``output_size`` pixels."""
        assert self.axes is not None
        return self.axes[axis].input_for(output_size)

    def snap(self, size: int, axis: int = 0) -> int:
        """The largest valid length of ``axis`` no larger than ``size`` (the smallest valid one if none is)."""
        assert self.axes is not None
        below, _ = self.axes[axis].nearest(size)
        return below if below > 0 else self.axes[axis].first


def _levels(value: object, dims: int) -> tuple[tuple[int, ...], ...] | None:
    try:
        return tuple(tuple(int(v) for v in ensure_tuple_rep(level, dims)) for level in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None


def unet_size_rules(
    kernel_size: Sequence[Sequence[int]],
    strides: Sequence[Sequence[int]],
    features: Sequence[int] | None,
    in_channels: int | None,
    out_channels: int | None,
    padding: str = "valid",
) -> SizeRules:
    """The size rules of a monai-unet UNet with these per-level, per-axis kernels and strides, without building it
    (what :func:`size_rules_of` reads from a built one; the planner asks it of networks it only considers)."""
    dims = len(kernel_size[0])
    axes = tuple(AxisRule(tuple(k[a] for k in kernel_size), tuple(s[a] for s in strides), padding) for a in range(dims))
    return SizeRules(
        spatial_dims=dims,
        halo=tuple(r.halo for r in axes),
        axes=axes,
        padding=padding,
        align=tuple(r.step for r in axes),
        features=tuple(int(f) for f in features) if features is not None else None,
        in_channels=in_channels,
        out_channels=out_channels,
    )


def size_rules_of(network: object, halo: int | Sequence[int] | None = None) -> SizeRules:
    """Read a network's size rules: a monai-unet UNet (also TorchScript-scripted, or wrapped by DDP) has
    ``n_pool``/``padding``/``spatial_dims`` attributes (and ``kernel_size``/``strides`` per level); anything else
    gets only the given ``halo`` (or none, and the caller probes it).
    """
    net = unwrap_network(network)
    depth = getattr(net, "n_pool", None)
    padding = getattr(net, "padding", None)
    dims = getattr(net, "spatial_dims", None)
    if isinstance(depth, int) and padding in ("valid", "same") and dims in (2, 3):
        kernels = _levels(getattr(net, "kernel_size", None), dims) or ((3,) * dims,) * (depth + 1)
        strides = _levels(getattr(net, "strides", None), dims) or ((1,) * dims,) + ((2,) * dims,) * depth
        feats = getattr(net, "features", None)
        rules = unet_size_rules(
            kernels, strides, feats, getattr(net, "in_channels", None), getattr(net, "out_channels", None), padding
        )
        if halo is not None:
            given = per_axis(halo, dims, "halo")
            if given != rules.halo:
                raise ValueError(
                    f"halo={given} was given, but the network's size rules say its halo is {rules.halo}; "
                    "leave halo unset for a monai-unet UNet."
                )
        return rules
    if halo is None:
        return SizeRules(spatial_dims=None, halo=None)
    if isinstance(halo, int):
        halo = (halo,)
    h = tuple(int(v) for v in halo)
    if min(h) < 0:
        raise ValueError(f"halo must be >= 0, got {h}.")
    return SizeRules(spatial_dims=len(h) if len(h) > 1 else None, halo=h, align=1 if max(h) == 0 else UNKNOWN_ALIGN)


def per_axis(value: int | Sequence[int], dims: int, name: str) -> tuple[int, ...]:
    """One value per spatial axis from one value, a one-element sequence or ``dims`` values (MONAI's
    ``ensure_tuple_rep``); ``ValueError`` naming ``name`` otherwise."""
    if not isinstance(value, (int, np.integer)) and len(value) == 1:
        value = value[0]
    try:
        return tuple(int(v) for v in ensure_tuple_rep(value, dims))
    except ValueError as e:
        raise ValueError(f"{name} needs one value or {dims} values (one per spatial axis), got {value}.") from e


def check_option(name: str, value: str, supported: Sequence[str]) -> str:
    """``value`` as MONAI's ``look_up_option`` finds it among ``supported``; ``ValueError`` naming ``name`` otherwise
    (MONAI's spelling suggestion follows as the cause)."""
    try:
        return look_up_option(value, supported)
    except ValueError as e:
        raise ValueError(f"{name} must be one of {tuple(supported)}, got {value!r}.") from e


def reflect_indices(start: int, length: int, size: int) -> torch.Tensor:
    """Source indices of the mirrored coordinates ``start, ..., start + length - 1`` of an axis of ``size``.

    Reflection without repeating the edge pixel (numpy's ``"reflect"``), repeated back and forth when the
    coordinates reach beyond the image by more than its size, so any pad works on any image (also 1 pixel).
    """
    p = torch.arange(start, start + length, dtype=torch.int64)
    if size == 1:
        return torch.zeros_like(p)
    period = 2 * (size - 1)
    m = torch.remainder(p, period)
    return torch.where(m >= size, period - m, m)


@dataclass(frozen=True)
class AxisPlan:
    """The tiles along one axis, in output coordinates (input tile ``k`` starts at ``starts[k] - halo``).

    Attributes:
        tile: input tile length; ``out``: its output length (``tile - 2 * halo``).
        starts: output start of each tile (multiples of the alignment).
        own: ``(lo, hi)`` per tile, the part of the image this tile writes when tiles are not blended
            (consecutive, disjoint, covering ``[0, size)``).
    """

    size: int
    tile: int
    out: int
    halo: int
    starts: tuple[int, ...]
    own: tuple[tuple[int, int], ...]


def _starts(size: int, out: int, step: int, align: int) -> list[int]:
    if size <= out:
        return [0]
    n = -(-(size - out) // step) + 1
    last = -(-(size - out) // align) * align
    return [k * step for k in range(n - 1)] + [last]


def _step(out: int, overlap: float, align: int) -> int:
    return max(align, int(out * (1.0 - overlap)) // align * align)


def plan_axis(
    size: int, tile: int, halo: int, rules: SizeRules, overlap: float = 0.0, fit: bool = True, axis: int = 0
) -> AxisPlan:
    """Plan the tiles along spatial ``axis`` of ``size`` pixels with input tiles of (at most, if ``fit``) ``tile``.

    With ``fit`` the tile is shrunk to the smallest valid length that needs no more tiles, so that little is
    computed beyond the image. Raises ``ValueError`` when the tile is too small to tile the image seamlessly.
    """
    out = tile - 2 * halo
    if out <= 0:
        raise ValueError(f"tile size {tile} is not larger than twice the halo ({halo}): it has no output.")
    align = rules.axis_align(axis)
    if size > out and out < align:
        raise ValueError(
            f"tile size {tile} gives an output of {out} pixels, fewer than the network's pooling step {align}: "
            "tiles could not keep the pooling grid of the whole image. Use a larger tile_size."
        )
    step = _step(out, overlap, align)
    n = len(_starts(size, out, step, align))
    if fit and rules.known:
        # the number of tiles does not grow with the tile: bisect for the smallest valid tile needing no more
        cands = [
            t
            for t in rules.valid_sizes(tile, axis)
            if t - 2 * halo > 0 and (size <= t - 2 * halo or t - 2 * halo >= align)
        ]
        lo, hi = 0, len(cands) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            o = cands[mid] - 2 * halo
            if len(_starts(size, o, _step(o, overlap, align), align)) <= n:
                hi = mid
            else:
                lo = mid + 1
        if cands:
            tile = cands[lo]
            out = tile - 2 * halo
            step = _step(out, overlap, align)
    starts = _starts(size, out, step, align)
    own = []
    for k, s in enumerate(starts):
        lo = 0 if k == 0 else s
        hi = starts[k + 1] if k + 1 < len(starts) else size
        own.append((lo, min(hi, size)))
    return AxisPlan(size=size, tile=tile, out=out, halo=halo, starts=tuple(starts), own=tuple(own))


def gaussian_weights_1d(out: int, sigma_scale: float) -> torch.Tensor:
    """A Gaussian over ``out`` pixels centred on the tile, ``sigma = sigma_scale * out`` (MONAI's importance map
    is the product of these along the axes), clamped away from zero."""
    c = (out - 1) / 2.0
    sigma = max(sigma_scale * out, 1e-3)
    i = torch.arange(out, dtype=torch.float64)
    w = torch.exp(-((i - c) ** 2) / (2.0 * sigma**2))
    return torch.clamp(w / w.max(), min=1e-3)


def blend_weights(plan: AxisPlan, w: torch.Tensor) -> list[torch.Tensor]:
    """Per tile of the axis, its weights divided by the sum of all tiles' weights at each pixel.

    The tile grid is a Cartesian product of the axes' tiles and the weight a product of per-axis weights, so
    the normalisation map is the product of per-axis sums: no N-dimensional count map is ever built.
    Each returned vector is cut to the tile's part inside the image (``[start, min(start + out, size))``).
    """
    total = torch.zeros(max(plan.size, plan.starts[-1] + plan.out), dtype=torch.float64)
    for s in plan.starts:
        total[s : s + plan.out] += w
    out = []
    for s in plan.starts:
        e = min(s + plan.out, plan.size)
        out.append((w[: e - s] / total[s:e]).to(torch.float32))
    return out


class TileSpan(NamedTuple):
    """Where one input tile reads along one axis: the in-image block ``[lo, hi)`` and how it is mirrored.

    Either the block is mirrored by one reflection (``pad_before`` and ``pad_after`` pixels, ``index`` ``None``),
    or, for pads wider than one reflection (the image smaller than the halo), ``index`` maps the tile's
    coordinates into the block (pads ``0``).
    """

    lo: int
    hi: int
    pad_before: int
    pad_after: int
    index: torch.Tensor | None

    def gather_index(self, length: int) -> torch.Tensor | None:
        """Indices into the block that give the ``length`` mirrored pixels; ``None``: the block as it is."""
        if self.index is not None:
            return self.index
        if self.pad_before or self.pad_after:
            return reflect_indices(-self.pad_before, length, self.hi - self.lo)
        return None


def axis_spans(plan: AxisPlan) -> tuple[TileSpan, ...]:
    """Where each tile of the axis reads: one reflection where the pads are narrower than the in-image block,
    else (ping-pong) an index map."""
    spans = []
    for start in plan.starts:
        a = start - plan.halo
        b = a + plan.tile
        lo, hi = max(a, 0), min(b, plan.size)
        if lo >= hi or lo - a >= hi - lo or b - hi >= hi - lo:  # ping-pong: gather through the index map
            idx = reflect_indices(a, plan.tile, plan.size)
            lo, hi = int(idx.min()), int(idx.max()) + 1
            spans.append(TileSpan(lo, hi, 0, 0, idx - lo))
        else:
            spans.append(TileSpan(lo, hi, lo - a, b - hi, None))
    return tuple(spans)


@dataclass(frozen=True)
class TileGrid:
    """The tiles of an image: a Cartesian product of per-axis plans (indexed ``[axis][k]``).

    Attributes:
        tile: the input tile shape; ``plans``: per axis, the tile starts and the parts each tile owns.
        spans: per axis and tile position, where the tile reads (:class:`TileSpan`).
        weights: per axis and tile position, the normalised blending weights of the tile's part inside the image;
            ``None`` without extra overlap, where every pixel is written by the one tile that owns it.
    """

    tile: tuple[int, ...]
    plans: tuple[AxisPlan, ...]
    spans: tuple[tuple[TileSpan, ...], ...]
    weights: tuple[tuple[torch.Tensor, ...], ...] | None

    def positions(self) -> Iterator[tuple[int, ...]]:
        return itertools.product(*(range(len(p.starts)) for p in self.plans))

    def spans_at(self, pos: tuple[int, ...]) -> list[TileSpan]:
        return [self.spans[a][k] for a, k in enumerate(pos)]


def plan_tiles(
    spatial: Sequence[int],
    tile: Sequence[int],
    halo: Sequence[int],
    rules: SizeRules,
    *,
    overlap: float = 0.0,
    fit: bool = True,
    mode: str = "constant",
    sigma_scale: float = 0.125,
    device: torch.device | str = "cpu",
) -> TileGrid:
    """Plan the tiles of an image of size ``spatial``: along each axis with :func:`plan_axis` (fitted to the image
    when ``fit``), where each tile reads (:func:`axis_spans`), and, when ``overlap > 0``, the blending weights
    (``mode`` ``"constant"`` or ``"gaussian"``) on ``device``."""
    plans = tuple(
        plan_axis(s, t, h, rules, overlap, fit=fit, axis=a) for a, (s, t, h) in enumerate(zip(spatial, tile, halo))
    )

    def profile(out: int) -> torch.Tensor:
        return gaussian_weights_1d(out, sigma_scale) if mode == "gaussian" else torch.ones(out, dtype=torch.float64)

    weights = None
    if overlap > 0.0:
        weights = tuple(tuple(v.to(device) for v in blend_weights(p, profile(p.out))) for p in plans)
    spans = tuple(axis_spans(p) for p in plans)
    return TileGrid(tile=tuple(p.tile for p in plans), plans=plans, spans=spans, weights=weights)


def _network_levels(rules: SizeRules, dims: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Per level: the kernel and the stride before it, each per axis."""
    assert rules.axes is not None and rules.features is not None
    return [
        (tuple(r.kernels[level] for r in rules.axes[:dims]), tuple(r.strides[level] for r in rules.axes[:dims]))
        for level in range(len(rules.features))
    ]


def estimate_flops(rules: SizeRules, tile: Sequence[int]) -> int:
    """Multiply-add FLOPs (2 per MAC) of one forward of a monai-unet UNet on one tile of size ``tile``."""
    assert rules.features is not None and rules.axes is not None
    feats, valid, dims = rules.features, rules.padding == "valid", len(tile)
    levels = _network_levels(rules, dims)
    sizes, c, total = list(tile), rules.in_channels or 1, 0
    b = sizes
    for level, f in enumerate(feats):
        kernel, stride = levels[level]
        if level > 0:
            sizes = [s // st for s, st in zip(b, stride)]
        red = [k - 1 if valid else 0 for k in kernel]
        a = [s - r for s, r in zip(sizes, red)]
        b = [s - r for s, r in zip(a, red)]
        total += 2 * math.prod(kernel) * (c * f * math.prod(a) + f * f * math.prod(b))
        c = f
    sizes = b
    for level in reversed(range(len(feats) - 1)):
        f = feats[level]
        kernel, _ = levels[level]
        up = [s * st for s, st in zip(sizes, levels[level + 1][1])]
        total += 2 * c * f * math.prod(up)  # transposed convolution, kernel = stride: one input pixel per output pixel
        red = [k - 1 if valid else 0 for k in kernel]
        a = [s - r for s, r in zip(up, red)]
        b = [s - r for s, r in zip(a, red)]
        total += 2 * math.prod(kernel) * (2 * f * f * math.prod(a) + f * f * math.prod(b))
        sizes, c = b, f
    return total + 2 * c * (rules.out_channels or 1) * math.prod(sizes)


def estimate_activation_bytes(rules: SizeRules, tile: Sequence[int], batch: int, dtype_bytes: int = 4) -> int:
    """Peak activation memory of one forward of a monai-unet UNet on ``batch`` tiles (no autograd graph).

    Walks the network level by level: the skip tensors are kept alive while, at each layer, its input and
    output coexist; the peak of (kept skips + input + output) over the layers, plus input and output tiles,
    with a 25% margin for allocator slack and convolution workspace.
    """
    if rules.features is None or rules.axes is None:
        raise ValueError(
            "a memory budget needs the network's activation estimate, which is known only for a monai-unet UNet; "
            "give tile_size instead."
        )
    feats, valid = rules.features, rules.padding == "valid"
    cin = rules.in_channels or 1
    cout = rules.out_channels or 1
    levels = _network_levels(rules, len(tile))

    def vol(c: int, s: Sequence[int]) -> int:
        return c * math.prod(s)

    def convs(sizes: Sequence[int], level: int) -> tuple[list[int], list[int]]:
        red = [k - 1 if valid else 0 for k in levels[level][0]]
        a = [s - r for s, r in zip(sizes, red)]
        return a, [s - r for s, r in zip(a, red)]

    # the skips stay alive until the forward returns, so ``kept`` only grows
    sizes = list(tile)
    peak = 0
    kept = 0
    c = cin
    for level, f in enumerate(feats[:-1]):
        a, b = convs(sizes, level)
        peak = max(peak, kept + vol(c, sizes) + 2 * vol(f, a), kept + 3 * vol(f, b))
        kept += vol(f, b)
        sizes = [s // st for s, st in zip(b, levels[level + 1][1])]
        c = f
    a, b = convs(sizes, len(feats) - 1)
    peak = max(peak, kept + vol(c, sizes) + 2 * vol(feats[-1], a), kept + 3 * vol(feats[-1], b))
    sizes, c = b, feats[-1]
    for level in reversed(range(len(feats) - 1)):
        f = feats[level]
        up = [s * st for s, st in zip(sizes, levels[level + 1][1])]
        a, b = convs(up, level)
        peak = max(peak, kept + vol(c, sizes) + vol(f, up), kept + 3 * vol(f, up) + vol(f, a), kept + 3 * vol(f, b))
        sizes, c = b, f
    peak = max(peak, kept + vol(c, sizes) + vol(cout, sizes))
    return int(1.25 * dtype_bytes * batch * (peak + vol(cin, tile) + vol(cout, sizes)))
