"""The batch of ``monai-unet predict``: the loop over inputs, results, sharding, the summary, signals.

A batch never loses work:

- each input is segmented on its own; a failure (unreadable, truncated, not an image, wrong dimensionality or
  channel count, NaN/inf values, empty series, zero size) is reported with the file and the reason, the other
  inputs still finish, a summary table ends the run and the exit code is 0 only if every input succeeded;
- outputs are written atomically (hidden temporary, then rename), so a kill leaves only complete outputs;
- inputs whose outputs all exist are skipped (``overwrite=True`` redoes them), so re-running resumes;
- ``shard=(i, n)`` (or ``RANK``/``WORLD_SIZE`` from ``torchrun``) splits one batch over processes without
  overlap: input ``k`` of the sorted list belongs to shard ``k % n`` (``monai.data.partition_dataset``).
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import sys
import threading
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from monai_unet.predict.formats import is_large_tiff, predict_2d, predict_volume
from monai_unet.predict.inputs import (
    DEFAULT_LARGE_THRESHOLD,
    InputItem,
    PredictOptions,
    discover_inputs,
    output_paths,
)
from monai_unet.predict.large_image import predict_large_tiff
from monai_unet.predict.runner import BundleRunner

__all__ = ["Result", "predict", "predict_one", "resolve_shard", "shard_items"]


@dataclasses.dataclass
class Result:
    """What happened to one input: ``status`` is ``"done"``, ``"skipped"`` or ``"failed"``."""

    key: str
    status: str
    outputs: list[Path] = dataclasses.field(default_factory=list)
    reason: str = ""
    seconds: float = 0.0
    warnings: list[str] = dataclasses.field(default_factory=list)


def resolve_shard(shard: str | tuple[int, int] | None = None) -> tuple[int, int]:
    """``(index, count)`` from ``"i/n"`` (0 <= i < n), or from ``RANK``/``WORLD_SIZE`` (torchrun), else ``(0, 1)``."""
    if shard is None:
        rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
        if rank is None or world is None:
            return 0, 1
        shard = (int(rank), int(world))
    if isinstance(shard, str):
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", shard)
        if m is None:
            raise ValueError(f"--shard must look like i/n with 0 <= i < n (e.g. 0/4), got {shard!r}.")
        shard = (int(m.group(1)), int(m.group(2)))
    i, n = shard
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"shard index must satisfy 0 <= i < n, got {i}/{n}.")
    return i, n


def shard_items(items: Sequence[InputItem], index: int, count: int) -> list[InputItem]:
    """The items of shard ``index`` of ``count``: every ``count``-th of the sorted list, from ``index``."""
    from monai.data import partition_dataset

    if len(items) < count:  # partition_dataset refuses fewer items than partitions; a shard holds at most one
        return list(items[index : index + 1])
    return list(partition_dataset(list(items), num_partitions=count, shuffle=False, even_divisible=False)[index])


def _first_line(e: BaseException | Warning | str) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def predict_one(
    runner: BundleRunner, item: InputItem, output_dir: Path, options: PredictOptions, large: bool = False
) -> list[Path]:
    """Segment one input and write its outputs atomically; returns the outputs.

    ``large``: a 2D TIFF to segment on the larger-than-RAM path (:func:`is_large_tiff`).

    Raises:
        Exception: anything that goes wrong, with a message naming what is wrong.
    """
    if item.kind == "invalid":
        raise ValueError(item.error)
    if item.path.is_file() and item.path.stat().st_size == 0:
        raise ValueError("empty file (0 bytes).")
    outs = output_paths(item, output_dir, options, large=large)
    if item.kind in ("volume", "dicom"):
        return predict_volume(runner, item, outs, options)
    if large:
        return predict_large_tiff(runner, item, outs[0], options)
    return predict_2d(runner, item, outs, options)


def _table(results: Sequence[Result]) -> str:
    width = min(70, max([len("input")] + [len(r.key) for r in results]))
    lines = [f"{'input':<{width}}  {'status':<7}  {'s':>6}  output / reason"]
    for r in results:
        key = r.key if len(r.key) <= width else "..." + r.key[-(width - 3) :]
        what = r.reason if r.status == "failed" else (str(r.outputs[0]) if r.outputs else "")
        lines.append(f"{key:<{width}}  {r.status:<7}  {r.seconds:6.1f}  {what}")
    counts = {s: sum(r.status == s for r in results) for s in ("done", "skipped", "failed")}
    lines.append(
        f"{len(results)} input(s): {counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed"
    )
    return "\n".join(lines)


def predict(
    bundle: str | os.PathLike,
    inputs: Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    checkpoint: str | os.PathLike | None = None,
    device: str | None = None,
    overwrite: bool = False,
    allow_gaps: bool = False,
    shard: str | tuple[int, int] | None = None,
    probabilities: bool = False,
    dicom_seg: bool = False,
    large_threshold: int = DEFAULT_LARGE_THRESHOLD,
    large_format: str = "ome-tiff",
    large_memory_mb: int = 192,
    progress: bool = True,
    overrides: dict[str, Any] | None = None,
    stream: TextIO | None = None,
    runner: BundleRunner | None = None,
) -> list[Result]:
    """Segment ``inputs`` with ``bundle`` into ``output_dir``; see the module docstring.

    Args:
        bundle: bundle folder or name.
        inputs: files and folders.
        output_dir: where outputs go (relative paths of folder inputs are kept).
        checkpoint: weights (default: the bundle's ``ckpt_path``).
        device: torch device, e.g. ``"cpu"``, ``"cuda:0"``.
        overwrite, allow_gaps, probabilities, dicom_seg, large_threshold, large_format, large_memory_mb,
            progress: the fields of :class:`~monai_unet.predict.inputs.PredictOptions`.
        shard: ``"i/n"`` or ``(i, n)``; default from ``RANK``/``WORLD_SIZE`` or the whole batch.
        overrides: bundle config ids and values.
        stream: where messages and the summary go (default stdout).
        runner: a ready :class:`~monai_unet.predict.runner.BundleRunner` to reuse (then ``bundle``,
            ``checkpoint``, ``device`` and ``overrides`` are not read again).

    Returns:
        one :class:`Result` per input of this shard, in order.
    """
    from tqdm.auto import tqdm

    from monai_unet.io.atomic import clean_stale_temporaries

    options = PredictOptions(
        probabilities=probabilities,
        dicom_seg=dicom_seg,
        large_threshold=int(large_threshold),
        large_format=large_format,
        large_memory_mb=int(large_memory_mb),
        progress=progress,
        overwrite=overwrite,
        allow_gaps=allow_gaps,
    )
    stream = stream or sys.stdout
    output_dir = Path(output_dir).absolute()
    index, count = resolve_shard(shard)
    items = shard_items(discover_inputs(inputs, exclude=output_dir), index, count)
    output_dir.mkdir(parents=True, exist_ok=True)
    for p in clean_stale_temporaries(output_dir):
        print(f"removed the temporary {p} of an interrupted run", file=stream)
    if runner is None:
        runner = BundleRunner(bundle, checkpoint=checkpoint, device=device, overrides=overrides)
    shard_note = f" (shard {index}/{count})" if count > 1 else ""
    print(f"segmenting {len(items)} input(s){shard_note} with {runner.bundle.name} into {output_dir}", file=stream)

    previous = None
    if threading.current_thread() is threading.main_thread():  # only it may install signal handlers
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    results: list[Result] = []
    bar = tqdm(items, desc="inputs", unit="input", disable=not progress, file=sys.stderr)
    try:
        for item in bar:
            t0 = time.perf_counter()
            try:
                large = item.kind == "tiff" and is_large_tiff(item.path, options.large_threshold)
                outs = output_paths(item, output_dir, options, large=large)
                if item.kind != "invalid" and not overwrite and all(p.exists() for p in outs):
                    results.append(Result(item.key, "skipped", outs))
                    continue
                with warnings.catch_warnings(record=True) as caught:  # each warning names its input
                    try:
                        outs = predict_one(runner, item, output_dir, options, large=large)
                        result = Result(item.key, "done", outs, seconds=time.perf_counter() - t0)
                    except Exception as e:
                        reason = _first_line(e)
                        result = Result(item.key, "failed", reason=reason, seconds=time.perf_counter() - t0)
                result.warnings = list(dict.fromkeys(_first_line(w.message) for w in caught))
                for text in result.warnings:
                    tqdm.write(f"WARNING {item.key}: {text}", file=sys.stderr)
                if result.status == "failed":
                    tqdm.write(f"FAILED {item.key}: {result.reason}", file=sys.stderr)
                results.append(result)
            except Exception as e:
                reason = _first_line(e)
                results.append(Result(item.key, "failed", reason=reason, seconds=time.perf_counter() - t0))
                tqdm.write(f"FAILED {item.key}: {reason}", file=sys.stderr)
    except KeyboardInterrupt:
        print(_table(results), file=stream)
        print("interrupted: finished outputs are kept; run the same command to resume.", file=stream, flush=True)
        raise
    finally:
        bar.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    print(_table(results), file=stream, flush=True)
    return results


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
