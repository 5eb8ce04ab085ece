"""3D accuracy from DICOM: train the 3D bundle on one patient's Brain-Tumor-Progression studies, Dice on the other's.

Reads ``../shared/data/brain_tumor_progression_dicom`` (four studies of two patients, each with a T1post MR series
and a tumour mask series on the same grid), trains ``bundles/unet3d_volume`` on the studies whose path does not
contain ``--test-study`` (default PGBM-003: the other patient's studies, so no patient is in both sets), segments
each held-out T1post series straight from its DICOM folder with ``monai_unet.predict`` (the CLI's code path; the
label map is written back on the series' own grid), and reports tumour Dice against its mask series, voxel for
voxel in that grid, per study and their mean.

Usage:
    python scripts/eval_brain_dicom.py                         # 1200 iterations, ~10 min on 2 CPU cores
    python scripts/eval_brain_dicom.py --test-study PGBM-001   # hold out the other patient
    python scripts/eval_brain_dicom.py --evaluate-only         # re-score the weights of an earlier run

Writes ``<out-dir>/results.json`` and the prediction under ``<out-dir>/predictions``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "brain_tumor_progression_dicom"


def load_ras(path: str | os.PathLike) -> np.ndarray:
    """A volume or DICOM series folder as an (X, Y, Z) array in RAS orientation."""
    from monai.transforms import Compose, LoadImage, Orientation

    load = Compose([LoadImage(image_only=True, ensure_channel_first=True), Orientation(axcodes="RAS", labels=None)])
    return np.asarray(load(str(path))[0])


def dice(pred: np.ndarray, true: np.ndarray) -> float:
    total = float(pred.sum() + true.sum())
    return 1.0 if total == 0 else 2.0 * float((pred & true).sum()) / total


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the Brain-Tumor-Progression DICOM folder")
    p.add_argument(
        "--test-study", default="PGBM-003", help="a part of the held-out studies' paths (a patient, or one study)"
    )
    p.add_argument("--out-dir", type=Path, default=REPO / "runs" / "brain_dicom", help="bundle_root of the run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-epochs", type=int, default=30, help="epochs of the bundle's 40 iterations (default 30)")
    p.add_argument("--device", default=None, help="torch device (default: the bundle's, cuda:0 if present)")
    p.add_argument("--evaluate-only", action="store_true", help="score <out-dir>/models/model_final.pt")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="bundle config overrides")
    args = p.parse_args(argv)

    from monai_unet.bundles import run_bundle
    from monai_unet.cli import parse_overrides
    from monai_unet.data import volume_datalist
    from monai_unet.io.atomic import atomic_output
    from monai_unet.predict import predict

    data = args.data.resolve()
    items = volume_datalist(data)
    held = [i for i, item in enumerate(items) if args.test_study in item["image"]]
    if not held or len(held) == len(items):
        names = [str(Path(item["image"]).parent.relative_to(data)) for item in items]
        raise SystemExit(
            f"--test-study {args.test_study!r} should match some but not all of these studies (the others train): "
            f"{names}"
        )
    tests = [items[i] for i in held]
    out_dir = args.out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    overrides = {"seed": args.seed, "val_indices": held, "max_epochs": args.max_epochs}
    overrides.update(parse_overrides(args.set))
    if args.device is not None:
        overrides["device"] = f"$torch.device('{args.device}')"

    results_path = out_dir / "results.json"
    previous = json.loads(results_path.read_text()) if results_path.is_file() else {}
    train_seconds, iterations = previous.get("train_seconds"), previous.get("iterations")
    if not args.evaluate_only:
        train_names = [str(Path(it["image"]).parent.relative_to(data)) for i, it in enumerate(items) if i not in held]
        print(f"[1/2] training the 3D bundle on {len(train_names)} studies: {', '.join(train_names)}", flush=True)
        start = time.perf_counter()
        run_bundle("unet3d_volume", "training", ["train"], bundle_root=out_dir, dataset_dir=str(data), **overrides)
        train_seconds = time.perf_counter() - start
        state = torch.load(out_dir / "models" / "checkpoint.pt", map_location="cpu", weights_only=False)
        iterations = int(state["trainer"]["iteration"])
    weights = out_dir / "models" / "model_final.pt"
    if not weights.is_file():
        raise SystemExit(f"{weights} does not exist: train first (run without --evaluate-only).")

    print(f"[2/2] segmenting the {len(tests)} held-out T1post series", flush=True)
    start = time.perf_counter()
    results = predict(
        "unet3d_volume",
        [test["image"] for test in tests],
        out_dir / "predictions",
        checkpoint=weights,
        device=args.device,
        overwrite=True,
        progress=False,
    )
    infer_seconds = time.perf_counter() - start
    per_study = {}
    for test, res in zip(tests, results):
        if res.status != "done":
            raise SystemExit(f"prediction of {test['image']} failed: {res.reason}")
        pred = load_ras(res.outputs[0]) > 0
        true = load_ras(test["label"]) > 0
        if pred.shape != true.shape:
            raise SystemExit(f"prediction {pred.shape} and mask series {true.shape} are not on one grid")
        per_study[str(Path(test["image"]).parent.relative_to(data))] = {
            "tumour_dice": dice(pred, true),
            "predicted_voxels": int(pred.sum()),
            "mask_voxels": int(true.sum()),
            "grid": list(pred.shape),
        }
    score = float(np.mean([r["tumour_dice"] for r in per_study.values()]))
    result = {
        "test_studies": per_study,
        "tumour_dice": score,
        "train_seconds": train_seconds,
        "iterations": iterations,
        "inference_seconds": infer_seconds,
        "overrides": overrides,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    with atomic_output(results_path) as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    minutes = "n/a" if train_seconds is None else f"{train_seconds / 60:.1f} min"
    print()
    for name, r in per_study.items():
        print(
            f"held-out study {name}: tumour Dice {r['tumour_dice']:.3f} ({r['mask_voxels']} mask voxels, "
            f"{r['predicted_voxels']} predicted, grid {tuple(r['grid'])})"
        )
    print(
        f"mean tumour Dice {score:.3f}; training {minutes}, {iterations} iterations; inference {infer_seconds:.1f} s"
        f"\nresults: {results_path}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
