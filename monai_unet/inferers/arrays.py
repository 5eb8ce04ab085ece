"""Where overlap-tile inference reads tiles from and writes them to: tensors, and arrays larger than memory.

A source is a tensor ``(B, C, *S)`` or any lazily read array with ``shape`` and numpy-style slicing (numpy
memmap, zarr, a tifffile zarr store opened with zarr) of shape ``(B, C, *S)``, ``(C, *S)`` or ``(*S)``; only
the block a tile needs is read. A sink is a caller-given array of the output's shape, written tile by tile.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["Source", "check_out", "sink_index", "to_sink", "zero_fill"]


class Source:
    """A ``(B, C, *S)`` view of a tensor or a lazily read array of shape ``(B, C, *S)``, ``(C, *S)`` or ``(*S)``."""

    def __init__(self, data: Any, dims: int) -> None:
        self.data = data
        self.is_tensor = isinstance(data, torch.Tensor)
        shape = tuple(int(s) for s in data.shape)
        self.lead = len(shape) - dims
        if self.is_tensor and self.lead != 2:
            raise ValueError(
                f"inputs must be a tensor of shape (B, C, *spatial) with {dims} spatial dimensions "
                f"({dims + 2} in all), got shape {shape}."
            )
        if self.lead not in (0, 1, 2):
            raise ValueError(
                f"inputs must have shape (B, C, *spatial), (C, *spatial) or (*spatial) with {dims} spatial "
                f"dimensions, got shape {shape}."
            )
        self.shape = (1,) * (2 - self.lead) + shape

    def read(self, b: int, box: Sequence[slice]) -> torch.Tensor:
        """The block ``[b, :, *box]`` as a tensor ``(C, *box)`` (a view for tensors, a read for arrays)."""
        box = tuple(box)
        if self.lead == 2:
            block = self.data[(b, slice(None), *box)]
        elif self.lead == 1:
            block = self.data[(slice(None), *box)]
        else:
            block = self.data[box][None]
        if self.is_tensor:
            return block
        block = np.asarray(block)
        if block.dtype.kind not in "fc" or block.dtype.byteorder not in "=|":
            block = block.astype(np.float32)
        return torch.from_numpy(np.ascontiguousarray(block))


def sink_index(out: Any, dims: int, b: int, box: Sequence[slice]) -> tuple:
    lead = len(out.shape) - dims
    if lead == 2:
        return (b, slice(None), *box)
    if lead == 1:
        return (slice(None), *box)
    return tuple(box)


def check_out(out: Any, shape: tuple[int, ...], dims: int) -> None:
    got = tuple(int(s) for s in out.shape)
    b, c, spatial = shape[0], shape[1], shape[2:]
    ok = (
        got == shape
        or (b == 1 and got == (c, *spatial))
        or (b == 1 and c == 1 and got == tuple(spatial) and len(got) == dims)
    )
    if not ok:
        raise ValueError(
            f"out has shape {got}, but the output is {shape} (B, C_out, *spatial); give an array of that shape "
            "(or (C_out, *spatial) for one image, or (*spatial) for one image with one output channel)."
        )


def to_sink(piece: torch.Tensor, out: Any, idx: tuple) -> Any:
    if isinstance(out, torch.Tensor):
        return piece.to(out.device, out.dtype)
    arr = piece.detach().cpu().numpy()
    want = len(out.shape) - sum(isinstance(i, int) for i in idx)
    while arr.ndim > want:
        arr = arr[0]
    return arr


def zero_fill(out: Any, dims: int) -> None:
    """Zero a caller-given output slab by slab along the first spatial axis (never a whole-size temporary)."""
    n = out.shape[len(out.shape) - dims]
    per = max(1, n // max(1, math.ceil(math.prod(out.shape) / 2**24)))
    for s in range(0, n, per):
        idx = (slice(None),) * (len(out.shape) - dims) + (slice(s, min(n, s + per)),)
        if isinstance(out, torch.Tensor):
            out[idx] = 0
        else:
            region = out[idx]
            out[idx] = np.zeros(np.shape(region), dtype=out.dtype)
