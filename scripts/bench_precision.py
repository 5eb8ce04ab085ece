"""Issue #18: mixed-precision (and INT8) inference of a trained bundle, measured against what it changes.

For one bundle and its trained weights (plus the config overlays it was trained with, as ``monai-unet predict
--config`` takes them), segments the given inputs with each precision in turn, through ``monai-unet predict``'s own
code (:class:`~monai_unet.predict.BundleRunner`, :func:`~monai_unet.predict.predict`), and reports per precision:

- the speed of the inferer alone (network and stitching; loading, pre- and post-processing excluded): per input
  the median of ``--repeats`` timed calls after ``--warmup`` untimed ones, pooled over ``--rounds`` rounds in which
  the precisions run in turn; output megapixels per second as B1/B2 of BENCHMARKS.md count them (the output's
  spatial size, on the grid the network sees) and the speed-up over fp32;
- the share of output labels (on the input's own grid, as written) that differ from an fp32 reference run;
- the task metric: 2D (ISBI 2012 sections, default the held-out 16-19) pixel error and Rand error as
  ``scripts/eval_isbi.py`` scores them (membrane Dice beside them); 3D (DICOM study folders with a MaskTumor series)
  tumour Dice on the study's own grid as ``scripts/eval_brain_dicom.py`` scores it;
- whether it meets the goal (:data:`monai_unet.inferers.precision.GOAL`: >= 1.8x fp32, < 0.1% labels changed, the
  metrics unchanged to the third decimal), and the README's one-sentence recommendation computed from the numbers.

``--int8`` adds post-training static quantisation through ONNX Runtime (:mod:`monai_unet.inferers.quantize`),
calibrated on tiles of the bundle's own preprocessing of the training images (2D: sections 00-15; 3D:
``--calibration-inputs``). ``--write-check FILE`` records the measurement as a ``precision_check`` entry for this
device family in the JSON config overlay FILE (created, or merged into: e.g. the overlay the model is used with),
which is what lets ``--precision auto`` pick a narrow type (:func:`~monai_unet.inferers.precision.resolve_precision`).

Usage:
    python scripts/bench_precision.py --checkpoint runs/isbi2012/models/model_final.pt --int8 \\
        --write-check runs/isbi2012/precision_check.json
    python scripts/bench_precision.py --bundle unet3d_volume --checkpoint W.pt --config OVERLAY.json \\
        --inputs STUDY1 STUDY2 --calibration-inputs STUDY3 STUDY4 --int8

Writes ``<out-dir>/results.json`` and prints a markdown table and a summary line.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import io
import json
import math
import platform
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the eval scripts' loaders and scorers

import eval_brain_dicom  # noqa: E402
import eval_isbi  # noqa: E402

from monai_unet.inferers.precision import GOAL, cpu_computes_bf16, cpu_model, device_family  # noqa: E402

AUTOCAST = ("fp32", "bf16", "fp16")
METRICS = {2: ("pixel_error", "rand_error"), 3: ("dice",)}  # the task metrics the goal holds unchanged
REPORTED = {2: ("pixel_error", "rand_error", "dice"), 3: ("dice",)}


class TimedInferer:
    """The bundle's inferer, called ``warmup + repeats`` times per image and timed; returns the last output.

    Args:
        inferer: the inferer to run (a copy of the bundle's, with its ``precision`` set).
        device: where the network runs (CUDA is synchronised around each timed call).
        network: a network to use instead of the one the caller passes (the int8 ONNX model, a tile recorder).
        warmup, repeats: untimed and timed calls per image.

    ``calls`` holds, per image, ``{"pixels": output pixels, "seconds": [one per timed call]}``. Other attributes
    (``tta``, ``precision``, ``tile_size``) are the wrapped inferer's.
    """

    def __init__(
        self, inferer: Any, device: torch.device, network: Any = None, warmup: int = 1, repeats: int = 3
    ) -> None:
        self.inferer = inferer
        self.device = device
        self.network = network
        self.warmup = warmup
        self.repeats = max(1, repeats)
        self.calls: list[dict[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        if name == "inferer":  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.inferer, name)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __call__(self, x: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> Any:
        net = self.network if self.network is not None else network
        for _ in range(self.warmup):
            self.inferer(x, net, *args, **kwargs)
        seconds = []
        y = None
        for _ in range(self.repeats):
            self._sync()
            start = time.perf_counter()
            y = self.inferer(x, net, *args, **kwargs)
            self._sync()
            seconds.append(time.perf_counter() - start)
        self.calls.append({"pixels": int(x.shape[0]) * math.prod(int(s) for s in x.shape[2:]), "seconds": seconds})
        return y


# ------------------------------------------------------------------------------------------------------ inputs


def isbi_inputs(data: Path, sections: Sequence[int]) -> list[Path]:
    """The image files of ISBI 2012 ``sections`` in ``data/images``."""
    out = []
    for index in sections:
        matches = sorted((data / "images").glob(f"*_{index:02d}.*"))
        if not matches:
            raise SystemExit(
                f"no section {index:02d} in {data / 'images'} (expected a file like train_{index:02d}.png)"
            )
        out.append(matches[0])
    return out


def study_inputs(studies: Sequence[Path], channels: Mapping[str, Any] | None) -> list[Path]:
    """3D inputs: a study folder as it is for a bundle with several channels (``predict`` picks the series); for one
    channel, the study's series folder that matches the channel's pattern (the study's other series, its MaskTumor
    included, would each be an input)."""
    from fnmatch import fnmatch

    if channels is not None and len(channels) > 1:
        return [Path(s) for s in studies]
    value = next(iter((channels or {"image": "*"}).values()))
    patterns = [q for v in ([value] if isinstance(value, str) else value) for q in str(v).split("|")]
    out = []
    for study in studies:
        series = sorted(d for d in Path(study).iterdir() if d.is_dir() and any(fnmatch(d.name, q) for q in patterns))
        if len(series) != 1:
            raise SystemExit(f"{study}: {len(series)} series folders match the bundle's channel {patterns}; need one.")
        out.append(series[0])
    return out


def segment(runner: Any, inferer: TimedInferer, inputs: Sequence[Path], out_dir: Path) -> list[Path]:
    """``monai-unet predict``'s code on each input in turn with ``inferer`` in the runner; the label files written,
    one per input, in the order of ``inputs`` (and of ``inferer.calls``)."""
    from monai_unet.predict import predict

    runner.inferer = inferer
    written = []
    for k, source in enumerate(inputs):
        results = predict(
            runner.bundle,
            [str(source)],
            out_dir / f"{k:03d}",
            runner=runner,
            overwrite=True,
            progress=False,
            stream=io.StringIO(),
            large_threshold=2**62,  # in memory, through the inferer (the large-image path bypasses it)
        )
        failed = [f"{r.key}: {r.reason}" for r in results if r.status != "done"]
        if failed or len(results) != 1:
            raise SystemExit(f"segmenting {source} failed: " + ("; ".join(failed) or f"{len(results)} results"))
        written.append(results[0].outputs[0])
    return written


def read_labels(dims: int, paths: Sequence[Path]) -> list[np.ndarray]:
    """The written label maps: 2D as the image file holds them, 3D in RAS orientation (as the mask is read)."""
    if dims == 2:
        from PIL import Image

        return [np.asarray(Image.open(p)) for p in paths]
    return [eval_brain_dicom.load_ras(p) for p in paths]


def read_truth(dims: int, inputs: Sequence[Path], data: Path | None) -> list[np.ndarray]:
    """2D: the ISBI label of each section (0 membrane, 255 cell); 3D: each study's MaskTumor series (RAS)."""
    if dims == 2:
        assert data is not None
        return [eval_isbi.read_section(data / "labels", int(p.stem.rsplit("_", 1)[-1])) for p in inputs]
    out = []
    for study in inputs:
        masks = sorted(Path(study).glob(eval_brain_dicom.LABEL_SERIES))
        if not masks:
            raise SystemExit(f"{study} has no {eval_brain_dicom.LABEL_SERIES} series to score against.")
        out.append(eval_brain_dicom.load_ras(masks[0]))
    return out


def score(dims: int, pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """2D: pixel error, Rand error, membrane Dice of a written ISBI-convention label (0 membrane, 255 cell);
    3D: tumour Dice."""
    if pred.shape != truth.shape:
        raise SystemExit(f"a prediction of shape {pred.shape} and its label {truth.shape} are not on one grid.")
    if dims == 2:
        membrane = (pred < 128).astype(np.float32)  # 1 = membrane, as the membrane probability thresholded
        return {k: v for k, v in eval_isbi.score(membrane, truth).items() if k in REPORTED[2]}
    return {"dice": eval_brain_dicom.dice(pred > 0, truth > 0)}


# ------------------------------------------------------------------------------------------------------ measuring


def calibrate_int8(runner: Any, base: Any, inputs: Sequence[Path], out_dir: Path, count: int) -> tuple[Any, dict]:
    """Quantise the runner's network on ``count`` tiles (a uniform sample) that the bundle's inferer cuts from the
    preprocessed ``inputs``; returns the int8 :class:`~monai_unet.inferers.quantize.OnnxTileNetwork` and notes."""
    from monai_unet.inferers.quantize import OnnxTileNetwork, TileRecorder, quantize_network

    if runner.device.type != "cpu":
        raise SystemExit("--int8 runs ONNX Runtime on the CPU: use --device cpu.")
    if getattr(base, "tile_size", None) is None:
        raise SystemExit("--int8 needs the bundle's inferer to have a fixed tile_size (infer_tile_size).")
    start = time.perf_counter()
    recorder = TileRecorder(runner.network, limit=count)  # a uniform sample of all the tiles
    segment(runner, TimedInferer(base, runner.device, recorder, warmup=0, repeats=1), inputs, out_dir / "calibration")
    if not recorder.tiles:
        raise SystemExit("no calibration tiles: give calibration inputs.")
    path = quantize_network(runner.network, recorder.tiles, out_dir / "model_int8.onnx")
    notes = {
        "onnx": str(path),
        "calibration_inputs": [str(p) for p in inputs],
        "calibration_tiles": len(recorder.tiles),
        "tiles_seen": recorder.seen,
        "tile": list(recorder.tiles[0].shape[1:]),
        "seconds": time.perf_counter() - start,
    }
    return OnnxTileNetwork(path, like=runner.network), notes


def summarise(
    dims: int, calls: list[dict], labels: list[np.ndarray], reference: list[np.ndarray], truth: list[np.ndarray]
) -> dict[str, Any]:
    """One precision's row, before the speed-up: seconds, output megapixels/s, labels changed, metrics."""
    per_input = len(labels)
    seconds = [float(np.median([s for c in calls[i::per_input] for s in c["seconds"]])) for i in range(per_input)]
    pixels = sum(c["pixels"] for c in calls[:per_input])
    changed = sum(int(np.count_nonzero(a != b)) for a, b in zip(labels, reference))
    total = sum(int(a.size) for a in reference)
    scores = [score(dims, p, t) for p, t in zip(labels, truth)]
    metrics = {k: float(np.mean([s[k] for s in scores])) for k in REPORTED[dims]}
    return {
        "seconds": float(sum(seconds)),
        "seconds_per_input": seconds,
        "output_pixels": int(pixels),
        "mpx_per_s": pixels / 1e6 / max(sum(seconds), 1e-12),
        "labels_changed": changed / max(total, 1),
        "labels_changed_count": changed,
        "metrics": metrics,
        "per_input": scores,
    }


def judge(rows: dict[str, dict], dims: int) -> None:
    """Add the speed-up over fp32, the largest change of a goal metric, and the goal's verdict to each row."""
    base = rows["fp32"]
    for name, row in rows.items():
        row["speedup"] = base["seconds"] / max(row["seconds"], 1e-12)
        row["metric_change"] = max(abs(row["metrics"][k] - base["metrics"][k]) for k in METRICS[dims])
        misses = []
        if row["speedup"] < GOAL["speedup"]:
            misses.append(f"{row['speedup']:.2f}x < {GOAL['speedup']}x")
        if row["labels_changed"] >= GOAL["labels_changed"]:
            misses.append(f"{per_10k(row['labels_changed'])} in 10,000 labels changed")
        if row["metric_change"] >= GOAL["metric_change"]:
            misses.append(f"a metric moved by {row['metric_change']:.4f}")
        row["goal"] = "reference" if name == "fp32" else ("met" if not misses else "not met: " + "; ".join(misses))
        row["passed"] = name != "fp32" and not misses


def per_10k(share: float) -> str:
    """A share as a count in 10,000, to two significant digits at most (0.31, 2.7, 27, 270)."""
    n = 1e4 * share
    return f"{n:.0f}" if n >= 10 else f"{n:.1f}" if n >= 1 else f"{n:.2f}"


NAMES = {"pixel_error": "pixel error", "rand_error": "Rand error", "dice": "Dice"}


def recommendation(rows: Mapping[str, Mapping], dims: int, device: torch.device) -> str:
    """The README's sentence for bf16 from the measured numbers (empty when bf16 was not measured)."""
    row = rows.get("bf16")
    if row is None:
        return ""
    if device.type == "cpu":
        kind = "with" if cpu_computes_bf16() else "without"
        where = f"On CPUs {kind} AVX512-BF16 or AMX (measured on {cpu_model()})"
    else:
        where = f"On {device_family(device).removeprefix('cuda ')}"
    s = row["speedup"]
    speed = f"segments {s:.2f} times faster than fp32" if s >= 1.05 else f"runs at {s:.2f} times fp32's speed"
    unit = "pixels" if dims == 2 else "voxels"
    changed = f"changes {per_10k(row['labels_changed'])} {unit} in 10,000"
    names = " and ".join(NAMES[k] for k in METRICS[dims])
    if row["metric_change"] < GOAL["metric_change"]:
        effect = f"{names} unchanged to the third decimal"
    else:
        effect = f"{names} change by up to {row['metric_change']:.4f}"
    return f"{where}, `--precision bf16` {speed} and {changed} ({effect})."


def table(rows: Mapping[str, Mapping], dims: int) -> str:
    heads = {**NAMES, "dice": "Dice" if dims == 3 else "membrane Dice"}
    cols = ["precision", "output Mpx/s", "inferer s", "speed-up vs fp32", "labels changed (in 10,000)"]
    cols += [heads[k] for k in REPORTED[dims]] + ["goal"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for name, r in rows.items():
        cells = [name, f"{r['mpx_per_s']:.3f}", f"{r['seconds']:.2f}", f"{r['speedup']:.2f}x"]
        cells += [f"{1e4 * r['labels_changed']:.2f}"] + [f"{r['metrics'][k]:.4f}" for k in REPORTED[dims]]
        lines.append("| " + " | ".join([*cells, r["goal"]]) + " |")
    return "\n".join(lines)


def write_check(path: Path, entry: dict) -> Path:
    """Merge ``entry`` into the ``precision_check`` list of the JSON config overlay ``path`` (created if missing),
    replacing an entry of the same device family."""
    from monai_unet.io.writers import write_json

    config = json.loads(path.read_text()) if path.is_file() else {}
    if not isinstance(config, dict):
        raise SystemExit(f"--write-check {path}: the file holds JSON that is not an object; give a config overlay.")
    old = config.get("precision_check") or []
    old = [old] if isinstance(old, dict) else list(old)
    config["precision_check"] = [e for e in old if e.get("device_family") != entry["device_family"]] + [entry]
    return write_json(path, config)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--bundle", default="unet2d_membrane", help="bundle folder or name (default unet2d_membrane)")
    p.add_argument("--checkpoint", type=Path, required=True, help="the trained weights")
    p.add_argument(
        "--config", action="append", default=[], help="config overlay the model was trained with; repeatable"
    )
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="bundle config overrides")
    p.add_argument("--device", default=None, help="torch device (default: the bundle's)")
    p.add_argument("--data", type=Path, default=eval_isbi.DEFAULT_DATA, help="2D: the ISBI 2012 folder")
    p.add_argument("--sections", type=int, nargs="+", default=eval_isbi.TEST_SECTIONS, help="2D: sections scored")
    p.add_argument(
        "--calibration-sections", type=int, nargs="+", default=eval_isbi.TRAIN_SECTIONS, help="2D: int8 calibration"
    )
    p.add_argument("--inputs", type=Path, nargs="+", default=None, help="3D: DICOM study folders (with MaskTumor)")
    p.add_argument("--calibration-inputs", type=Path, nargs="+", default=None, help="3D: int8 calibration studies")
    p.add_argument("--precisions", nargs="+", default=list(AUTOCAST), choices=AUTOCAST, help="(fp32 always runs)")
    p.add_argument("--int8", action="store_true", help="also ONNX Runtime int8 (needs monai-unet[int8])")
    p.add_argument("--calibration-tiles", type=int, default=16, help="int8 calibration tiles (default 16)")
    p.add_argument("--tta", action="store_true", help="flip test-time augmentation in every precision")
    p.add_argument("--warmup", type=int, default=1, help="untimed inferer calls per image (default 1)")
    p.add_argument("--repeats", type=int, default=3, help="timed inferer calls per image (default 3)")
    p.add_argument("--rounds", type=int, default=2, help="rounds over all precisions in turn (default 2)")
    p.add_argument("--threads", type=int, default=2, help="torch threads on the CPU (BENCHMARKS.md: 2; 0: default)")
    p.add_argument("--out-dir", type=Path, default=REPO / "runs" / "bench_precision")
    p.add_argument("--write-check", type=Path, default=None, metavar="OVERLAY.json", help="record the precision check")
    args = p.parse_args(argv)

    from monai_unet.cli import parse_overrides
    from monai_unet.io.writers import write_json
    from monai_unet.predict import BundleRunner

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    runner = BundleRunner(
        args.bundle,
        checkpoint=args.checkpoint,
        device=args.device,
        overrides=parse_overrides(args.set),
        tta=args.tta,
        overlays=[str(c) for c in args.config],
    )
    dims, device = runner.spatial_dims, runner.device
    if dims == 2:
        inputs = isbi_inputs(args.data, args.sections)
        calibration = isbi_inputs(args.data, args.calibration_sections) if args.int8 else []
    else:
        if not args.inputs:
            raise SystemExit("a 3D bundle needs --inputs: DICOM study folders that hold a MaskTumor series.")
        studies = [s.resolve() for s in args.inputs]
        inputs = study_inputs(studies, runner.channels)
        calibration = study_inputs([s.resolve() for s in args.calibration_inputs or []], runner.channels)
        if args.int8 and not calibration:
            raise SystemExit("--int8 on a 3D bundle needs --calibration-inputs (the model's training studies).")
    out_dir = args.out_dir.resolve()
    base = copy.copy(runner.inferer)
    if not hasattr(base, "precision"):
        raise SystemExit(f"the bundle's inferer is {type(base).__name__}; precisions need an OverlapTileInferer.")
    precisions = ["fp32"] + [q for q in dict.fromkeys(args.precisions) if q != "fp32"]
    print(
        f"{runner.bundle.name} on {device} ({cpu_model() if device.type == 'cpu' else device_family(device)}), "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; {len(inputs)} inputs, precisions "
        f"{', '.join(precisions + (['int8'] if args.int8 else []))}",
        flush=True,
    )

    def inferer_for(name: str, warmup: int, repeats: int, network: Any = None) -> TimedInferer:
        inner = copy.copy(base)
        inner.precision = "fp32" if name == "int8" else name
        return TimedInferer(inner, device, network, warmup=warmup, repeats=repeats)

    int8_net, int8_notes = None, None
    if args.int8:
        print(f"int8: calibrating on {len(calibration)} inputs, {args.calibration_tiles} tiles", flush=True)
        int8_net, int8_notes = calibrate_int8(runner, base, calibration, out_dir, args.calibration_tiles)
        precisions.append("int8")
    # the fp32 reference every precision's labels are compared with (fp32's own row included: a second run)
    reference = read_labels(dims, segment(runner, inferer_for("fp32", 0, 1), inputs, out_dir / "pred" / "reference"))
    truth = read_truth(dims, inputs if dims == 2 else studies, args.data if dims == 2 else None)
    calls: dict[str, list] = {q: [] for q in precisions}
    outputs: dict[str, list[Path]] = {}
    for r in range(args.rounds):
        for q in precisions:
            timed = inferer_for(q, args.warmup, args.repeats, int8_net if q == "int8" else None)
            outputs[q] = segment(runner, timed, inputs, out_dir / "pred" / q)
            calls[q] += timed.calls
            seconds = sum(float(np.median(c["seconds"])) for c in timed.calls)
            print(f"  round {r + 1}/{args.rounds} {q}: inferer {seconds:.2f} s", flush=True)
    rows = {q: summarise(dims, calls[q], read_labels(dims, outputs[q]), reference, truth) for q in precisions}
    judge(rows, dims)
    sentence = recommendation(rows, dims, device)

    family = device_family(device)
    about = {
        "bundle": str(runner.bundle),
        "weights": str(args.checkpoint),
        "weights_sha256": sha256(args.checkpoint),
        "configs": [str(c) for c in args.config],
        "inputs": [str(i) for i in inputs],
        "tta": bool(args.tta),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    result = {
        **about,
        "device": str(device),
        "device_family": family,
        "cpu": cpu_model(),
        "machine": f"{platform.machine()}, torch threads {torch.get_num_threads()}",
        "tile_size": getattr(base, "tile_size", None),
        "goal": dict(GOAL),
        "rows": rows,
        "int8": int8_notes,
        "recommendation": sentence,
        "command": " ".join(["python scripts/bench_precision.py", *(sys.argv[1:] if argv is None else argv)]),
    }
    write_json(out_dir / "results.json", result)
    print(f"\n{runner.bundle.name}, {len(inputs)} inputs, on {cpu_model() if device.type == 'cpu' else family}\n")
    print(table(rows, dims))
    if sentence:
        print(f"\n{sentence}")
    if args.write_check is not None:
        from monai_unet.inferers.precision import check_entry

        entry = check_entry(
            {q: {k: r[k] for k in ("speedup", "labels_changed", "metric_change")} for q, r in rows.items()},
            device,
            **about,
        )
        print(f"precision check for {family} written to {write_check(args.write_check, entry)}")
    best = max((q for q in rows if q != "fp32"), key=lambda q: rows[q]["speedup"], default=None)
    passed = [q for q in rows if rows[q]["passed"]]
    summary = f"fastest {best} {rows[best]['speedup']:.2f}x fp32" if best else "fp32 only"
    print(f"{summary}; goal met by {', '.join(passed) or 'none'}; results: {out_dir / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
