"""The blocks of the larger-than-RAM path: their size, where each reads its input, and the pipeline that runs them.

An output block is one chunk of the output store (:class:`~monai_unet.io.ome_zarr.LabelStore`): blocks start on a
grid of multiples of the block size, which is a multiple of the network's pooling step (so each block sees the
pooling grid of the whole image and the result equals whole-image inference, as in
:class:`~monai_unet.inferers.OverlapTileInferer`) and of 16 (a TIFF tile). A block's input tile is the smallest valid
tile whose output covers it, read with its halo (mirrored at the image's borders).

The block size comes from the in-memory path's measured tile choice
(:func:`~monai_unet.inferers.tile_choice.default_tile_size`, within the memory budget): the largest multiple of the
step whose input tile is no larger than that tile, balanced so the last block along an axis is not a sliver.

:func:`run_pipeline` overlaps the three stages: a reader thread reads and preprocesses the next tiles, the calling
thread runs the network, a writer thread postprocesses and writes the finished blocks; bounded queues between them
keep at most a few tiles in memory.
"""

from __future__ import annotations

import dataclasses
import math
import queue
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from monai_unet.inferers.tiling import AxisPlan, SizeRules, TileSpan, axis_spans

__all__ = ["BlockPlan", "block_sizes", "run_pipeline"]

TIFF_TILE_STEP = 16


def _step(rules: SizeRules, axis: int) -> int:
    return math.lcm(TIFF_TILE_STEP, max(1, rules.axis_align(axis)))


def block_sizes(rules: SizeRules, spatial: Sequence[int], tile: Sequence[int]) -> tuple[int, ...]:
    """Per axis, the output block for an image of size ``spatial`` whose input tile is at most ``tile``.

    The block is a multiple of the step (the pooling step and 16); the number of blocks is the fewest whose tiles
    fit, and the block the smallest step multiple that covers the image with that many (little overhang). Where the
    smallest block's tile exceeds ``tile``, the smallest block is taken.
    """
    out = []
    for a, (size, t) in enumerate(zip(spatial, tile)):
        q = _step(rules, a)
        n = max(1, math.ceil(size / max(1, t - 2 * rules.halo[a])))
        while True:
            b = max(q, math.ceil(math.ceil(size / n) / q) * q)
            if b == q or rules.input_size(b, a) <= t:
                break
            n += 1
        out.append(b)
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class BlockPlan:
    """The blocks of an image in the network's axis order (the ``(W, H)`` view of a 2D image).

    Attributes:
        spatial: image size per axis; ``block``: output block per axis; ``tile``: the input tile per axis;
        halo: per axis. Block ``pos`` (one index per axis) owns ``[pos * block, min((pos + 1) * block, size))``.
    """

    spatial: tuple[int, ...]
    block: tuple[int, ...]
    tile: tuple[int, ...]
    halo: tuple[int, ...]

    @classmethod
    def make(cls, rules: SizeRules, spatial: Sequence[int], block: Sequence[int]) -> BlockPlan:
        tile = tuple(rules.input_size(b, a) for a, b in enumerate(block))
        return cls(tuple(int(s) for s in spatial), tuple(int(b) for b in block), tile, tuple(rules.halo))

    @property
    def grid(self) -> tuple[int, ...]:
        return tuple(math.ceil(s / b) for s, b in zip(self.spatial, self.block))

    @property
    def count(self) -> int:
        return math.prod(self.grid)

    def axis_plan(self, a: int) -> AxisPlan:
        size, b, t, h = self.spatial[a], self.block[a], self.tile[a], self.halo[a]
        starts = tuple(range(0, size, b))
        own = tuple((s, min(s + b, size)) for s in starts)
        return AxisPlan(size=size, tile=t, out=t - 2 * h, halo=h, starts=starts, own=own)

    def spans(self, pos: Sequence[int]) -> list[TileSpan]:
        """Where block ``pos``'s input tile reads, per axis (:class:`~monai_unet.inferers.tiling.TileSpan`)."""
        return [axis_spans(self.axis_plan(a))[k] for a, k in enumerate(pos)]

    def owned(self, pos: Sequence[int]) -> tuple[slice, ...]:
        """The part of the tile's output that block ``pos`` keeps (from the output's origin)."""
        return tuple(slice(0, min(b, s - k * b)) for k, b, s in zip(pos, self.block, self.spatial))


_DONE = object()


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def run_pipeline(
    items: Iterable[Any],
    read: Callable[[Any], Any],
    compute: Callable[[Any], Any],
    write: Callable[[Any, Any], None],
    depth: int = 2,
) -> int:
    """``write(item, compute(read(item)))`` for each item, the three overlapped: ``read`` in a reader thread,
    ``compute`` in the calling thread (the network: CUDA streams and autocast state stay on one thread), ``write``
    in a writer thread, with at most ``depth`` items waiting between two stages. Returns the number written.

    The first exception of any stage stops the reading; what was computed before it is still written (complete
    work is kept), then it is raised here. A ``KeyboardInterrupt`` in the calling thread does the same.
    """
    to_compute: queue.Queue = queue.Queue(depth)
    to_write: queue.Queue = queue.Queue(depth)
    stop = threading.Event()
    errors: list[BaseException] = []  # reading or computing failed: stop reading, write what was computed
    write_errors: list[BaseException] = []  # writing failed: stop everything
    written = 0

    def reader() -> None:
        try:
            for item in items:
                if not _put(to_compute, (item, read(item)), stop):
                    return
        except BaseException as e:
            errors.append(e)
        _put(to_compute, _DONE, stop)

    def writer() -> None:
        nonlocal written
        while True:
            got = to_write.get()
            if got is _DONE:
                return
            if write_errors:
                continue  # drain
            try:
                write(*got)
                written += 1
            except BaseException as e:
                write_errors.append(e)
                stop.set()

    threads = [threading.Thread(target=reader, daemon=True), threading.Thread(target=writer, daemon=True)]
    for t in threads:
        t.start()
    try:
        while not stop.is_set():
            try:
                got = to_compute.get(timeout=0.1)
            except queue.Empty:
                continue
            if got is _DONE:
                break
            item, x = got
            y = compute(x)
            del x
            if not _put(to_write, (item, y), stop):
                break
    except BaseException as e:
        errors.insert(0, e)
    finally:
        stop.set()  # the reader stops at its next put
        to_write.put(_DONE)  # the writer finishes what it holds first
        threads[1].join()
        threads[0].join(timeout=5.0)
    if write_errors or errors:
        raise (write_errors or errors)[0]
    return written


def read_tile(source: Any, plan: BlockPlan, pos: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """Block ``pos``'s mirrored input tile ``(1, C, *plan.tile)`` from ``source`` (an
    :class:`~monai_unet.inferers.arrays.Source`)."""
    from monai_unet.inferers.overlap_tile import _read_tile

    return _read_tile(source, 0, plan.spans(pos), plan.tile, dtype)[None].to(dtype)
