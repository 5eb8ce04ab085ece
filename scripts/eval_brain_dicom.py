"""3D tumour accuracy from DICOM: cross-validation by patient, the model for new patients, post-processing.

Reads DICOM study folders (default: ``../shared/data/brain_tumor_progression_dicom``, four studies of two patients,
each with T1prereg, T1post, T2reg, FLAIRreg and a MaskTumor series on one grid) and, for each channel set:

1. **Cross-validation grouped by patient** (leave-one-patient-out with this data; ``--folds K`` groups patients
   into K folds): each fold trains ``bundles/unet3d_volume`` through its configs (``train.json`` + the plan +
   this run's overlay) on the other patients' studies within ``--budget-min`` minutes of wall clock
   (``monai_unet.handlers.TimeLimit``, which also decays the learning rate over the wall clock: nnU-Net's poly
   schedule in time), segments each held-out study straight from its DICOM folder with ``monai_unet.predict``
   (the CLI's code path, the label map on the study's own grid) and scores tumour Dice against its mask
   series, voxel for voxel.
   The fold's last weights are scored (no held-out study chooses anything).
2. **Test-time augmentation and post-processing chosen on the cross-validation**: each held-out study is segmented
   as the network gives it and with flip test-time augmentation (probabilities averaged over all flips, as nnU-Net
   scores its folds), each with and without keeping the largest connected component of the tumour; whichever of
   the four gives the highest mean cross-validation Dice (a tie: the simpler) is written into the overlay the final
   model is used with (``tta``, ``keep_largest_component``).
3. **The model for new patients** (``--final all``, nnU-Net's ``all`` fold): trained on every study within the same
   budget; or ``--final ensemble``: the fold models, averaged by ``monai-unet predict --checkpoint A.pt B.pt``.

``--train S1 S2 --test S3 S4`` instead trains once on the given study folders and scores the given test studies
(any split, scored the same way as ``scripts/bench_nnunet.py`` scores nnU-Net).

Usage:
    python scripts/eval_brain_dicom.py                                       # all four sequences, 45 min per fold
    python scripts/eval_brain_dicom.py --channel-sets T1post T1post,FLAIR all --budget-min 45
    python scripts/eval_brain_dicom.py --train S1 S2 --test S3 S4 --budget-min 10
    python scripts/eval_brain_dicom.py --loss tversky-ce --out-dir runs/brain_cv_tversky   # the recall-leaning loss
    python scripts/eval_brain_dicom.py --budget-min 1 --set epoch_length=2   # a smoke run

A rerun with the same ``--out-dir`` (after a crash or a stop) reuses every finished training (its ``trained.json``
beside ``models/``) and trains the rest; a model trained on other studies or with other settings (another
``--loss``, budget, plan or ``--set``) is never reused: give such a run its own ``--out-dir``.

Writes ``<out-dir>/results.json`` (per channel set: per fold, per study Dice, wall times, the post-processing
choice) and, per run, the bundle_root with models/, the overlay used and the predictions.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "brain_tumor_progression_dicom"
DEFAULT_PLAN = REPO / "bundles" / "unet3d_volume" / "configs" / "brain_tumor_progression.json"
# the bundle's channel names and their series patterns (the same as its configs' "channels")
ALL_CHANNELS = {"T1pre": "*T1prereg*", "T1post": "*T1post*", "T2": "*T2reg*", "FLAIR": "*FLAIR*"}
LABEL_SERIES = "*MaskTumor*"
# the training loss written into each overlay (--loss): the bundle's Dice + cross-entropy, or its recall-leaning form
_LOSS_ARGS = {"to_onehot_y": True, "softmax": True, "include_background": False, "batch": True}
LOSSES = {
    "dice-ce": {"_target_": "DiceCELoss", **_LOSS_ARGS},
    "tversky-ce": {"_target_": "monai_unet.losses.TverskyCELoss", **_LOSS_ARGS, "alpha": 0.3, "beta": 0.7},
}


# ------------------------------------------------------------------------------------------------------ studies


def find_studies(roots: Sequence[Path]) -> list[Path]:
    """Study folders (holding a MaskTumor series folder) at or below ``roots``, sorted."""
    out = []
    for root in roots:
        root = root.resolve()
        for current, dirs, _ in os.walk(root, followlinks=True):
            dirs.sort()
            if any(Path(current, d).match(LABEL_SERIES) for d in dirs):
                out.append(Path(current))
                dirs[:] = []
    return sorted(set(out))


def patient_of(study: Path) -> str:
    """The PatientID of a study (its first readable DICOM header), else its parent folder's name."""
    from monai_unet.io.dicom import read_header

    for series in sorted(p for p in study.iterdir() if p.is_dir()):
        for f in sorted(series.iterdir()):
            ds = read_header(f)
            if ds is not None and getattr(ds, "PatientID", None):
                return str(ds.PatientID)
    return study.parent.name


def patient_folds(studies: Sequence[Path], folds: int | None) -> list[list[Path]]:
    """Held-out study groups, each whole patients: one per patient (``folds=None``) or ``folds`` groups."""
    by_patient: dict[str, list[Path]] = {}
    for s in studies:
        by_patient.setdefault(patient_of(s), []).append(s)
    patients = sorted(by_patient)
    if len(patients) < 2:
        raise SystemExit(f"cross-validation by patient needs two patients or more; the studies are all {patients}.")
    k = len(patients) if folds is None else min(folds, len(patients))
    return [[s for p in patients[i::k] for s in by_patient[p]] for i in range(k)]


def link_dataset(studies: Sequence[Path], folder: Path) -> Path:
    """A dataset folder of links: ``folder/<patient>/<study>/<series>`` -> each study's series folders."""
    folder.mkdir(parents=True, exist_ok=True)
    for s in studies:
        dest = folder / s.parent.name / s.name
        dest.mkdir(parents=True, exist_ok=True)
        for series in s.iterdir():
            if series.is_dir() and not (dest / series.name).exists():
                os.symlink(series.resolve(), dest / series.name)
    return folder


# ------------------------------------------------------------------------------------------------------ scoring


def load_ras(path: str | os.PathLike) -> np.ndarray:
    """A volume or DICOM series folder as an (X, Y, Z) array in RAS orientation."""
    from monai.transforms import Compose, LoadImage, Orientation

    load = Compose([LoadImage(image_only=True, ensure_channel_first=True), Orientation(axcodes="RAS", labels=None)])
    return np.asarray(load(str(path))[0])


def dice(pred: np.ndarray, true: np.ndarray) -> float:
    total = float(pred.sum() + true.sum())
    return 1.0 if total == 0 else 2.0 * float((pred & true).sum()) / total


def score_key(tta: bool, keep_largest_component: bool) -> str:
    """The key of a held-out study's Dice with flip TTA or not, the largest component kept or not."""
    return "dice" + ("_tta" if tta else "") + ("_largest_component" if keep_largest_component else "")


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a binary mask (MONAI's ``KeepLargestConnectedComponent``)."""
    from monai.transforms import KeepLargestConnectedComponent

    kept = KeepLargestConnectedComponent(applied_labels=[1], connectivity=3)(mask[None].astype(np.uint8))
    return np.asarray(kept[0]) > 0


# ------------------------------------------------------------------------------------------------------ one run


def overlay_for(plan: dict, channels: dict[str, str], extra: dict) -> dict:
    """The plan, narrowed to ``channels`` (its per-channel normalisation picked by name), with ``extra`` over it."""
    out = dict(plan)
    names = list(plan.get("channels") or {})
    schemes = plan.get("normalization")
    if schemes is not None and names and len(schemes) == len(names):
        out["normalization"] = [schemes[names.index(c)] if c in names else schemes[0] for c in channels]
    elif schemes is not None:
        out["normalization"] = [schemes[0]] * len(channels)
    out["channels"] = dict(channels)
    out["in_channels"] = len(channels)
    out.update(extra)
    return out


def _jsonable(value: dict) -> dict:
    return json.loads(json.dumps(value, default=str))


def train_and_score(
    name: str,
    train: Sequence[Path],
    test: Sequence[Path],
    overlay: dict,
    out_dir: Path,
    budget_s: float,
    overrides: dict,
    device: str | None,
) -> dict:
    """Train the 3D bundle on ``train`` within ``budget_s``; segment and score ``test`` (may be empty)."""
    import torch

    from monai_unet.bundles import run_bundle
    from monai_unet.io.writers import write_json
    from monai_unet.predict import predict

    run_dir = out_dir / name
    run_dir.mkdir(parents=True, exist_ok=True)
    # the dataset folder of links lists the studies by patient folder, then study (as find_studies reads it); the
    # test studies are the (never run) validation set of the bundle: training decides nothing on them
    ordered = sorted({*train, *test}, key=lambda s: (s.parent.name, s.name))
    val = [i for i, s in enumerate(ordered) if s in test]
    trained_on = [str(s) for s in train]
    settings = {
        "val_indices": val,  # none for the model for new patients: it trains on every study
        "val_interval": 10**6,
        # the budget decides: TimeLimit stops training and decays the learning rate over the wall clock
        "max_epochs": 10**6,
        "time_limit_s": budget_s,
        **overrides,
    }
    done = run_dir / "trained.json"
    if done.is_file() and (run_dir / "models" / "model_final.pt").is_file():
        # a rerun of the evaluation (after a crash or a stop) reuses a finished training
        previous = json.loads(done.read_text())
        if previous.get("train") != trained_on:
            raise SystemExit(
                f"{run_dir} holds a model trained on other studies ({previous.get('train', 'not recorded')}): delete "
                "it or use another --out-dir"
            )
        if previous.get("overlay") != overlay or previous.get("settings") != _jsonable(settings):
            raise SystemExit(
                f"{run_dir} holds a model trained with other settings (another loss, budget, plan or --set): delete "
                "it or use another --out-dir"
            )
        overlay_path = run_dir / "overlay.json"
        train_seconds = float(previous["train_seconds"])
        print(f"[{name}] trained before ({done}): {train_seconds / 60:.1f} min; not trained again", flush=True)
    else:
        overlay_path = write_json(run_dir / "overlay.json", overlay)
        if (run_dir / "dataset").exists():  # links left by a run stopped before it finished: only this run's studies
            shutil.rmtree(run_dir / "dataset")
        data = link_dataset(ordered, run_dir / "dataset")
        if [(s.parent.name, s.name) for s in find_studies([data])] != [(s.parent.name, s.name) for s in ordered]:
            raise SystemExit(f"{data}: the studies {ordered} do not each have their own patient/study folder name")
        if device is not None:
            settings["device"] = f"$torch.device('{device}')"
        print(f"[{name}] training on {len(train)} studies, {budget_s / 60:.1f} min budget", flush=True)
        start = time.perf_counter()
        run_bundle(
            "unet3d_volume",
            "training",
            ["train", str(overlay_path)],
            bundle_root=run_dir,
            dataset_dir=str(data),
            **settings,
        )
        train_seconds = time.perf_counter() - start
        settings.pop("device", None)
        write_json(
            done,
            {
                "train_seconds": train_seconds,
                "train": trained_on,
                "overlay": overlay,
                "settings": _jsonable(settings),
            },
        )
    state = torch.load(run_dir / "models" / "checkpoint.pt", map_location="cpu", weights_only=False)
    result: dict = {
        "train": trained_on,
        "train_seconds": train_seconds,
        "iterations": int(state["trainer"]["iteration"]),
        "weights": str(run_dir / "models" / "model_final.pt"),
        "overlay": str(overlay_path),
        "studies": {},
    }
    if not test:
        return result
    # each held-out study segmented twice: as the network gives it, and with flip test-time augmentation (the
    # probabilities averaged over all flips, as nnU-Net scores its folds); the cross-validation chooses between them
    masks = {study: load_ras(next(study.glob(LABEL_SERIES))) > 0 for study in test}  # read once for both passes
    for tta, suffix in ((False, ""), (True, "_tta")):
        start = time.perf_counter()
        results = predict(
            "unet3d_volume",
            [str(s) for s in test],
            run_dir / f"predictions{suffix}",
            checkpoint=run_dir / "models" / "model_final.pt",
            configs=[str(overlay_path)],
            tta=tta,
            device=device,
            overwrite=True,
            progress=False,
        )
        result[f"inference_seconds{suffix}"] = time.perf_counter() - start
        if len(results) != len(test):  # one segmentation per study, or the scores would pair the wrong files
            found = ", ".join(r.key for r in results)
            raise SystemExit(f"{len(test)} test studies gave {len(results)} segmentations ({found}): one each expected")
        for study, res in zip(test, results):
            if res.status != "done":
                raise SystemExit(f"prediction of {study} failed: {res.reason}")
            pred = load_ras(res.outputs[0]) > 0
            true = masks[study]
            if pred.shape != true.shape:
                raise SystemExit(f"prediction {pred.shape} and mask series {true.shape} of {study} are not on one grid")
            result["studies"].setdefault(str(study), {"mask_voxels": int(true.sum())}).update(
                {
                    score_key(tta, False): dice(pred, true),
                    score_key(tta, True): dice(largest_component(pred), true),
                    f"predicted_voxels{suffix}": int(pred.sum()),
                    f"prediction{suffix}": str(res.outputs[0]),
                }
            )
    return result


# ------------------------------------------------------------------------------------------------------ main


def parse_channel_set(text: str) -> dict[str, str]:
    names = list(ALL_CHANNELS) if text == "all" else [c.strip() for c in text.split(",") if c.strip()]
    unknown = [c for c in names if c not in ALL_CHANNELS]
    if unknown:
        raise SystemExit(f"unknown channel(s) {unknown}: the channels are {list(ALL_CHANNELS)} (or 'all').")
    return {c: ALL_CHANNELS[c] for c in names}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, nargs="+", default=[DEFAULT_DATA], help="folders holding the study folders")
    p.add_argument("--train", type=Path, nargs="+", default=None, help="training study folders (with --test)")
    p.add_argument("--test", type=Path, nargs="+", default=None, help="test study folders (with --train)")
    p.add_argument("--folds", type=int, default=None, help="patient groups (default: one per patient)")
    p.add_argument("--channel-sets", nargs="+", default=["all"], help="e.g. T1post T1post,FLAIR all (default all)")
    p.add_argument("--plan", type=Path, default=DEFAULT_PLAN, help="the plan (monai-unet plan) to train with")
    p.add_argument("--budget-min", type=float, default=45.0, help="training wall clock per model (default 45)")
    p.add_argument(
        "--learning-rate",
        type=float,
        default=0.01,
        help="SGD's initial learning rate, written into each overlay (default 0.01, nnU-Net's; the bundle's 0.03 is "
        "for its 400-iteration synthetic default)",
    )
    p.add_argument(
        "--loss",
        choices=tuple(LOSSES),
        default="dice-ce",
        help="dice-ce: Dice + cross-entropy (nnU-Net's, the bundle's); tversky-ce: the Dice term leaning to recall "
        "(Tversky alpha 0.3 on false positives, beta 0.7 on misses) + cross-entropy",
    )
    p.add_argument("--final", choices=("all", "ensemble", "none"), default="all", help="the model for new patients")
    p.add_argument("--out-dir", type=Path, default=REPO / "runs" / "brain_cv")
    p.add_argument("--device", default=None)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="bundle config overrides")
    args = p.parse_args(argv)

    from monai_unet.cli import parse_overrides
    from monai_unet.io.writers import write_json

    if not args.plan.is_file():
        raise SystemExit(f"--plan {args.plan} does not exist: make one with monai-unet plan --bundle unet3d_volume.")
    plan = json.loads(args.plan.read_text())
    overrides = parse_overrides(args.set)
    budget_s = args.budget_min * 60.0
    out_dir = args.out_dir.resolve()
    if (args.train is None) != (args.test is None):
        raise SystemExit("--train and --test go together.")
    report: dict = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "plan": str(args.plan), "sets": {}}

    for text in args.channel_sets:
        channels = parse_channel_set(text)
        tag = "+".join(channels)
        start = time.perf_counter()
        if args.train is not None:
            folds = [[s.resolve() for s in args.test]]
            pool = [s.resolve() for s in args.train]
        else:
            studies = find_studies(args.data)
            folds = patient_folds(studies, args.folds)
            pool = studies
        recipe = {"learning_rate": args.learning_rate, "loss": LOSSES[args.loss]}  # written into every overlay
        runs = []
        for k, held in enumerate(folds):
            train = [s for s in pool if s not in held]
            overlay = overlay_for(plan, channels, recipe)
            runs.append(
                train_and_score(f"{tag}/fold{k}", train, held, overlay, out_dir, budget_s, overrides, args.device)
            )
        scores = {s: r for run in runs for s, r in run["studies"].items()}
        # the mean Dice of each way of using the models: flip TTA or not, the largest component kept or not; the
        # best of them (on the held-out studies of all folds together, never one test study) is written into the
        # overlay the model for new patients is used with
        means = {
            (tta, keep): float(np.mean([r[score_key(tta, keep)] for r in scores.values()]))
            for tta in (False, True)
            for keep in (False, True)
        }
        tta, keep = max(means, key=lambda k: (means[k], -k[0], -k[1]))  # a tie: the simpler way
        entry = {
            "channels": channels,
            "loss": args.loss,
            "folds": runs,
            "mean_dice": means[False, False],
            "mean_dice_largest_component": means[False, True],
            "mean_dice_tta": means[True, False],
            "mean_dice_tta_largest_component": means[True, True],
            "tta": tta,
            "keep_largest_component": keep,
            "cv_seconds": time.perf_counter() - start,  # this run's wall time (folds trained before count 0)
            "train_seconds_total": float(sum(r["train_seconds"] for r in runs)),  # every fold's training, reused or not
        }
        final_overlay = overlay_for(plan, channels, {**recipe, "tta": tta, "keep_largest_component": keep})
        if args.final == "all" and args.train is None:
            final = train_and_score(f"{tag}/all", pool, [], final_overlay, out_dir, budget_s, overrides, args.device)
            entry["final"] = {"kind": "all", "weights": [final["weights"]], "train_seconds": final["train_seconds"]}
        elif args.final == "ensemble":
            entry["final"] = {"kind": "ensemble", "weights": [r["weights"] for r in runs]}
        if "final" in entry:
            entry["final"]["overlay"] = str(write_json(out_dir / tag / "final_overlay.json", final_overlay))
        report["sets"][tag] = entry
        write_json(out_dir / "results.json", report)
        print(f"\n{tag}: per study (Dice; largest component; with flip TTA; with flip TTA, largest component)")
        for s, r in scores.items():
            print(
                f"  {Path(s).parent.name}/{Path(s).name}: {r['dice']:.3f}; {r['dice_largest_component']:.3f}; "
                f"{r['dice_tta']:.3f}; {r['dice_tta_largest_component']:.3f} ({r['mask_voxels']} mask voxels, "
                f"{r['predicted_voxels']} predicted, {r['predicted_voxels_tta']} with TTA)"
            )
        print(
            f"{tag}: mean Dice {means[False, False]:.3f}, largest component {means[False, True]:.3f}, flip TTA "
            f"{means[True, False]:.3f}, both {means[True, True]:.3f} -> tta={tta}, keep_largest_component={keep}; "
            f"training {entry['train_seconds_total'] / 60:.1f} min over {len(runs)} folds, this run's wall "
            f"{entry['cv_seconds'] / 60:.1f} min"
        )
    print("\n| channels | mean Dice (cross-validation) | largest component | flip TTA | both | training (all folds) |")
    print("|---|---|---|---|---|---|")
    for tag, e in report["sets"].items():
        print(
            f"| {tag} | {e['mean_dice']:.3f} | {e['mean_dice_largest_component']:.3f} | {e['mean_dice_tta']:.3f} | "
            f"{e['mean_dice_tta_largest_component']:.3f} | {e['train_seconds_total'] / 60:.1f} min |"
        )
    print(f"results: {out_dir / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
