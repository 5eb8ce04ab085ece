"""``monai-unet predict --dask ADDRESS``: the larger-than-RAM path's blocks, and a cohort's inputs, on a Dask cluster.

- One large image: its output blocks (each one chunk of the label store, reading its own halo from the input, as
  ``dask.array.map_blocks`` over the output's chunks would) are handed to the workers in groups; each worker builds
  the bundle's runner once (:attr:`~monai_unet.predict.runner.BundleRunner.spec`), runs its blocks through the same
  read/network/write pipeline as one process does (:class:`~monai_unet.predict.large_image.BlockWorker`) and writes
  their chunks and completion markers into the store itself, in parallel with the others. The result is the
  single-process result: the same blocks, the same code. The store must be on a file system the workers share
  with the client (the output folder).
- A cohort: every input that is not a large image is one task, segmented by a worker as the batch would segment
  it (skips, claims, atomic outputs), alongside ``--shard``.

``ADDRESS`` is a scheduler (``tcp://host:8786``, what ``dask-jobqueue``/``dask-kubernetes`` clusters give), or
``local`` / ``local:N``: a ``LocalCluster`` of ``N`` worker processes (default: one per CPU core) with one thread
each. See ``docs/large_images.md``.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

__all__ = ["connect", "prepare_workers", "run_blocks", "submit_items"]

_RUNNERS: dict[str, Any] = {}
_WORKERS: dict[str, Any] = {}
_LOCK = threading.Lock()


def _need_distributed() -> Any:
    try:
        import distributed
    except ImportError as e:
        raise ImportError('--dask needs dask.distributed: pip install "monai-unet[dask]".') from e
    return distributed


@contextlib.contextmanager
def connect(address: str) -> Iterator[Any]:
    """A ``dask.distributed.Client`` for ``address`` (see the module docstring); a local cluster is closed after."""
    distributed = _need_distributed()
    m = re.fullmatch(r"local(?::(\d+))?", address.strip())
    if m is None:
        if not re.match(r"^[a-z]+://", address) and ":" not in address:
            raise ValueError(
                f"--dask {address!r}: give a scheduler address (tcp://host:8786) or local / local:N (N workers)."
            )
        with distributed.Client(address) as client:
            yield client
        return
    n = int(m.group(1)) if m.group(1) else (os.cpu_count() or 1)
    if n < 1:
        raise ValueError(f"--dask {address}: the number of local workers must be at least 1.")
    with (
        distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


def _runner(spec: dict) -> Any:
    """This process's runner for ``spec``, built once."""
    from monai_unet.predict.runner import BundleRunner

    key = repr(sorted(spec.items()))
    with _LOCK:
        if key not in _RUNNERS:
            _RUNNERS[key] = BundleRunner(**spec)
        return _RUNNERS[key]


def _prepare(spec: dict, dask_worker: Any = None) -> bool:
    """Set torch's threads to the worker's (Dask's nanny starts workers with ``OMP_NUM_THREADS=1``), import what the
    tasks need and build the runner, before any task arrives: a task's arguments are unpickled in the worker's event
    loop thread, and an import there while a task builds its runner (MONAI's config parser walks ``sys.modules``)
    fails with "dictionary changed size during iteration"."""
    import torch

    if dask_worker is not None:
        torch.set_num_threads(max(1, int(dask_worker.state.nthreads)))
    import monai_unet.io.ome_tiff
    import monai_unet.io.ome_zarr
    import monai_unet.predict.batch
    import monai_unet.predict.large_blocks
    import monai_unet.predict.large_image  # noqa: F401

    _runner(spec)
    return True


def prepare_workers(client: Any, spec: dict) -> None:
    """Run :func:`_prepare` on every worker of ``client`` (workers that join later prepare on their first task)."""
    client.run(_prepare, spec)


def _blocks_task(job: Any, blocks: Sequence[tuple[int, int]]) -> int:
    """Run ``blocks`` of ``job`` in this worker (one task at a time per worker: they share its network)."""
    from monai_unet.predict.large_image import BlockWorker

    runner = _runner(job.runner_spec)
    with _LOCK:
        worker = _WORKERS.get(job.store)
        if worker is None or worker.job != job:
            _WORKERS.clear()
            worker = _WORKERS[job.store] = BlockWorker(job, runner)
    with _RUN_LOCK:
        return worker.run(list(blocks))


_RUN_LOCK = threading.Lock()


def run_blocks(
    client: Any, job: Any, blocks: Sequence[tuple[int, int]], on_written: Callable[[int], None] | None = None
) -> int:
    """Run ``blocks`` of ``job`` on the cluster of ``client``, in groups of consecutive blocks (a few groups per
    worker, so that each pipeline overlaps reading and writing and the work stays balanced); ``on_written(n)`` as
    each group finishes. Raises the first group's error (the blocks written before it stay marked)."""
    distributed = _need_distributed()
    if not blocks:
        return 0
    workers = max(1, len(client.scheduler_info().get("workers", {})))
    size = max(1, min(16, math.ceil(len(blocks) / (4 * workers))))
    groups = [list(blocks[k : k + size]) for k in range(0, len(blocks), size)]
    futures = [client.submit(_blocks_task, job, g, pure=False) for g in groups]
    done = 0
    try:
        for future in distributed.as_completed(futures):
            n = future.result()
            done += n
            if on_written is not None:
                on_written(n)
    except BaseException:
        client.cancel(futures)
        raise
    return done


def _item_task(spec: dict, *args: Any) -> Any:
    from monai_unet.predict.batch import segment_item

    return segment_item(_runner(spec), *args)


def submit_items(client: Any, spec: dict, items: Sequence[Any], *args: Any) -> list[Any]:
    """One task per input: :func:`~monai_unet.predict.batch.segment_item` on a worker; returns the futures."""
    return [client.submit(_item_task, spec, item, *args, pure=False) for item in items]
