"""``monai-unet predict``: segment folders of DICOM series, NIfTI/NRRD/MHA volumes and 2D PNG/TIFF images.

A batch never loses work:

- each input is segmented on its own; a failure (unreadable, truncated, not an image, wrong dimensionality or
  channel count, NaN/inf values, empty series, zero size) is reported with the file and the reason, the other
  inputs still finish, a summary table ends the run and the exit code is 0 only if every input succeeded;
- outputs are written atomically (hidden temporary, then rename), so a kill leaves only complete outputs;
- inputs whose outputs all exist are skipped (``overwrite=True`` redoes them), so re-running resumes;
- ``shard=(i, n)`` (or ``RANK``/``WORLD_SIZE`` from ``torchrun``) splits one batch over processes without
  overlap: input ``k`` of the sorted list belongs to shard ``k % n``.

Inputs are discovered in :func:`discover_inputs`; one input is run by :func:`predict_one` through a
:class:`~monai_unet.predict_runner.BundleRunner` (the bundle's own ``inference.json``).
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["InputItem", "Result", "discover_inputs", "predict", "predict_one", "resolve_shard", "shard_items"]

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
IMAGE_SUFFIXES = (".png", ".tif", ".tiff")
DEFAULT_LARGE_THRESHOLD = 4096 * 4096


@dataclasses.dataclass
class InputItem:
    """One volume or image to segment.

    Attributes:
        key: what the summary calls it (the path, plus ``#series`` for one series of a multi-series folder).
        kind: ``"volume"``, ``"dicom"``, ``"png"``, ``"tiff"``, or ``"invalid"`` (found broken at discovery).
        path: the file, or the DICOM folder.
        rel: output path relative to the output folder, without the ``_seg`` suffix and extension.
        series: the DICOM series identifier (ITK's), when the folder holds several.
        error: why an ``"invalid"`` item cannot be segmented.
    """

    key: str
    kind: str
    path: Path
    rel: Path
    series: str | None = None
    error: str | None = None


@dataclasses.dataclass
class Result:
    """What happened to one input: ``status`` is ``"done"``, ``"skipped"`` or ``"failed"``."""

    key: str
    status: str
    outputs: list[Path] = dataclasses.field(default_factory=list)
    reason: str = ""
    seconds: float = 0.0


def _suffix(path: Path, suffixes: Sequence[str]) -> str | None:
    name = path.name.lower()
    return next((s for s in suffixes if name.endswith(s)), None)


def _strip(path: Path) -> Path:
    s = _suffix(path, VOLUME_SUFFIXES + IMAGE_SUFFIXES + (".dcm",))
    return path.with_name(path.name[: -len(s)] if s else path.stem)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "series"


def _file_item(path: Path, rel: Path) -> InputItem:
    if _suffix(path, VOLUME_SUFFIXES):
        return InputItem(str(path), "volume", path, _strip(rel))
    s = _suffix(path, IMAGE_SUFFIXES)
    if s:
        return InputItem(str(path), "png" if s == ".png" else "tiff", path, _strip(rel))
    from monai_unet.io.dicom import looks_like_dicom

    why = (
        "is a single DICOM file: give the folder holding its series"
        if looks_like_dicom(path)
        else "is not a supported input (NIfTI, NRRD, MHA/MHD, DICOM series folder, PNG, TIFF)"
    )
    return InputItem(str(path), "invalid", path, _strip(rel), error=f"{path.name} {why}.")


def _dicom_items(folder: Path, files: list[Path], root: Path) -> list[InputItem]:
    from monai_unet.io.dicom import find_dicom_series

    rel = folder.relative_to(root) if folder != root else Path(root.name)
    try:
        series = find_dicom_series(folder)
    except Exception as e:  # GDCM errors on unreadable folders
        series, err = [], str(e).splitlines()[0]
    else:
        err = ""
    if not series:
        return [
            InputItem(
                str(folder),
                "invalid",
                folder,
                rel,
                error=f"no readable DICOM series among {len(files)} DICOM-looking file(s) (corrupt?) {err}".strip(),
            )
        ]
    if len(series) == 1:
        return [InputItem(str(folder), "dicom", folder, rel, series=series[0].uid)]
    return [InputItem(f"{folder}#{s.uid}", "dicom", folder, rel / _safe(s.uid[-40:]), series=s.uid) for s in series]


def discover_inputs(paths: Sequence[str | os.PathLike], exclude: str | os.PathLike | None = None) -> list[InputItem]:
    """Expand files and folders into the inputs to segment, sorted by key and without duplicates.

    Files with a known suffix are inputs; in folders (walked recursively) other files that look like DICOM
    (``.dcm`` or the ``DICM`` preamble) are grouped into series per folder, one input per series. A path that
    does not exist, a folder with nothing to segment, and a DICOM folder without a readable series become
    ``"invalid"`` items, so they show in the summary. Folders under ``exclude`` (the output folder, when it lies
    inside an input folder) are not searched, so earlier outputs never become inputs.
    """
    from monai_unet.io.dicom import looks_like_dicom

    items: dict[str, InputItem] = {}
    skip = None if exclude is None else Path(exclude).expanduser().absolute()
    for p in paths:
        path = Path(p).expanduser().absolute()
        if path.is_file():
            item = _file_item(path, Path(path.name))
            items.setdefault(item.key, item)
            continue
        if not path.is_dir():
            items[str(path)] = InputItem(str(path), "invalid", path, Path(path.name), error=f"{path} does not exist.")
            continue
        found = 0
        for folder, dirs, files in os.walk(path):
            folder = Path(folder)
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (exclude is None or folder / d != skip))
            dicom = []
            for name in sorted(files):
                f = folder / name
                if name.startswith("."):
                    continue
                if _suffix(f, VOLUME_SUFFIXES + IMAGE_SUFFIXES):
                    item = _file_item(f, f.relative_to(path))
                    items.setdefault(item.key, item)
                    found += 1
                elif looks_like_dicom(f):
                    dicom.append(f)
            if dicom:
                for item in _dicom_items(folder, dicom, path):
                    items.setdefault(item.key, item)
                    found += 1
        if not found:
            items[str(path)] = InputItem(
                str(path), "invalid", path, Path(path.name), error=f"folder {path} holds no image or DICOM series."
            )
    ordered = [items[k] for k in sorted(items)]
    groups: dict[Path, list[InputItem]] = {}
    for item in ordered:
        groups.setdefault(item.rel, []).append(item)
    for same in groups.values():  # a.png and a.tif, a.nii and a.nii.gz: tell their outputs apart by format
        if len(same) > 1:
            for item in same:
                tag = (_suffix(item.path, VOLUME_SUFFIXES + IMAGE_SUFFIXES) or "").replace(".", "")
                if tag:
                    item.rel = item.rel.with_name(f"{item.rel.name}_{tag}")
    owner: dict[Path, str] = {}
    for item in ordered:  # still the same name: the later one fails rather than overwrite
        first = owner.setdefault(item.rel, item.key)
        if first != item.key and item.kind != "invalid":
            item.kind, item.error = "invalid", f"its outputs would overwrite those of {first}; segment it separately."
    return ordered


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
    return [it for k, it in enumerate(items) if k % count == index]


def output_paths(item: InputItem, output_dir: Path, options: dict[str, Any]) -> list[Path]:
    """Every output ``item`` will have: the label map first, then probabilities and DICOM-SEG when asked."""
    base = output_dir / item.rel
    stem = base.name
    if item.kind in ("volume", "dicom"):
        outs = [base.with_name(f"{stem}_seg.nii.gz")]
        if options.get("probabilities"):
            outs.append(base.with_name(f"{stem}_probs.nii.gz"))
        if options.get("dicom_seg") and item.kind == "dicom":
            outs.append(base.with_name(f"{stem}_seg.dcm"))
        return outs
    if item.kind == "png":
        outs = [base.with_name(f"{stem}_seg.png")]
    elif item.kind == "tiff" and options.get("large"):
        ext = ".zarr" if options.get("large_format") == "zarr" else ".ome.tif"
        return [base.with_name(f"{stem}_seg{ext}")]
    else:
        outs = [base.with_name(f"{stem}_seg.tif")]
    if options.get("probabilities"):
        outs.append(base.with_name(f"{stem}_probs.tif"))
    return outs


def _first_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def predict_one(runner: Any, item: InputItem, output_dir: Path, options: dict[str, Any]) -> list[Path]:
    """Segment one input and write its outputs atomically; returns the outputs.

    Raises:
        Exception: anything that goes wrong, with a message naming what is wrong.
    """
    from monai_unet import predict_formats

    if item.kind == "invalid":
        raise ValueError(item.error)
    if item.path.is_file() and item.path.stat().st_size == 0:
        raise ValueError("empty file (0 bytes).")
    if item.kind in ("volume", "dicom"):
        return predict_formats.predict_volume(runner, item, output_dir, options)
    return predict_formats.predict_2d(runner, item, output_dir, options)


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
    shard: str | tuple[int, int] | None = None,
    probabilities: bool = False,
    dicom_seg: bool = False,
    large_threshold: int = DEFAULT_LARGE_THRESHOLD,
    large_format: str = "ome-tiff",
    large_memory_mb: int = 192,
    progress: bool = True,
    overrides: dict[str, Any] | None = None,
    stream: Any = None,
    runner: Any = None,
) -> list[Result]:
    """Segment ``inputs`` with ``bundle`` into ``output_dir``; see the module docstring.

    Args:
        bundle: bundle folder or name.
        inputs: files and folders.
        output_dir: where outputs go (relative paths of folder inputs are kept).
        checkpoint: weights (default: the bundle's ``ckpt_path``).
        device: torch device, e.g. ``"cpu"``, ``"cuda:0"``.
        overwrite: redo inputs whose outputs exist.
        shard: ``"i/n"`` or ``(i, n)``; default from ``RANK``/``WORLD_SIZE`` or the whole batch.
        probabilities: also write class probabilities (``*_probs.nii.gz`` / ``*_probs.tif``).
        dicom_seg: also write a DICOM-SEG (``*_seg.dcm``) for DICOM inputs (needs highdicom).
        large_threshold: 2D TIFFs with more pixels than this are read and written tile by tile.
        large_format: output of the large path, ``"ome-tiff"`` or ``"zarr"``.
        large_memory_mb: on the large path, tiles are capped so that their activations fit this many MiB
            (``0``: the bundle's tile size); this bounds peak memory whatever the image size.
        progress: progress bars over inputs and tiles of large images.
        overrides: bundle config ids and values.
        stream: where messages and the summary go (default stdout).
        runner: a ready :class:`~monai_unet.predict_runner.BundleRunner` to reuse (then ``bundle``,
            ``checkpoint``, ``device`` and ``overrides`` are not read again).

    Returns:
        one :class:`Result` per input of this shard, in order.
    """
    from tqdm.auto import tqdm

    from monai_unet import predict_formats
    from monai_unet.io.atomic import clean_stale_temporaries
    from monai_unet.predict_runner import BundleRunner

    if large_format not in ("ome-tiff", "zarr"):
        raise ValueError(f"large_format must be 'ome-tiff' or 'zarr', got {large_format!r}.")
    stream = stream or sys.stdout
    output_dir = Path(output_dir).absolute()
    index, count = resolve_shard(shard)
    items = shard_items(discover_inputs(inputs, exclude=output_dir), index, count)
    output_dir.mkdir(parents=True, exist_ok=True)
    for p in clean_stale_temporaries(output_dir):
        print(f"removed the temporary {p} of an interrupted run", file=stream)
    options = {
        "probabilities": probabilities,
        "dicom_seg": dicom_seg,
        "large_threshold": int(large_threshold),
        "large_format": large_format,
        "large_memory_mb": int(large_memory_mb),
        "progress": progress,
        "overwrite": overwrite,
    }
    if runner is None:
        runner = BundleRunner(bundle, checkpoint=checkpoint, device=device, overrides=overrides)
    shard_note = f" (shard {index}/{count})" if count > 1 else ""
    print(f"segmenting {len(items)} input(s){shard_note} with {runner.bundle.name} into {output_dir}", file=stream)

    previous = None
    if _in_main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    results: list[Result] = []
    bar = tqdm(items, desc="inputs", unit="input", disable=not progress, file=sys.stderr)
    try:
        for item in bar:
            t0 = time.perf_counter()
            try:
                large = item.kind == "tiff" and predict_formats.is_large_tiff(item.path, large_threshold)
                opts = dict(options, large=large)
                outs = output_paths(item, output_dir, opts)
                if item.kind != "invalid" and not overwrite and all(p.exists() for p in outs):
                    results.append(Result(item.key, "skipped", outs))
                    continue
                outs = predict_one(runner, item, output_dir, opts)
                results.append(Result(item.key, "done", outs, seconds=time.perf_counter() - t0))
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


def _in_main_thread() -> bool:
    """Whether this is the main thread (only it may install signal handlers)."""
    import threading

    return threading.current_thread() is threading.main_thread()


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
