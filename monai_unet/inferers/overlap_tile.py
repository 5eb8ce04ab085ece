"""Overlap-tile inference (Ronneberger et al. 2015, Fig. 2): seamless, exact, memory-bounded, any image size.

The image is mirrored at its borders, cut into tiles whose outputs tile the image, each tile is run with its full
context (the network's halo) and the outputs are stitched. Because every tile starts on the pooling grid of the
whole image, the result equals one pass of the network over the whole mirrored image, to float rounding.

The mirrored image is never built: each tile is gathered from the source through per-axis index maps, and a
lazily read source (numpy memmap, zarr, a tifffile zarr store) is read only where a tile needs it. The output
can be written into a caller-given array (memmap, zarr) tile by tile, so neither exists whole in memory.

:func:`overlap_tile_inference` reads as its steps: check the settings (:func:`_check_settings`, shared with
:class:`OverlapTileInferer`), choose the tile (:func:`_choose_tile`) and learn the halo (:func:`_known_halo`),
plan the tiles (:func:`~monai_unet.inferers.tiling.plan_tiles`), then per batch of tiles read each mirrored
tile (:func:`_read_tile`), run the network (:func:`_predict`) and write each output block (:func:`_write_block`).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.inferers import Inferer
from monai.utils import convert_to_dst_type
from torch import nn

from monai_unet.inferers.arrays import Source, check_out, sink_index, to_sink, zero_fill
from monai_unet.inferers.channels_last import channels_last_weights
from monai_unet.inferers.precision import autocast_for, resolve_precision
from monai_unet.inferers.tile_choice import TILE_SEARCHES, default_memory_budget, default_tile_size
from monai_unet.inferers.tiling import (
    UNKNOWN_ALIGN,
    AxisPlan,
    SizeRules,
    TileGrid,
    TileSpan,
    check_option,
    per_axis,
    plan_tiles,
    size_rules_of,
)
from monai_unet.networks.sizes import invalid_size_message

__all__ = ["OverlapTileInferer", "channels_last_weights", "overlap_tile_inference"]

_MODES = ("constant", "gaussian")
_ACTIVATIONS = ("softmax", "sigmoid", "none")


# ---- settings ----------------------------------------------------------------------------------------------------


def _check_settings(
    sw_batch_size: int, overlap: float, mode: str, tta_activation: str, tile_search: str, memory_budget: int | None
) -> tuple[str, str, str]:
    """The one check of the settings that :class:`OverlapTileInferer` and :func:`overlap_tile_inference` share.

    Returns ``(mode, tta_activation, tile_search)`` as MONAI's ``look_up_option`` finds them; raises ``ValueError``
    naming the setting and its bad value.
    """
    mode = check_option("mode", mode, _MODES)
    tta_activation = check_option("tta_activation", tta_activation, _ACTIVATIONS)
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}.")
    if sw_batch_size < 1:
        raise ValueError(f"sw_batch_size must be >= 1, got {sw_batch_size}.")
    tile_search = check_option("tile_search", tile_search, TILE_SEARCHES)
    if memory_budget is not None and memory_budget <= 0:
        raise ValueError(f"memory_budget must be a positive number of bytes, got {memory_budget}.")
    return mode, tta_activation, tile_search


def _spatial_dims(rules: SizeRules, tile_size: int | Sequence[int] | None, inputs: Any) -> int:
    """From the network's size rules, else a per-axis ``tile_size`` (or halo), else a tensor input."""
    if rules.spatial_dims is not None:
        return rules.spatial_dims
    if tile_size is not None and not isinstance(tile_size, int) and len(tile_size) > 1:
        return len(tile_size)
    if isinstance(inputs, torch.Tensor):
        return len(inputs.shape) - 2
    raise ValueError("cannot tell the number of spatial dimensions: give tile_size or halo with one per axis.")


def _check_tile(tile: tuple[int, ...], rules: SizeRules) -> None:
    if rules.axes is None:
        return
    for axis, t in enumerate(tile):
        if not rules.is_valid(t, axis):
            r = rules.axes[axis]
            raise ValueError(
                invalid_size_message(t, axis, r.first, r.step, r.padding, name="tile_size")
                + ". Give one of these, or leave tile_size unset to choose one from the memory budget."
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


def _choose_tile(
    network: Callable,
    rules: SizeRules,
    tile_size: int | Sequence[int] | None,
    spatial: Sequence[int],
    channels: int,
    device: torch.device,
    dtype: torch.dtype,
    *,
    memory_budget: int | None,
    sw_batch_size: int,
    overlap: float,
    repeats: int,
    tile_search: str,
) -> tuple[int, ...]:
    """The input tile: ``tile_size`` (checked against the network's size rules), or the one
    :func:`~monai_unet.inferers.tile_choice.default_tile_size` picks within the memory budget."""
    if tile_size is not None:
        tile = per_axis(tile_size, len(spatial), "tile_size")
        _check_tile(tile, rules)
        return tile
    if not rules.known:
        raise ValueError(
            "the network has no monai-unet size rules (not a UNet, or a traced module): give tile_size (a size "
            "the network accepts) and, for an unpadded network, halo (or it is probed once from tile_size)."
        )
    if memory_budget is None:
        memory_budget = default_memory_budget(device)
    return default_tile_size(
        network,
        rules,
        spatial,
        channels,
        device,
        dtype,
        int(memory_budget),
        sw_batch_size=sw_batch_size,
        overlap=overlap,
        repeats=repeats,
        tile_search=tile_search,
    )


def _known_halo(
    network: Callable, rules: SizeRules, tile: tuple[int, ...], channels: int, device: torch.device, dtype
) -> tuple[SizeRules, tuple[int, ...]]:
    """The size rules with the halo known (probed by one forward of ``tile`` if need be) and the halo per axis."""
    dims = len(tile)
    if rules.halo is None:
        hal = _probe_halo(network, tile, channels, device, dtype)
        rules = dataclasses.replace(rules, halo=hal, align=1 if max(hal) == 0 else UNKNOWN_ALIGN)
    else:
        hal = per_axis(rules.halo, dims, "halo")
    if len(hal) != dims:
        raise ValueError(f"halo has {len(hal)} values but the image has {dims} spatial dimensions.")
    return rules, hal


def _read_tile(
    src: Source, b: int, spans: Sequence[TileSpan], tile: tuple[int, ...], dtype: torch.dtype
) -> torch.Tensor:
    """The mirrored input tile ``(C, *tile)`` of image ``b``: its in-image block read once, then mirrored by one
    reflect pad, or gathered axis by axis when some pad is wider than one reflection."""
    block = src.read(b, [slice(s.lo, s.hi) for s in spans])
    if any(s.index is not None for s in spans):
        for a in reversed(range(len(spans))):
            local = spans[a].gather_index(tile[a])
            if local is not None:
                block = block.index_select(a + 1, local.to(block.device))
    elif any(s.pad_before or s.pad_after for s in spans):
        pads = [v for s in reversed(spans) for v in (s.pad_before, s.pad_after)]
        block = F.pad(block[None].to(dtype), pads, mode="reflect")[0]
    return block


def _tta_flips(rules: SizeRules, dims: int) -> list[tuple[int, ...]]:
    """The flips of flip TTA (tensor dims): every combination of the spatial axes, but for the axes the network never
    looks across (1-wide kernels and no pooling at every level, the slice axis of a 2d-configured 3D network): there
    a flip only reorders what the network computes position by position, so it would repeat another flip's output."""
    axes = [a + 2 for a in range(dims) if rules.axes is None or not rules.axes[a].is_flat]
    return [f for r in range(len(axes) + 1) for f in itertools.combinations(axes, r)]


def _prepare_output(
    out: Any, shape: tuple[int, ...], dims: int, blend: bool, dtype: torch.dtype, device: torch.device
) -> Any:
    """Where the stitched output goes: ``out`` checked (and zeroed for blending), or a new tensor."""
    if out is not None:
        check_out(out, shape, dims)
        if blend:
            zero_fill(out, dims)
        return out
    return (torch.zeros if blend else torch.empty)(shape, dtype=dtype, device=device)


def _write_block(target: Any, external: bool, y: torch.Tensor, b: int, pos: tuple[int, ...], grid: TileGrid) -> None:
    """Write one tile's output ``y`` ``(C_out, *out)`` into image ``b`` of ``target``: without blending the part
    the tile owns is assigned; with blending its part inside the image, weighted, is added."""
    dims = len(pos)
    if grid.weights is None:
        dst = [slice(*p.own[k]) for p, k in zip(grid.plans, pos)]
        loc = [slice(d.start - p.starts[k], d.stop - p.starts[k]) for d, p, k in zip(dst, grid.plans, pos)]
        piece = y[(slice(None), *loc)]
    else:
        dst = [slice(p.starts[k], min(p.starts[k] + p.out, p.size)) for p, k in zip(grid.plans, pos)]
        piece = y[(slice(None), *(slice(0, d.stop - d.start) for d in dst))]
        for a, k in enumerate(pos):
            shape = [1] * (dims + 1)
            shape[a + 1] = -1
            piece = piece * grid.weights[a][k].view(shape)
    if external:
        idx = sink_index(target, dims, b, dst)
        value = to_sink(piece, target, idx)
        target[idx] = value if grid.weights is None else target[idx] + value
    elif grid.weights is None:
        target[(b, slice(None), *dst)] = piece
    else:
        target[(b, slice(None), *dst)] += piece


def overlap_tile_inference(
    inputs: torch.Tensor | Any,
    network: Callable[..., torch.Tensor],
    *args: Any,
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
    precision: str = "fp32",
    precision_check: Any = None,
    **kwargs: Any,
) -> torch.Tensor | Any:
    """Run ``network`` over ``inputs`` tile by tile with mirrored borders and stitch the outputs.

    Args:
        inputs: ``(B, C, *S)`` tensor, or a lazily read array (numpy memmap, zarr array, ...) of shape
            ``(B, C, *S)``, ``(C, *S)`` or ``(*S)``; any spatial size, also smaller than the halo.
        network: maps ``(N, C, *tile)`` to ``(N, C_out, *(tile - 2 * halo))``.
        args, kwargs: passed to ``network`` after the tiles.
        out: optional array (numpy memmap, zarr, tensor) of shape ``(B, C_out, *S)`` (or ``(C_out, *S)``,
            ``(*S)`` for ``B == 1``) written tile by tile and returned.
        others (keyword-only): see :class:`OverlapTileInferer`.

    Returns:
        ``(B, C_out, *S)`` tensor on ``device`` (or ``out``): the network's output (logits) stitched; with
        ``tta`` the average of the activated (probability) outputs over all flips.
    """
    mode, tta_activation, tile_search = _check_settings(
        sw_batch_size, overlap, mode, tta_activation, tile_search, memory_budget
    )
    rules = size_rules_of(network, halo)
    dims = _spatial_dims(rules, tile_size, inputs)
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
    flips = _tta_flips(rules, dims) if tta else [()]
    activation = tta_activation if tta else "none"

    with channels_last_weights(network, channels_last), autocast_for(precision, sw_device, precision_check):
        tile = _choose_tile(
            network, rules, tile_size, spatial, chans, sw_device, net_dtype, memory_budget=memory_budget,
            sw_batch_size=sw_batch_size, overlap=overlap, repeats=bsz * len(flips), tile_search=tile_search,
        )  # fmt: skip
        rules, hal = _known_halo(network, rules, tile, chans, sw_device, net_dtype)
        grid = plan_tiles(
            spatial, tile, hal, rules, overlap=overlap, fit=tile_size is None or rules.known,
            mode=mode, sigma_scale=sigma_scale, device=device,
        )  # fmt: skip
        tile_format = torch.contiguous_format
        if channels_last and dims in (2, 3):
            tile_format = torch.channels_last if dims == 2 else torch.channels_last_3d
        jobs = [(b, pos) for b in range(bsz) for pos in grid.positions()]
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(jobs), desc="overlap-tile", unit="tile")
        target = None
        for first in range(0, len(jobs), sw_batch_size):
            chunk = jobs[first : first + sw_batch_size]
            xb = torch.empty((len(chunk), chans, *grid.tile), dtype=net_dtype, device=sw_device)
            xb = xb.contiguous(memory_format=tile_format)  # a no-op for one channel: strides as allocated
            for i, (b, pos) in enumerate(chunk):
                xb[i].copy_(_read_tile(src, b, grid.spans_at(pos), grid.tile, net_dtype))
            y = _predict(network, xb, flips, activation, *args, **kwargs)
            if target is None:
                _check_output(y, grid.tile, hal, grid.plans)
                target = _prepare_output(
                    out, (bsz, y.shape[1], *spatial), dims, grid.weights is not None, y.dtype, device
                )
            y = y.to(device)
            for i, (b, pos) in enumerate(chunk):
                _write_block(target, out is not None, y[i], b, pos, grid)
            if bar is not None:
                bar.update(len(chunk))
        if bar is not None:
            bar.close()
    if out is None and meta_like is not None:
        target = convert_to_dst_type(target, meta_like, device=device)[0]
    return target


def _predict(
    network: Callable, x: torch.Tensor, flips: list, activation: str, *args: Any, **kwargs: Any
) -> torch.Tensor:
    if flips == [()] and activation == "none":
        return network(x, *args, **kwargs).float()  # float32 whatever the network computed in
    acc = None
    for f in flips:
        y = network(torch.flip(x, f) if f else x, *args, **kwargs).float()
        if activation == "softmax":
            y = torch.softmax(y, dim=1)
        elif activation == "sigmoid":
            y = torch.sigmoid(y)
        if f:
            y = torch.flip(y, f)
        acc = y if acc is None else acc + y
    return acc / len(flips)


def _check_output(y: Any, tile: tuple[int, ...], hal: tuple[int, ...], plans: Sequence[AxisPlan]) -> None:
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
        tta: flip test-time augmentation: average the activated outputs over all ``2 ** spatial_dims`` flips (an
            axis the network never looks across, 1-wide kernels and no pooling, is not flipped: that would only
            repeat the other flips' outputs).
        tta_activation: ``"softmax"`` (over channels), ``"sigmoid"`` or ``"none"`` (average logits).
        tile_search: how the tile is chosen when ``tile_size`` is ``None``, among the valid tiles within the memory
            budget: ``"flops"`` takes the one with (within 3%) the fewest FLOPs over the image
            (:func:`~monai_unet.inferers.tile_choice.auto_tile_size`); ``"measure"`` first times a ladder of
            tiles on this device (:func:`~monai_unet.inferers.tile_choice.speed_cap`, cached per network
            architecture, device, dtype and threads for the process) and takes the tile of least FLOPs times
            measured seconds per FLOP, up to one rung past the fastest per output pixel; ``"auto"`` (default)
            measures as far as the timing costs at most the FLOPs of this inference (small images: FLOPs alone;
            the next image goes on from there; tiles larger than those timed are not trusted). On a CPU the fewest
            FLOPs are not the fastest: large tiles outgrow the cache. Whatever the tile, the result is the same to
            float rounding.
        channels_last: run the network with its convolution weights and the tiles in channels-last memory format
            (the weights are converted for the call and the original tensors put back after); ``None`` (default):
            on a CPU, where oneDNN runs it about 1.3-1.4x faster. The results agree to float rounding.
        precision: what the network computes in: ``"fp32"`` (default), ``"bf16"`` or ``"fp16"`` (under
            ``torch.autocast``), or ``"auto"``: a narrow type (bf16 on CPUs that compute it natively; bf16/fp16 on
            CUDA) only where ``precision_check`` says that it met the goal for this model on this device family,
            fp32 elsewhere, logged with the reason (see :func:`~monai_unet.inferers.precision.resolve_precision`).
            The output (logits, probabilities) is float32 in every case; tiled equals whole-image inference
            within the precision's rounding.
        precision_check: the model's measured precision check (``scripts/bench_precision.py --write-check``: speed
            against fp32, the share of labels changed, the task metric, per device family), which ``"auto"``
            reads; ``None``: ``"auto"`` is fp32.

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
        precision: str = "fp32",
        precision_check: Any = None,
    ) -> None:
        super().__init__()
        resolve_precision(precision, "cpu")  # a bad value fails here, not at the first image
        self.mode, self.tta_activation, self.tile_search = _check_settings(
            sw_batch_size, overlap, mode, tta_activation, tile_search, memory_budget
        )
        self.tile_size = tile_size
        self.sw_batch_size = sw_batch_size
        self.overlap = overlap
        self.sigma_scale = sigma_scale
        self.sw_device = sw_device
        self.device = device
        self.progress = progress
        self.halo = halo
        self.memory_budget = memory_budget
        self.tta = tta
        self.channels_last = channels_last
        self.precision = precision
        self.precision_check = precision_check

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
            *args,
            tile_size=self.tile_size,
            sw_batch_size=self.sw_batch_size,
            overlap=self.overlap,
            mode=self.mode,
            sigma_scale=self.sigma_scale,
            sw_device=self.sw_device,
            device=self.device,
            progress=self.progress,
            halo=self.halo,
            memory_budget=self.memory_budget,
            tta=self.tta,
            tta_activation=self.tta_activation,
            out=out,
            tile_search=self.tile_search,
            channels_last=self.channels_last,
            precision=self.precision,
            precision_check=self.precision_check,
            **kwargs,
        )
