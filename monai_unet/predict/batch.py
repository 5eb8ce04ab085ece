"""The batch of ``monai-unet predict``: the loop over inputs, results, sharding, the summary, signals.

A batch never loses work:

- each input is segmented on its own; a failure (unreadable, truncated, not an image, wrong dimensionality or
  channel count, NaN/inf values, empty series, zero size) is reported with the file and the reason, the other
  inputs still finish, a summary table ends the run and the exit code is 0 only if every input succeeded;
- outputs are written atomically (hidden temporary, then rename), so a kill leaves only complete outputs;
- inputs whose outputs all exist are skipped (``overwrite=True`` redoes them), so re-running resumes;
- an input is claimed with a lock file beside its output while it is segmented, so two runs on the same inputs
  and output folder (two terminals, two cluster jobs) share the work; a dead process's lock is taken over;
- ``shard=(i, n)`` (or ``RANK``/``WORLD_SIZE`` from ``torchrun``) splits one batch over processes without
  overlap: input ``k`` of the sorted list belongs to shard ``k % n`` (``monai.data.partition_dataset``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from monai_unet.io.dicomweb import is_dicomweb_url
from monai_unet.predict.dicomweb import DicomWebOptions, Fetched, display_key, fetch_studies, store_outputs
from monai_unet.predict.formats import finished_parts, is_large_tiff, predict_2d, predict_volume
from monai_unet.predict.inputs import (
    DEFAULT_LARGE_THRESHOLD,
    InputItem,
    PredictOptions,
    discover_inputs,
    output_paths,
)
from monai_unet.predict.large_image import predict_large_image
from monai_unet.predict.runner import BundleRunner

__all__ = ["Result", "Terminated", "predict", "predict_one", "resolve_shard", "shard_items"]


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
        if not (rank.strip().isdigit() and world.strip().isdigit()):
            raise ValueError(
                f"RANK={rank!r} and WORLD_SIZE={world!r} must be whole numbers (torchrun sets them); unset them or "
                "pass --shard i/n."
            )
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
    """One line for the summary: the message, or for a MONAI transform's failure its cause and the transform."""
    text = " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, BaseException) and text.startswith("applying transform"):
        root = e
        while root.__cause__ is not None:
            root = root.__cause__
        step = re.search(r"<monai\.transforms\.[\w.]*?(\w+) object", text)
        cause = " ".join(str(root).split()) or type(root).__name__
        text = f"{cause} (in the bundle's {step.group(1) if step else 'transform'} step)"
    return text if len(text) <= 300 else text[:297] + "..."


def check_output_dir(output_dir: Path) -> None:
    """Raise ``ValueError`` before any work when ``output_dir`` is a file or cannot be created."""
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"--output {output_dir} is a file, not a folder: give a folder for the outputs.")
    parent = output_dir
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"cannot create the output folder {output_dir}: {parent} is a file.")


def prepare_output_dir(output_dir: Path) -> None:
    """Create ``output_dir`` and prove it writable (a probe file made and removed), or raise ``ValueError``
    naming the folder; a folder created here and found unusable is removed again."""
    import tempfile

    missing = [p for p in (output_dir, *output_dir.parents) if not p.exists()]
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output_dir, prefix=".monai_unet_probe_"):
            pass
    except OSError as e:
        for p in missing:  # deepest first
            with contextlib.suppress(OSError):
                p.rmdir()
        raise ValueError(
            f"cannot write to the output folder {output_dir}: {e.strerror or e}; give a folder you can write to."
        ) from e


def predict_one(
    runner: BundleRunner,
    item: InputItem,
    outs: list[Path],
    options: PredictOptions,
    large: bool = False,
    client: Any = None,
) -> list[Path]:
    """Segment one input and write its outputs ``outs`` (from :func:`output_paths`) atomically; returns what
    was written.

    ``large``: a 2D image to segment on the larger-than-RAM path (:func:`is_large`); ``client``: a Dask client
    to run its blocks on.

    Raises:
        Exception: anything that goes wrong, with a message naming what is wrong.
    """
    if item.kind == "invalid":
        raise ValueError(item.error)
    if item.path.is_file() and item.path.stat().st_size == 0:
        raise ValueError("empty file (0 bytes).")
    if item.kind in ("volume", "dicom"):
        return predict_volume(runner, item, outs, options)
    if large or item.kind == "ome-zarr":
        return predict_large_image(runner, item, outs[0], options, client=client)
    return predict_2d(runner, item, outs, options)


def is_large(item: InputItem, options: PredictOptions) -> bool:
    """Whether ``item`` takes the larger-than-RAM path: an OME-Zarr image, or a TIFF above the size threshold."""
    return item.kind == "ome-zarr" or (item.kind == "tiff" and is_large_tiff(item.path, options.large_threshold))


def _is_large_safe(item: InputItem, options: PredictOptions) -> bool:
    try:
        return is_large(item, options)
    except Exception:
        return False


def segment_item(
    runner: BundleRunner,
    item: InputItem,
    output_dir: Path,
    options: PredictOptions,
    client: Any = None,
    after: Callable[[Path, list[Path]], str | None] | None = None,
) -> Result:
    """Segment one valid input as the batch does: skipped when its outputs exist (unless ``options.overwrite``) or
    another run holds its claim, else segmented under the claim with its warnings recorded. ``after(path, outputs)``
    runs under the claim when it is done and may return why it failed (DICOMweb: the server refused the SEG).
    ``client``: a Dask client for the blocks of a large image. Never raises an ``Exception``: a failure is a
    ``"failed"`` result naming the reason."""
    from monai_unet.io.atomic import claim

    t0 = time.perf_counter()
    try:
        large = is_large(item, options)
        outs = output_paths(item, output_dir, options, large=large)
        if not options.overwrite and all(p.exists() for p in outs):
            return Result(item.key, "skipped", outs)
        parts = finished_parts(outs) if item.kind == "dicom" and options.allow_gaps else None
        if not options.overwrite and parts:
            return Result(item.key, "skipped", parts)
        with claim(outs[0]) as holder, warnings.catch_warnings(record=True) as caught:
            if holder is not None:  # another run (terminal, cluster job) is on it
                return Result(item.key, "skipped", outs, reason=f"being segmented by {holder}")
            if not options.overwrite and all(p.exists() for p in outs):
                return Result(item.key, "skipped", outs)  # finished by it meanwhile
            try:  # each warning names its input
                outs = predict_one(runner, item, outs, options, large=large, client=client)
                result = Result(item.key, "done", outs, seconds=time.perf_counter() - t0)
                why = after(item.path, outs) if after is not None else None
                if why:  # the outputs are kept here; the server does not have them
                    result = Result(item.key, "failed", outs, reason=why, seconds=result.seconds)
            except Exception as e:
                result = Result(item.key, "failed", reason=_first_line(e), seconds=time.perf_counter() - t0)
        result.warnings = list(dict.fromkeys(_first_line(w.message) for w in caught))
        return result
    except Exception as e:
        return Result(item.key, "failed", reason=_first_line(e), seconds=time.perf_counter() - t0)


def _table(results: Sequence[Result]) -> str:
    width = min(70, max([len("input")] + [len(r.key) for r in results]))
    lines = [f"{'input':<{width}}  {'status':<7}  {'s':>6}  output / reason"]
    for r in results:
        key = r.key if len(r.key) <= width else "..." + r.key[-(width - 3) :]
        what = r.reason if r.status == "failed" or r.reason else (str(r.outputs[0]) if r.outputs else "")
        lines.append(f"{key:<{width}}  {r.status:<7}  {r.seconds:6.1f}  {what}")
    counts = {s: sum(r.status == s for r in results) for s in ("done", "skipped", "failed", "not started")}
    summary = f"{len(results)} input(s): {counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed"
    if counts["not started"]:
        summary += f", {counts['not started']} not started"
    lines.append(summary)
    return "\n".join(lines)


def predict(
    bundle: str | os.PathLike,
    inputs: Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    checkpoint: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    device: str | None = None,
    overwrite: bool = False,
    allow_gaps: bool = False,
    naming: str = "path",
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
    channels: Mapping[str, Any] | None = None,
    configs: Sequence[str | os.PathLike] = (),
    tta: bool = False,
    precision: str | None = None,
    dicomweb: DicomWebOptions | None = None,
    dask: str | None = None,
) -> list[Result]:
    """Segment ``inputs`` with ``bundle`` into ``output_dir``; see the module docstring.

    Args:
        bundle: bundle folder or name.
        inputs: files and folders.
        output_dir: where outputs go (relative paths of folder inputs are kept).
        checkpoint: weights (default: the bundle's ``ckpt_path``); several: an ensemble (probabilities averaged).
        device: torch device, e.g. ``"cpu"``, ``"cuda:0"``.
        overwrite, allow_gaps, probabilities, dicom_seg, large_threshold, large_format, large_memory_mb,
            progress: the fields of :class:`~monai_unet.predict.inputs.PredictOptions`.
        naming: ``"path"`` (outputs named after the inputs' paths below their common root) or ``"dicom"``
            (DICOM series as ``PatientID/StudyDate/<SeriesNumber>_<SeriesDescription>``); see
            :func:`~monai_unet.predict.inputs.discover_inputs`.
        shard: ``"i/n"`` or ``(i, n)``; default from ``RANK``/``WORLD_SIZE`` or the whole batch.
        overrides: bundle config ids and values.
        stream: where messages and the summary go (default stdout).
        runner: a ready :class:`~monai_unet.predict.runner.BundleRunner` to reuse (then ``bundle``,
            ``checkpoint``, ``device`` and ``overrides`` are not read again).
        configs: config overlays merged over the bundle's inference.json (a plan, ``isbi2012.json``...).
        tta, precision: flip test-time augmentation and the network's number format (see
            :class:`~monai_unet.predict.runner.BundleRunner`).
        dicomweb: the selection, credentials and ``store_to`` for inputs that are DICOMweb servers
            (``dicomweb+http://HOST:8042/dicom-web``; see :mod:`monai_unet.predict.dicomweb`).
        dask: run on a Dask cluster: a scheduler address (``tcp://host:8786``) or ``local`` / ``local:N`` (a local
            cluster of N worker processes): inputs spread over its workers, and the blocks of each large image too
            (:mod:`~monai_unet.predict.distributed`; needs ``monai-unet[dask]``).
        channels: the input channels' patterns, ``{name: pattern(s)}`` (default: the bundle's ``channels``); with
            more than one, a DICOM study or an nnU-Net case is one input (see
            :func:`~monai_unet.predict.inputs.group_channels`).

    Returns:
        one :class:`Result` per input of this shard, in order.
    """

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
    check_output_dir(output_dir)
    index, count = resolve_shard(shard)
    if runner is None:
        runner = BundleRunner(
            bundle,
            checkpoint=checkpoint,
            device=device,
            overrides=overrides,
            tta=tta,
            precision=precision,
            overlays=configs,
        )
    patterns = channels if channels is not None else runner.channels
    scratch = contextlib.ExitStack()
    fetched = None
    urls = [str(i) for i in inputs if is_dicomweb_url(i)]
    if urls:
        dicomweb = dicomweb or DicomWebOptions()
        if dicomweb.store_to and not dicom_seg:
            raise ValueError("--store-to sends DICOM-SEGs back: add --dicom-seg.")
        import tempfile

        folder = Path(scratch.enter_context(tempfile.TemporaryDirectory(prefix="monai_unet_dicomweb_")))
        whole = bool(patterns) and len(patterns) > 1
        fetched = fetch_studies(urls, dicomweb, folder, whole_studies=whole, stream=stream)
        inputs = [str(i) for i in inputs if not is_dicomweb_url(i)] + fetched.inputs
    with scratch:
        if dask:
            from monai_unet.predict.distributed import connect

            client = scratch.enter_context(connect(dask))
            print(f"on the Dask cluster {client.scheduler.address}", file=stream)
        else:
            client = None
        return _predict_items(
            runner, inputs, output_dir, naming, patterns, index, count, options, progress, stream, fetched, client
        )


def _predict_items(
    runner: BundleRunner,
    inputs: Sequence[str | os.PathLike],
    output_dir: Path,
    naming: str,
    patterns: Mapping[str, Any] | None,
    index: int,
    count: int,
    options: PredictOptions,
    progress: bool,
    stream: TextIO,
    fetched: Fetched | None,
    client: Any = None,
) -> list[Result]:
    """The batch loop of :func:`predict` over local inputs (DICOMweb studies already retrieved into ``fetched``);
    with a Dask ``client``, inputs other than large images are segmented on its workers, the blocks of large images
    too."""
    from tqdm.auto import tqdm

    from monai_unet.io.atomic import clean_stale_temporaries

    items = shard_items(discover_inputs(inputs, exclude=output_dir, naming=naming, channels=patterns), index, count)
    if fetched is not None:  # retrieved studies are named by their server and UID, not the scratch folder
        items = [dataclasses.replace(i, key=display_key(fetched, i.key, i.path)) for i in items]
    prepare_output_dir(output_dir)
    for p in clean_stale_temporaries(output_dir):
        print(f"removed the temporary {p} of an interrupted run", file=stream)
    shard_note = f" (shard {index}/{count})" if count > 1 else ""
    print(f"segmenting {len(items)} input(s){shard_note} with {runner.bundle.name} into {output_dir}", file=stream)

    previous = None
    if threading.current_thread() is threading.main_thread():  # only it may install signal handlers
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    results: list[Result] = []
    if fetched is not None:  # studies a server could not give, or holds the segmentations of already
        results += [Result(key, "failed", reason=_first_line(why)) for key, why in fetched.failed]
        results += [Result(key, "skipped", reason=why) for key, why in fetched.skipped]
        for r in results:
            if r.status == "failed":
                tqdm.write(f"FAILED {r.key}: {r.reason}", file=sys.stderr)
    pending: dict[str, Any] = {}
    if client is not None:  # inputs other than large images: one task each on the cluster, collected in order
        from monai_unet.predict.distributed import prepare_workers, submit_items

        prepare_workers(client, runner.spec)
        spread = [i for i in items if i.kind != "invalid" and not _is_large_safe(i, options)]
        pending = dict(zip((i.key for i in spread), submit_items(client, runner.spec, spread, output_dir, options)))
    bar = tqdm(items, desc="inputs", unit="input", disable=not progress, file=sys.stderr)
    try:
        for item in bar:
            if item.kind == "invalid":
                results.append(Result(item.key, "failed", reason=_first_line(item.error or "invalid input")))
                tqdm.write(f"FAILED {item.key}: {results[-1].reason}", file=sys.stderr)
                continue
            after = None if fetched is None else (lambda path, outs: store_outputs(fetched, path, outs))
            if item.key in pending:
                try:
                    result = pending.pop(item.key).result()
                except Exception as e:  # the worker died or could not build the runner
                    result = Result(item.key, "failed", reason=_first_line(e))
                why = after(item.path, result.outputs) if after is not None and result.status == "done" else None
                if why:  # the outputs are kept here; the server does not have them
                    result = Result(item.key, "failed", result.outputs, reason=why, seconds=result.seconds)
            else:
                result = segment_item(runner, item, output_dir, options, client=client, after=after)
            for text in result.warnings:
                tqdm.write(f"WARNING {item.key}: {text}", file=sys.stderr)
            if result.status == "failed":
                tqdm.write(f"FAILED {item.key}: {result.reason}", file=sys.stderr)
            results.append(result)
    except KeyboardInterrupt:
        started = {r.key for r in results}
        results += [Result(it.key, "not started") for it in items if it.key not in started]
        print(_table(results), file=stream)
        print("interrupted: finished outputs are kept; run the same command to resume.", file=stream, flush=True)
        raise
    finally:
        bar.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    print(_table(results), file=stream, flush=True)
    return results


class Terminated(KeyboardInterrupt):
    """The batch was ended by a signal (SIGTERM): ``signum`` tells which; the CLI exits ``128 + signum``."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise Terminated(signum)
