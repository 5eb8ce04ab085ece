"""The larger-than-RAM path of ``monai-unet predict``: a 2D image read, preprocessed, segmented and written block by
block, resumable, on one machine or a Dask cluster.

Input: a plain or tiled TIFF, a pyramidal OME-TIFF or an OME-Zarr image, opened lazily
(:func:`~monai_unet.io.large_image.open_large_image`: only the tiles or chunks a read touches are decoded). The
bundle's intensity preprocessing is re-expressed per tile: transforms that need whole-image statistics
(``ScaleIntensityd``: min and max) get them from one streaming pass over the image and become MONAI's own
``ScaleIntensityRange`` with those values, after which every supported transform is a pointwise function of the
pixel, so a tile's input is exactly what the whole-image preprocessing would give for those pixels.

The image is cut into output blocks (:mod:`~monai_unet.predict.large_blocks`), sized from the in-memory path's
measured tile choice within ``--large-memory-mb``; each block is one chunk of an OME-Zarr label store
(:class:`~monai_unet.io.ome_zarr.LabelStore`) beside the output, ``.<output>.partial``, with a completion marker per
block. A reader thread, the network and a writer thread overlap (:func:`~monai_unet.predict.large_blocks.
run_pipeline`); a rerun after a kill computes only the blocks not marked. When all are done the pyramid and the NGFF
metadata are added and the store becomes the output (``.ome.zarr``, renamed into place) or its encoded chunks
become the tiles of a pyramidal OME-TIFF (``.ome.tif``, written atomically; nothing is decoded or encoded again).
The physical pixel size goes from the input to the output. With a Dask client the blocks run on its workers
(:mod:`~monai_unet.predict.distributed`), which write the store in parallel.

Axis convention: MONAI's ``PILReader`` (the 2D bundles' reader) returns ``(W, H)`` arrays, the transpose of the
file's ``(rows, columns)``; :class:`LazyImage` presents that transposed view to the network and the blocks are
transposed back when written, so the network sees the same orientation in both paths.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monai_unet.predict.inputs import InputItem, PredictOptions
from monai_unet.predict.runner import BundleRunner, InputError

__all__ = [
    "BlockJob",
    "LazyImage",
    "limit_heap_fragmentation",
    "partial_path",
    "pointwise_preprocessing",
    "predict_large_image",
    "streaming_min_max",
]


def limit_heap_fragmentation(threshold: int = 1 << 20) -> bool:
    """Serve allocations of ``threshold`` bytes or more by ``mmap`` (glibc ``mallopt(M_MMAP_THRESHOLD)``).

    glibc raises its mmap threshold each time a large block is freed, after which the per-tile activation
    tensors come from the heap and fragment it: over thousands of tiles the peak RSS creeps up with the image.
    A fixed threshold returns every large block to the system when freed, so the peak stays that of one tile
    (measured: 1412 -> 1241 MiB on a 4096^2 TIFF). Returns whether it was applied (glibc only).
    """
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-3, int(threshold)))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def streaming_min_max(array: Any, rows_per_block: int | None = None) -> tuple[float, float]:
    """Min and max of a lazily read ``(rows, columns)`` array, one band of rows at a time.

    Raises:
        ValueError: the array holds NaN or infinite values (the message counts them).
    """
    rows = int(array.shape[0])
    if rows_per_block is None:
        chunk = int(getattr(array, "chunks", (256,))[0] or 256)
        rows_per_block = max(chunk, (2**24 // max(1, int(np.prod(array.shape[1:])))) // chunk * chunk)
    lo, hi, bad = np.inf, -np.inf, 0
    for r in range(0, rows, rows_per_block):
        band = np.asarray(array[r : min(rows, r + rows_per_block)])
        if band.dtype.kind == "f":
            finite = np.isfinite(band)
            if not finite.all():
                bad += int(band.size - finite.sum())
                continue
        if band.size:
            lo, hi = min(lo, float(band.min())), max(hi, float(band.max()))
    if bad:
        raise ValueError(f"the image holds {bad} NaN/infinite values; fix or mask them before segmenting.")
    return lo, hi


def _scale_fn(mn: float, mx: float, minv: float, maxv: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """``ScaleIntensity(minv, maxv)`` of the whole image, for one tile: MONAI's ``ScaleIntensityRange`` from the
    image's streamed ``[mn, mx]`` to ``[minv, maxv]`` (the same arithmetic as ``rescale_array``)."""
    from monai.transforms import ScaleIntensityRange

    if mn == mx:  # rescale_array of a constant image
        return lambda x: x * minv
    lo, hi = (float(v) for v in torch.tensor([mn, mx], dtype=torch.float32))
    return ScaleIntensityRange(a_min=lo, a_max=hi, b_min=minv, b_max=maxv, clip=False)


def needs_statistics(transforms: Sequence[Any]) -> bool:
    """Whether the preprocessing needs the image's min and max (a ``ScaleIntensityd``)."""
    from monai.transforms import ScaleIntensityd

    return any(isinstance(t, ScaleIntensityd) for t in transforms)


def pointwise_preprocessing(
    transforms: Sequence[Any], array: Any, stats: tuple[float, float] | None = None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The bundle's preprocessing after loading, as one pointwise function of the pixel values.

    Supported: ``ScaleIntensityd`` (min/max ``stats`` of the image, else from one streaming pass over ``array``),
    ``ScaleIntensityRanged``, ``EnsureTyped``/``CastToTyped`` (float dtypes). Whole-image statistics are propagated
    through earlier transforms, which are all monotone.

    Raises:
        ValueError: a transform that is not per-tile safe (resampling, cropping, percentiles...): the large-image
            path cannot reproduce it; segment the image in memory (raise ``--large-threshold``) instead.
    """
    from monai.transforms import CastToTyped, EnsureTyped, ScaleIntensityd, ScaleIntensityRanged

    fns: list[Callable[[torch.Tensor], torch.Tensor]] = []

    def apply_all(x: torch.Tensor) -> torch.Tensor:
        for f in fns:
            x = f(x)
        return x

    for t in transforms:
        if isinstance(t, ScaleIntensityd):
            s = t.scaler
            if s.factor is not None or s.channel_wise or s.minv is None or s.maxv is None:
                raise ValueError("ScaleIntensityd with factor/channel_wise is not supported on the large-image path.")
            if stats is None:
                stats = streaming_min_max(array)
            lo, hi = (float(v) for v in apply_all(torch.tensor(stats, dtype=torch.float32)))
            fns.append(_scale_fn(lo, hi, float(s.minv), float(s.maxv)))
        elif isinstance(t, ScaleIntensityRanged):
            s = t.scaler
            fns.append(s)  # pointwise already
        elif isinstance(t, (EnsureTyped, CastToTyped)):
            continue  # tiles are float32 already
        else:
            raise ValueError(
                f"{type(t).__name__} in the bundle's preprocessing is not per-tile safe, so the large-image path "
                "cannot reproduce it; segment the image in memory instead (raise --large-threshold)."
            )
    return apply_all


class LazyImage:
    """The ``(1, W, H)`` channel-first, transposed, preprocessed view of a lazily read ``(rows, columns)`` array.

    ``view[box]`` with ``box`` ``(channel slice, W slice, H slice)`` reads only that block and returns float32.
    """

    def __init__(self, array: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        if len(array.shape) != 2:
            raise ValueError(f"the large-image path reads single-channel 2D images, got shape {tuple(array.shape)}.")
        self.array = array
        self.fn = fn
        self.shape = (1, int(array.shape[1]), int(array.shape[0]))
        self.dtype = np.dtype(np.float32)

    def __getitem__(self, box: tuple) -> np.ndarray:
        _, sw, sh = box
        block = torch.from_numpy(np.asarray(self.array[sh, sw]).T.astype(np.float32))
        return self.fn(block).to(torch.float32).numpy()[None]


# ---- the blocks of one image, in one process ----------------------------------------------------------------------


def partial_path(out: str | os.PathLike) -> Path:
    """Where the resumable label store of output ``out`` is kept until it is complete: ``.<name>.partial``."""
    out = Path(out)
    return out.parent / f".{out.name}.partial"


@dataclasses.dataclass(frozen=True)
class BlockJob:
    """What a process needs to run blocks of one image (picklable: Dask workers receive it).

    Attributes:
        image: the input path; ``stats``: its (min, max) when the preprocessing needs them; ``plan``: the blocks;
        store: the label store's folder; ``runner_spec``: how to build the bundle's runner
        (:attr:`~monai_unet.predict.runner.BundleRunner.spec`).
    """

    image: str
    stats: tuple[float, float] | None
    plan: Any  # BlockPlan
    store: str
    runner_spec: dict


class BlockWorker:
    """Runs blocks ``(i, j)`` (row and column of the block grid) of a :class:`BlockJob` in this process: the input
    tile read and preprocessed in a reader thread, the network in the calling thread, the bundle's postprocessing
    and the write (chunk, then completion marker) in a writer thread."""

    def __init__(self, job: BlockJob, runner: BundleRunner) -> None:
        from monai_unet.inferers.arrays import Source
        from monai_unet.inferers.overlap_tile import _network_device_dtype
        from monai_unet.io.large_image import open_large_image
        from monai_unet.io.ome_zarr import LabelStore

        self.job, self.runner = job, runner
        limit_heap_fragmentation()
        image = open_large_image(job.image)
        fn = pointwise_preprocessing(runner.pre_transforms, image.array, job.stats)
        self.source = Source(LazyImage(image.array, fn), dims=2)
        self.store = LabelStore(job.store)
        self.device = runner.device
        self.dtype = _network_device_dtype(runner.network)[1]
        inferer = runner.inferer
        self.precision = str(getattr(inferer, "precision", "fp32"))
        self.precision_check = getattr(inferer, "precision_check", None)
        flag = getattr(inferer, "channels_last", None)
        self.channels_last = self.device.type == "cpu" if flag is None else bool(flag)

    def read(self, pos: tuple[int, int]) -> torch.Tensor:
        from monai_unet.predict.large_blocks import read_tile

        x = read_tile(self.source, self.job.plan, (pos[1], pos[0]), self.dtype)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        return self.runner.network(x.to(self.device, non_blocking=True)).float()

    def write(self, pos: tuple[int, int], y: torch.Tensor) -> None:
        pred = self.runner.run_tile_postprocessing(y[0])
        pred = np.asarray(pred.detach().cpu() if isinstance(pred, torch.Tensor) else pred)
        pred = pred.reshape(pred.shape[-2:])[self.job.plan.owned((pos[1], pos[0]))]
        self.store.write_block(pos[0], pos[1], pred.T)

    def run(self, blocks: Sequence[tuple[int, int]], on_written: Callable[[int], None] | None = None) -> int:
        """Run ``blocks`` through the pipeline; ``on_written(1)`` after each block is stored."""
        from monai_unet.inferers.channels_last import channels_last_weights
        from monai_unet.inferers.precision import autocast_for
        from monai_unet.predict.large_blocks import run_pipeline

        def write(pos: tuple[int, int], y: torch.Tensor) -> None:
            self.write(pos, y)
            if on_written is not None:
                on_written(1)

        net = self.runner.network
        cast = autocast_for(self.precision, self.device, self.precision_check)
        with torch.no_grad(), channels_last_weights(net, self.channels_last), cast:
            return run_pipeline(blocks, self.read, self.compute, write)


class Progress:
    """One bar for the whole image: blocks done of all (a resumed run starts at those done before) and MP/s."""

    def __init__(self, total: int, done: int, megapixels: float, enabled: bool, name: str) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=done, desc=name, unit="tile", disable=not enabled, leave=False)
        self.per_block = megapixels / max(1, total)
        self.count, self.t0 = 0, time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.count += n
        rate = self.count * self.per_block / max(1e-9, time.perf_counter() - self.t0)
        self.bar.set_postfix_str(f"{rate:.2f} MP/s", refresh=False)
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()


# ---- one image, start to end ---------------------------------------------------------------------------------------


def _stamp(path: Path) -> list:
    st = path.stat()
    return [str(path.resolve()), int(st.st_size), int(st.st_mtime_ns)]


def _job_description(runner: BundleRunner, path: Path, shape: Sequence[int], stats: Any, dtype: Any) -> dict:
    """What makes a partial store this job's own: the input, the network and its weights, the preprocessing."""
    return {
        "format": 1,
        "input": _stamp(path),
        "shape": [int(s) for s in shape],
        "stats": list(stats) if stats is not None else None,
        "dtype": np.dtype(dtype).str,
        "bundle": str(runner.bundle),
        "checkpoints": [_stamp(Path(c)) for c in runner.checkpoints],
        "overrides": repr(sorted(runner.spec.get("overrides", {}).items())),
        "precision": str(getattr(runner.inferer, "precision", "fp32")),
    }


def choose_block(runner: BundleRunner, spatial: Sequence[int], memory_mb: int) -> tuple[int, ...]:
    """The output block (per axis of the network's view) for an image of size ``spatial``: from the in-memory
    path's measured tile choice within ``memory_mb`` MiB of activations (``0``: the bundle's tile size, else the
    inferer's own budget), see :func:`~monai_unet.predict.large_blocks.block_sizes`."""
    from monai_unet.inferers.channels_last import channels_last_weights
    from monai_unet.inferers.overlap_tile import _network_device_dtype
    from monai_unet.inferers.precision import autocast_for
    from monai_unet.inferers.tile_choice import default_memory_budget, default_tile_size
    from monai_unet.inferers.tiling import per_axis, size_rules_of
    from monai_unet.predict.large_blocks import block_sizes

    net, inferer = runner.network, runner.inferer
    rules = size_rules_of(net)
    given = getattr(inferer, "tile_size", None)
    if memory_mb == 0 and given is not None:
        return block_sizes(rules, spatial, per_axis(given, len(spatial), "tile_size"))
    budget = memory_mb * 2**20 if memory_mb > 0 else getattr(inferer, "memory_budget", None)
    budget = budget or default_memory_budget(runner.device)
    dtype = _network_device_dtype(net)[1]
    flag = getattr(inferer, "channels_last", None)
    channels_last = runner.device.type == "cpu" if flag is None else bool(flag)
    with torch.no_grad(), channels_last_weights(net, channels_last):
        with autocast_for(
            str(getattr(inferer, "precision", "fp32")), runner.device, getattr(inferer, "precision_check", None)
        ):
            tile = default_tile_size(
                net, rules, spatial, runner.in_channels, runner.device, dtype, int(budget),
                tile_search=str(getattr(inferer, "tile_search", "auto")),
            )  # fmt: skip
    return block_sizes(rules, spatial, tile)


def _check_runner(runner: BundleRunner) -> None:
    from monai_unet.inferers.tiling import size_rules_of

    if len(runner.networks) > 1 or getattr(runner.inferer, "tta", False):
        raise InputError(
            "the larger-than-RAM path runs one network without flips; segment this image with one checkpoint and "
            "no --tta, or in memory (raise --large-threshold)."
        )
    if runner.spatial_dims != 2:
        raise InputError(f"a 2D image cannot be segmented by the {runner.spatial_dims}D bundle {runner.bundle.name}.")
    if float(getattr(runner.inferer, "overlap", 0.0)) > 0:
        raise ValueError("the large-image path needs the bundle's inferer with overlap=0 (disjoint output tiles).")
    if not size_rules_of(runner.network).known:
        raise ValueError("the large-image path needs a monai-unet UNet (its size rules choose the blocks).")


def predict_large_image(
    runner: BundleRunner, item: InputItem, out: Path, options: PredictOptions, client: Any = None
) -> list[Path]:
    """Segment a 2D image larger than memory into ``out`` (``.ome.tif`` or ``.ome.zarr``, by
    ``options.large_format``), block by block, resuming a partial store of the same job; see the module docstring.

    ``client``: a ``dask.distributed.Client`` to run the blocks on (:func:`~monai_unet.predict.distributed.
    run_blocks`), else they run here. Probabilities are not written on this path.
    """
    from monai_unet.inferers.tiling import size_rules_of
    from monai_unet.io.large_image import open_large_image
    from monai_unet.io.ome_zarr import LabelStore
    from monai_unet.predict.large_blocks import BlockPlan

    _check_runner(runner)
    try:
        image = open_large_image(item.path)
    except ValueError as e:
        raise InputError(str(e).removeprefix(f"{item.path}: ")) from e
    arr = image.array
    channels = 1 if len(arr.shape) == 2 else int(arr.shape[-1])
    if len(arr.shape) != 2 or channels != runner.in_channels:
        raise InputError(
            f"image of shape {tuple(arr.shape)} has {channels} channel(s); the large-image path takes "
            f"single-channel 2D images and the bundle takes {runner.in_channels}."
        )
    if min(arr.shape) < 1:
        raise InputError(f"image is empty: shape {tuple(arr.shape)}.")
    stats = streaming_min_max(arr) if needs_statistics(runner.pre_transforms) else None
    pointwise_preprocessing(runner.pre_transforms, arr, stats)  # refuses what cannot run per tile, before any work
    runner.check_pointwise_postprocessing()
    dtype = np.dtype(runner.output_dtype or np.uint8)
    rows, cols = (int(s) for s in arr.shape)
    spatial = (cols, rows)  # the network's (W, H) view
    job = _job_description(runner, item.path, arr.shape, stats, dtype)
    partial = partial_path(out)
    store = LabelStore.resume(partial, job)
    if store is None:
        block = choose_block(runner, spatial, options.large_memory_mb)
        store = LabelStore.create(partial, (rows, cols), (block[1], block[0]), dtype, {**job, "chunks": block})
    plan = BlockPlan.make(size_rules_of(runner.network), spatial, (store.chunks[1], store.chunks[0]))
    done = store.done_blocks()
    gi, gj = store.grid
    todo = [(i, j) for i in range(gi) for j in range(gj) if (i, j) not in done]
    work = BlockJob(str(item.path), stats, plan, str(partial), runner.spec)
    bar = Progress(gi * gj, len(done), rows * cols / 1e6, options.progress, item.path.name)
    try:
        if client is not None:
            from monai_unet.predict.distributed import run_blocks

            run_blocks(client, work, todo, bar.update)
        else:
            BlockWorker(work, runner).run(todo, bar.update)
    finally:
        bar.close()
    return [_finish(store, out, options, image.pixel_size, runner.out_channels, item.path.name)]


def _finish(store: Any, out: Path, options: PredictOptions, pixel_size: Any, classes: int, source: str) -> Path:
    """Pyramid and metadata into the complete store, then the output: the store renamed into place (OME-Zarr) or
    its chunks written as a pyramidal OME-TIFF (atomically), the store removed."""
    from monai_unet.io.ome_tiff import write_pyramidal_ome_tiff

    missing = math.prod(store.grid) - len(store.done_blocks())
    if missing:
        raise RuntimeError(f"{missing} block(s) of {out.name} were not written; run again to finish them.")
    store.build_pyramid()
    store.write_metadata(pixel_size, classes, source)
    if options.large_format == "ome-zarr":
        store.finish()
        if out.exists():  # the batch asked to overwrite it
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(store.root, out)
    else:
        write_pyramidal_ome_tiff(store, out, pixel_size)
        shutil.rmtree(store.root, ignore_errors=True)
    return out
