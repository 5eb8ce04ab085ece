"""Overlap-tile inference (Ronneberger et al. 2015, Fig. 2): seamless, exact, memory-bounded, any image size.

The image is mirrored at its borders, cut into tiles whose outputs tile the image, each tile is run with its full
context (the network's halo) and the outputs are stitched. Because every tile starts on the pooling grid of the
whole image, the result equals one pass of the network over the whole mirrored image, to float rounding.

The mirrored image is never built: each tile is gathered from the source through per-axis index maps, and a
lazily read source (numpy memmap, zarr, a tifffile zarr store) is read only where a tile needs it. The output
can be written into a caller-given array (memmap, zarr) tile by tile, so neither exists whole in memory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.inferers import Inferer
from monai.utils import convert_to_dst_type
from torch import nn

from monai_unet.inferers.arrays import Source, check_out, sink_index, to_sink, zero_fill
from monai_unet.inferers.tile_choice import (
    TILE_SEARCHES,
    default_memory_budget,
    default_tile_size,
)
from monai_unet.inferers.tiling import (
    UNKNOWN_ALIGN,
    AxisPlan,
    SizeRules,
    blend_weights,
    gaussian_weights_1d,
    per_axis,
    plan_axis,
    reflect_indices,
    size_rules_of,
)
from monai_unet.networks.sizes import nearest_valid_sizes_1d

__all__ = ["OverlapTileInferer", "channels_last_weights", "overlap_tile_inference"]

_MODES = ("constant", "gaussian")
_ACTIVATIONS = ("softmax", "sigmoid", "none")


# ---- settings ----------------------------------------------------------------------------------------------------


def _check_tile(tile: tuple[int, ...], rules: SizeRules) -> None:
    if rules.depth is None:
        return
    for axis, t in enumerate(tile):
        if not rules.is_valid(t):
            below, above = nearest_valid_sizes_1d(t, rules.depth, rules.padding)
            near = f"{below} or {above}" if below > 0 else f"{above}"
            raise ValueError(
                f"tile_size {t} along spatial axis {axis} is not a valid input size of the network "
                f"(padding={rules.padding!r}, depth {rules.depth}); use {near}."
            )


def _probe_halo(network: Callable, tile: tuple[int, ...], channels: int, device: torch.device, dtype) -> tuple:
    """Learn the halo of a network without size attributes by one forward of a zero tile."""
    with torch.no_grad():
        y = network(torch.zeros((1, channels, *tile), device=device, dtype=dtype))
    diff = [t - int(s) for t, s in zip(tile, y.shape[2:])]
    if any(d < 0 or d % 2 for d in diff):
        raise ValueError(
            f"probing the network with a {tile} tile gave a {tuple(y.shape[2:])} output: the size difference is not "
            "a non-negative even number per axis, so it has no halo; give halo= explicitly."
        )
    return tuple(d // 2 for d in diff)


def _network_device_dtype(network: Any) -> tuple[torch.device | None, torch.dtype]:
    if isinstance(network, nn.Module):
        for p in network.parameters():
            return p.device, p.dtype if p.dtype.is_floating_point else torch.float32
    return None, torch.float32


# ---- the work ----------------------------------------------------------------------------------------------------


# networks whose weights are in channels-last format now: id -> [calls inside, original tensors]
_CONVERTED: dict[int, list] = {}
_CONVERTED_LOCK = threading.Lock()


@contextlib.contextmanager
def channels_last_weights(network: Any, enabled: bool = True) -> Iterator[None]:
    """Convolution weights in channels-last memory format during the call, the original tensors put back after.

    On a CPU, oneDNN convolutions run about 1.3-1.4x faster on channels-last weights and activations (torch
    2.14, the benchmark networks, ``scripts/profile_tiles.py --channels-last``); the results agree to float
    rounding. Concurrent calls on one network (threads of a server) share the conversion: the first converts,
    the last puts the originals back.
    """
    if not enabled or not isinstance(network, nn.Module):
        yield
        return
    key = id(network)
    with _CONVERTED_LOCK:
        entry = _CONVERTED.get(key)
        if entry is None:
            params = [p for p in network.parameters() if p.dim() in (4, 5)]
            entry = _CONVERTED[key] = [0, [(p, p.data) for p in params]]
            with torch.inference_mode(False), torch.no_grad():
                for p in params:
                    fmt = torch.channels_last if p.dim() == 4 else torch.channels_last_3d
                    p.data = p.data.contiguous(memory_format=fmt)
        entry[0] += 1
    try:
        yield
    finally:
        with _CONVERTED_LOCK:
            entry[0] -= 1
            if entry[0] == 0:
                for p, original in entry[1]:
                    p.data = original
                del _CONVERTED[key]


def overlap_tile_inference(
    inputs: torch.Tensor | Any,
    network: Callable[..., torch.Tensor],
    tile_size: int | Sequence[int] | None = None,
    sw_batch_size: int = 1,
    overlap: float = 0.0,
    mode: str = "constant",
    sigma_scale: float = 0.125,
    sw_device: torch.device | str | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
    halo: int | Sequence[int] | None = None,
    memory_budget: int | None = None,
    tta: bool = False,
    tta_activation: str = "softmax",
    out: Any = None,
    tile_search: str = "auto",
    channels_last: bool | None = None,
    *args: Any,
    **kwargs: Any,
) -> torch.Tensor | Any:
    """Run ``network`` over ``inputs`` tile by tile with mirrored borders and stitch the outputs.

    Args:
        inputs: ``(B, C, *S)`` tensor, or a lazily read array (numpy memmap, zarr array, ...) of shape
            ``(B, C, *S)``, ``(C, *S)`` or ``(*S)``; any spatial size, also smaller than the halo.
        network: maps ``(N, C, *tile)`` to ``(N, C_out, *(tile - 2 * halo))``.
        others: see :class:`OverlapTileInferer`.
        out: optional array (numpy memmap, zarr, tensor) of shape ``(B, C_out, *S)`` (or ``(C_out, *S)``,
            ``(*S)`` for ``B == 1``) written tile by tile and returned.

    Returns:
        ``(B, C_out, *S)`` tensor on ``device`` (or ``out``): the network's output (logits) stitched; with
        ``tta`` the average of the activated (probability) outputs over all flips.
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}.")
    if tta_activation not in _ACTIVATIONS:
        raise ValueError(f"tta_activation must be one of {_ACTIVATIONS}, got {tta_activation!r}.")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}.")
    if sw_batch_size < 1:
        raise ValueError(f"sw_batch_size must be >= 1, got {sw_batch_size}.")
    if tile_search not in TILE_SEARCHES:
        raise ValueError(f"tile_search must be one of {TILE_SEARCHES}, got {tile_search!r}.")
    rules = size_rules_of(network, halo)
    dims = rules.spatial_dims
    if dims is None and tile_size is not None and not isinstance(tile_size, int) and len(tile_size) > 1:
        dims = len(tile_size)
    if dims is None:
        dims = len(inputs.shape) - 2 if isinstance(inputs, torch.Tensor) else None
    if dims is None:
        raise ValueError("cannot tell the number of spatial dimensions: give tile_size or halo with one per axis.")
    meta_like = inputs if isinstance(inputs, MetaTensor) else None
    if meta_like is not None:
        inputs = inputs.as_tensor()  # plain tensor: indexing a MetaTensor per tile would copy its metadata
    src = Source(inputs, dims)
    bsz, chans, spatial = src.shape[0], src.shape[1], src.shape[2:]
    if min(spatial) < 1:
        raise ValueError(f"inputs has an empty spatial axis: shape {tuple(inputs.shape)}.")

    net_device, net_dtype = _network_device_dtype(network)
    if sw_device is None:
        sw_device = inputs.device if src.is_tensor else (net_device or torch.device("cpu"))
    sw_device = torch.device(sw_device)
    if device is None:
        device = inputs.device if src.is_tensor else torch.device("cpu")
    device = torch.device(device)
    if channels_last is None:  # on the CPU, where oneDNN runs channels-last convolutions faster
        channels_last = isinstance(network, nn.Module) and sw_device.type == "cpu"
    with channels_last_weights(network, channels_last):
        # tile size: given, or from a memory budget
        if tile_size is not None:
            tile = per_axis(tile_size, dims, "tile_size")
            _check_tile(tile, rules)
        elif rules.depth is not None:
            if memory_budget is None:
                memory_budget = default_memory_budget(sw_device)
            repeats = bsz * (2**dims if tta else 1)
            tile = default_tile_size(
                network, rules, spatial, chans, sw_device, net_dtype, int(memory_budget), sw_batch_size, overlap,
                repeats, tile_search,
            )  # fmt: skip
        else:
            raise ValueError(
                "the network has no monai-unet size rules (not a UNet, or a traced module): give tile_size (a size "
                "the network accepts) and, for an unpadded network, halo (or it is probed once from tile_size)."
            )
        if rules.halo is None:
            hal = _probe_halo(network, tile, chans, sw_device, net_dtype)
            rules = dataclasses.replace(rules, halo=hal, align=1 if max(hal) == 0 else UNKNOWN_ALIGN)
        else:
            hal = per_axis(rules.halo, dims, "halo")
        if len(hal) != dims:
            raise ValueError(f"halo has {len(hal)} values but the image has {dims} spatial dimensions.")

        fit = tile_size is None or rules.depth is not None
        plans = [plan_axis(s, t, h, rules, overlap, fit=fit) for s, t, h in zip(spatial, tile, hal)]
        tile = tuple(p.tile for p in plans)
        # without extra overlap every pixel is written by exactly one tile (its owner): plain slice assignment
        blend = overlap > 0.0
        weights = None
        if blend:
            weights = []
            for p in plans:
                w = (
                    gaussian_weights_1d(p.out, sigma_scale)
                    if mode == "gaussian"
                    else torch.ones(p.out, dtype=torch.float64)
                )
                weights.append([v.to(device) for v in blend_weights(p, w)])

        # per axis and tile position: the in-image block [lo, hi) the tile reads, the mirrored pads around it, and
        # the index map into the block for pads too wide for one reflection (None when one reflection does)
        maps = []
        for p, s in zip(plans, spatial):
            axis_maps = []
            for start in p.starts:
                a, b = start - p.halo, start - p.halo + p.tile
                lo, hi = max(a, 0), min(b, s)
                if lo >= hi or lo - a >= hi - lo or b - hi >= hi - lo:  # ping-pong: gather through the index map
                    idx = reflect_indices(a, p.tile, s)
                    lo, hi = int(idx.min()), int(idx.max()) + 1
                    axis_maps.append((lo, hi, 0, 0, idx - lo))
                else:
                    axis_maps.append((lo, hi, lo - a, b - hi, None))
            maps.append(axis_maps)
        tile_format = torch.contiguous_format
        if channels_last and dims in (2, 3):
            tile_format = torch.channels_last if dims == 2 else torch.channels_last_3d
        jobs = [(b, pos) for b in range(bsz) for pos in itertools.product(*(range(len(p.starts)) for p in plans))]
        in_dtype = net_dtype
        flips = [()] if not tta else [f for r in range(dims + 1) for f in itertools.combinations(range(2, dims + 2), r)]

        result = None
        external = out is not None
        checked = False
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(jobs), desc="overlap-tile", unit="tile")
        for first in range(0, len(jobs), sw_batch_size):
            chunk = jobs[first : first + sw_batch_size]
            xb = torch.empty((len(chunk), chans, *tile), dtype=in_dtype, device=sw_device)
            xb = xb.contiguous(memory_format=tile_format)  # a no-op for one channel: strides as allocated
            for i, (b, pos) in enumerate(chunk):
                m = [maps[a][k] for a, k in enumerate(pos)]
                block = src.read(b, [slice(lo, hi) for lo, hi, *_ in m])
                if any(local is not None for *_, local in m):
                    for a in reversed(range(dims)):
                        local = m[a][4]
                        if local is None and (m[a][2] or m[a][3]):
                            local = reflect_indices(m[a][2] and -m[a][2], tile[a], m[a][1] - m[a][0])
                        if local is not None:
                            block = block.index_select(a + 1, local.to(block.device))
                elif any(pl or pr for _, _, pl, pr, _ in m):
                    pads = [v for _, _, pl, pr, _ in reversed(m) for v in (pl, pr)]
                    block = F.pad(block[None].to(in_dtype), pads, mode="reflect")[0]
                xb[i].copy_(block)
            y = _predict(network, xb, flips, tta_activation if tta else "none", *args, **kwargs)
            if not checked:
                _check_output(y, tile, hal, plans)
                checked = True
                if external:
                    check_out(out, (bsz, y.shape[1], *spatial), dims)
                    if blend:
                        zero_fill(out, dims)
                else:
                    shape = (bsz, y.shape[1], *spatial)
                    result = (torch.zeros if blend else torch.empty)(shape, dtype=y.dtype, device=device)
            y = y.to(device)
            for i, (b, pos) in enumerate(chunk):
                if blend:
                    dst = [
                        slice(plans[a].starts[k], min(plans[a].starts[k] + plans[a].out, plans[a].size))
                        for a, k in enumerate(pos)
                    ]
                    piece = y[(i, slice(None), *(slice(0, d.stop - d.start) for d in dst))]
                    for a, k in enumerate(pos):
                        shape = [1] * (dims + 1)
                        shape[a + 1] = -1
                        piece = piece * weights[a][k].view(shape)
                    if external:
                        idx = sink_index(out, dims, b, dst)
                        out[idx] = out[idx] + to_sink(piece, out, idx)
                    else:
                        result[(b, slice(None), *dst)] += piece
                else:
                    dst = [slice(*plans[a].own[k]) for a, k in enumerate(pos)]
                    loc = [
                        slice(d.start - plans[a].starts[k], d.stop - plans[a].starts[k])
                        for a, (d, k) in enumerate(zip(dst, pos))
                    ]
                    piece = y[(i, slice(None), *loc)]
                    if external:
                        idx = sink_index(out, dims, b, dst)
                        out[idx] = to_sink(piece, out, idx)
                    else:
                        result[(b, slice(None), *dst)] = piece
            if bar is not None:
                bar.update(len(chunk))
        if bar is not None:
            bar.close()
        if external:
            return out
        if meta_like is not None:
            result = convert_to_dst_type(result, meta_like, device=device)[0]
        return result


def _predict(
    network: Callable, x: torch.Tensor, flips: list, activation: str, *args: Any, **kwargs: Any
) -> torch.Tensor:
    if flips == [()] and activation == "none":
        return network(x, *args, **kwargs)
    acc = None
    for f in flips:
        y = network(torch.flip(x, f) if f else x, *args, **kwargs)
        if activation == "softmax":
            y = torch.softmax(y, dim=1)
        elif activation == "sigmoid":
            y = torch.sigmoid(y)
        if f:
            y = torch.flip(y, f)
        acc = y if acc is None else acc + y
    return acc / len(flips)


def _check_output(y: Any, tile: tuple[int, ...], hal: tuple[int, ...], plans: list[AxisPlan]) -> None:
    if not isinstance(y, torch.Tensor):
        raise ValueError(f"the network must return a tensor, got {type(y).__name__}.")
    want = tuple(p.out for p in plans)
    got = tuple(int(s) for s in y.shape[2:])
    if got != want:
        rel = "smaller" if math.prod(got) < math.prod(want) else "larger"
        real = tuple((t - g) / 2 for t, g in zip(tile, got))
        raise ValueError(
            f"the network's output for a {tile} tile is {got}, {rel} than the halo {hal} predicts ({want}); "
            f"its halo looks like {real}. Give the right halo= (or none for a monai-unet UNet)."
        )


class OverlapTileInferer(Inferer):
    """Overlap-tile inference as a MONAI :class:`~monai.inferers.Inferer`, for unpadded and padded networks.

    ``inferer(inputs, network)`` returns an output of the input's spatial size. With the defaults it equals one
    pass of the network over the whole image mirrored at its borders (to float rounding), for any image size.
    For a ``padding="same"`` network (halo 0) it is a drop-in replacement for MONAI's ``SlidingWindowInferer``
    (give ``overlap`` and ``mode="gaussian"`` for the same blending).

    The halo comes from the network's size rules (a monai-unet ``UNet``, also TorchScript-scripted or wrapped
    in DataParallel/DDP, carries ``n_pool``, ``padding`` and ``spatial_dims``); for any other network give
    ``halo``, or it is learnt by one forward of a ``tile_size`` zero tile.

    Args:
        tile_size: input tile size (int or one per axis), a valid input size of the network. For a monai-unet
            UNet it is the largest tile used: along each axis the smallest valid tile that needs no more tiles
            is taken, so little is computed outside the image. ``None``: chosen from ``memory_budget``.
        sw_batch_size: tiles per forward.
        overlap: extra overlap of the output tiles, fraction in ``[0, 1)``; ``0`` (default) stitches disjoint
            tiles by slice assignment, which is exact for an unpadded network.
        mode: blending of overlapping tiles, ``"constant"`` or ``"gaussian"`` (used when ``overlap > 0``).
        sigma_scale: Gaussian sigma as a fraction of the output tile size.
        sw_device: device of the tiles and the forward (default: the inputs' device, or the network's for
            arrays). ``device``: device of the stitched output (default: the inputs' device, CPU for arrays).
        progress: show a tqdm progress bar over tiles.
        halo: pixels lost per side by the network (int or one per axis); only for networks without size rules.
        memory_budget: bytes of activation memory one forward of ``sw_batch_size`` tiles may use; the largest
            valid tile fitting the analytic estimate is taken (``ValueError`` if the smallest does not fit).
            Default: a quarter of the physical memory (1-8 GiB) on the CPU, half the free memory on CUDA
            (:func:`~monai_unet.inferers.tile_choice.default_memory_budget`).
        tta: flip test-time augmentation: average the activated outputs over all ``2 ** spatial_dims`` flips.
        tta_activation: ``"softmax"`` (over channels), ``"sigmoid"`` or ``"none"`` (average logits).
        tile_search: how the tile is chosen when ``tile_size`` is ``None``, among the valid tiles within the memory
            budget: ``"flops"`` takes the one with (within 3%) the fewest FLOPs over the image
            (:func:`~monai_unet.inferers.tile_choice.auto_tile_size`); ``"measure"`` first times a ladder of
            tiles on this device and leaves out tiles larger than the fastest per output pixel
            (:func:`~monai_unet.inferers.tile_choice.speed_cap`, cached per network architecture, device, dtype
            and threads for the process); ``"auto"`` (default) measures as far as the timing costs at most the
            FLOPs of this inference (small images: FLOPs alone; the next image goes on from there). On a CPU the
            fewest FLOPs are not the fastest: large tiles outgrow the cache. Whatever the tile, the result is
            the same to float rounding.
        channels_last: run the network with its convolution weights and the tiles in channels-last memory format
            (the weights are converted for the call and the original tensors put back after); ``None`` (default):
            on a CPU, where oneDNN runs it about 1.3-1.4x faster. The results agree to float rounding.

    Call: ``inferer(inputs, network, *args, out=None, **kwargs)`` with ``inputs`` ``(B, C, *S)`` (a tensor,
    or a lazily read array of shape ``(B, C, *S)``, ``(C, *S)`` or ``(*S)``); returns ``(B, C_out, *S)``, or
    ``out`` (an array written tile by tile) when given. ``args``/``kwargs`` go to the network.
    """

    def __init__(
        self,
        tile_size: int | Sequence[int] | None = None,
        sw_batch_size: int = 1,
        overlap: float = 0.0,
        mode: str = "constant",
        sigma_scale: float = 0.125,
        sw_device: torch.device | str | None = None,
        device: torch.device | str | None = None,
        progress: bool = False,
        halo: int | Sequence[int] | None = None,
        memory_budget: int | None = None,
        tta: bool = False,
        tta_activation: str = "softmax",
        tile_search: str = "auto",
        channels_last: bool | None = None,
    ) -> None:
        super().__init__()
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}.")
        if tta_activation not in _ACTIVATIONS:
            raise ValueError(f"tta_activation must be one of {_ACTIVATIONS}, got {tta_activation!r}.")
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}.")
        if sw_batch_size < 1:
            raise ValueError(f"sw_batch_size must be >= 1, got {sw_batch_size}.")
        if tile_search not in TILE_SEARCHES:
            raise ValueError(f"tile_search must be one of {TILE_SEARCHES}, got {tile_search!r}.")
        if memory_budget is not None and memory_budget <= 0:
            raise ValueError(f"memory_budget must be a positive number of bytes, got {memory_budget}.")
        self.tile_size = tile_size
        self.sw_batch_size = sw_batch_size
        self.overlap = overlap
        self.mode = mode
        self.sigma_scale = sigma_scale
        self.sw_device = sw_device
        self.device = device
        self.progress = progress
        self.halo = halo
        self.memory_budget = memory_budget
        self.tta = tta
        self.tta_activation = tta_activation
        self.tile_search = tile_search
        self.channels_last = channels_last

    def __call__(
        self,
        inputs: torch.Tensor | Any,
        network: Callable[..., torch.Tensor],
        *args: Any,
        out: Any = None,
        **kwargs: Any,
    ) -> torch.Tensor | Any:
        """``(B, C, *S) -> (B, C_out, *S)``; see the class docstring."""
        return overlap_tile_inference(
            inputs,
            network,
            self.tile_size,
            self.sw_batch_size,
            self.overlap,
            self.mode,
            self.sigma_scale,
            self.sw_device,
            self.device,
            self.progress,
            self.halo,
            self.memory_budget,
            self.tta,
            self.tta_activation,
            out,
            self.tile_search,
            self.channels_last,
            *args,
            **kwargs,
        )
