"""Benchmark B5: train the 2D bundle on ISBI 2012 sections 00-15, evaluate on 16-19 (the paper's task).

Trains ``bundles/unet2d_membrane`` with ``configs/train.json`` + ``configs/isbi2012.json`` (the tuned recipe) on
the first 16 sections of ``../shared/data/isbi2012``, then segments the held-out sections 16-19 with
overlap-tile inference using the *final* weights (the held-out sections are never used to pick a checkpoint),
and prints pixel error, Rand error, membrane Dice, training wall time and iterations, at the probability
threshold 0.5 and at thresholds chosen on the training sections 00-15 (one per metric, from ``--thresholds``;
the held-out sections never choose anything). Rand error is reported twice: on the connected cell components
of the thresholded map (the bundle's metric: predicted membrane inside a true cell counts as one extra segment,
so thick predicted membranes cost as much as merges; the true membrane dilated by one pixel already scores
0.08), and after growing the predicted cells over the predicted membrane (each membrane pixel joins its nearest
cell: the dense segmentation SNEMI3D's adapted Rand error, which scikit-image implements, is defined on), which
counts only merges and splits.

Usage:
    python scripts/eval_isbi.py                              # train (~40 min on 2 CPU cores), then evaluate
    python scripts/eval_isbi.py --evaluate-only              # evaluate the weights of an earlier run
    python scripts/eval_isbi.py --no-skips --out-dir runs/isbi2012_noskip   # the ablation (B6)
    python scripts/eval_isbi.py --set max_epochs=2           # any bundle config override

Writes ``<out-dir>/results.json`` (metrics, per-section numbers, settings, the merged bundle config, timing) and
``<out-dir>/probabilities.npy`` (membrane probability of each held-out section, for figures).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage as ndi
from skimage.metrics import adapted_rand_error
from skimage.segmentation import expand_labels

from monai_unet.cli import parse_overrides
from monai_unet.inferers import OverlapTileInferer
from monai_unet.io.atomic import atomic_output

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "isbi2012"
RECIPE_CONFIGS = ["train", "isbi2012"]  # the tuned recipe: isbi2012.json merged over train.json
TRAIN_SECTIONS = list(range(16))
TEST_SECTIONS = [16, 17, 18, 19]
PAPER = {"rand_error": 0.0382, "pixel_error": 0.0611}
GOAL = {"rand_error": 0.06, "pixel_error": 0.08, "minutes": 45.0}
THRESHOLDS = tuple(round(0.3 + 0.05 * i, 2) for i in range(14))  # 0.3, 0.35, ..., 0.95
METRICS = ("pixel_error", "rand_error", "rand_error_grown")  # lower is better; Dice is reported, not chosen for


def bundle_overrides(args: argparse.Namespace) -> dict:
    overrides = {"seed": args.seed, "val_indices": TEST_SECTIONS}
    if args.no_skips:
        overrides["network_def#skip_connections"] = False
    overrides.update(parse_overrides(args.set))
    if args.device is not None:
        overrides["device"] = f"$torch.device('{args.device}')"
    return overrides


def load_config(overrides: dict, configs: list[str]):
    from monai.bundle import ConfigParser

    from monai_unet.bundles import bundle_config, find_bundle

    bundle = find_bundle("unet2d_membrane")
    parser = ConfigParser()
    parser.read_config([str(bundle_config(bundle, c)) for c in configs])
    parser.update(overrides)
    return parser


def recipe(overrides: dict, configs: list[str]) -> dict:
    """The merged bundle config of a run (configs and overrides, before parsing): what ``results.json`` stores so
    that a later run can tell whether an earlier one used the same recipe."""
    config = load_config(overrides, configs).get()
    config.pop("_meta_", None)
    return json.loads(json.dumps(config))


def train(out_dir: Path, data_dir: Path, overrides: dict, configs: list[str]) -> tuple[float, int]:
    """Run the bundle's ``training``; returns (wall seconds, iterations run by the final checkpoint)."""
    from monai_unet.bundles import run_bundle

    start = time.perf_counter()
    run_bundle("unet2d_membrane", "training", configs, bundle_root=out_dir, dataset_dir=str(data_dir), **overrides)
    wall = time.perf_counter() - start
    state = torch.load(out_dir / "models" / "checkpoint.pt", map_location="cpu", weights_only=False)
    return wall, int(state["trainer"]["iteration"])


def read_section(folder: Path, index: int) -> np.ndarray:
    matches = sorted(folder.glob(f"*_{index:02d}.*"))
    if not matches:
        raise FileNotFoundError(f"no section {index:02d} in {folder} (expected a file like train_{index:02d}.png)")
    return np.asarray(Image.open(matches[0]), dtype=np.float32)


def membrane_probabilities(network, image: np.ndarray, inferer, device: torch.device) -> np.ndarray:
    """Overlap-tile inference of one section: (H, W) float membrane probability (class 1 of the softmax)."""
    x = (image - image.min()) / max(float(image.max() - image.min()), 1e-8)  # the bundle's ScaleIntensityd
    x = torch.from_numpy(x)[None, None].to(device)
    with torch.no_grad():
        out = inferer(x, network)
    if inferer.tta:  # the inferer averages probabilities when it flips
        return out[0, 1].cpu().numpy()
    return torch.softmax(out, dim=1)[0, 1].cpu().numpy()


def score(prob: np.ndarray, label_raw: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Pixel error, Rand error (cell-interior components) and membrane Dice of one section at p > threshold."""
    from monai_unet.data import isbi_membrane_label
    from monai_unet.metrics import compute_pixel_error, compute_rand_error

    pred = torch.from_numpy((prob > threshold).astype(np.float32))[None, None]
    true = torch.from_numpy(np.asarray(isbi_membrane_label(label_raw), dtype=np.float32))[None, None]
    inter = float((pred * true).sum())
    dice = 2.0 * inter / max(float(pred.sum() + true.sum()), 1.0)
    # the same Rand error after growing the predicted cells over the predicted membrane (each membrane pixel joins
    # the nearest cell): only merges and splits count, not how thick the predicted membrane is
    true_ids, _ = ndi.label(label_raw >= 128)
    cells, _ = ndi.label(prob <= threshold)
    grown = expand_labels(cells, distance=max(prob.shape))
    return {
        "pixel_error": float(compute_pixel_error(pred, true)[0, 0]),
        "rand_error": float(compute_rand_error(pred, true)[0, 0]),
        "rand_error_grown": float(adapted_rand_error(true_ids, grown, ignore_labels=(0,))[0]),
        "dice": dice,
    }


def evaluate(
    out_dir: Path,
    data_dir: Path,
    overrides: dict,
    configs: list[str],
    weights: Path,
    tta: bool,
    thresholds: tuple[float, ...] = THRESHOLDS,
) -> dict:
    parser = load_config(overrides, configs)
    device = parser.get_parsed_content("device")
    network = parser.get_parsed_content("network_def").to(device)
    network.load_state_dict(torch.load(weights, map_location=device, weights_only=True))
    network.eval()
    inferer = OverlapTileInferer(tile_size=parser.get_parsed_content("infer_tile_size"), tta=tta)
    per_section, held_out = {}, []
    start = time.perf_counter()
    for index in TEST_SECTIONS:
        image = read_section(data_dir / "images", index)
        label = read_section(data_dir / "labels", index)
        prob = membrane_probabilities(network, image, inferer, device)
        held_out.append((prob, label))
        per_section[f"{index:02d}"] = score(prob, label)
        print(f"  section {index:02d}: " + "  ".join(f"{k} {v:.4f}" for k, v in per_section[f"{index:02d}"].items()))
    infer_seconds = time.perf_counter() - start
    with atomic_output(out_dir / "probabilities.npy") as tmp:
        np.save(tmp, np.stack([prob.astype(np.float16) for prob, _ in held_out]))
    mean = {k: float(np.mean([s[k] for s in per_section.values()])) for k in next(iter(per_section.values()))}
    chosen, at_chosen = choose_thresholds(network, inferer, device, data_dir, held_out, thresholds)
    return {
        "mean": mean,
        "per_section": per_section,
        "thresholds_from_training_sections": chosen,
        "mean_at_training_thresholds": at_chosen,
        "inference_seconds": infer_seconds,
        "tta": tta,
    }


def choose_thresholds(
    network, inferer, device: torch.device, data_dir: Path, held_out: list[tuple[np.ndarray, np.ndarray]], thresholds
) -> tuple[dict[str, float], dict[str, float]]:
    """Per metric, the threshold with the least mean error on the training sections 00-15, and the held-out
    sections' (probability, label) mean error at it. The held-out sections choose nothing."""
    train = []
    for index in TRAIN_SECTIONS:
        image = read_section(data_dir / "images", index)
        prob = membrane_probabilities(network, image, inferer, device)
        train.append((prob, read_section(data_dir / "labels", index)))
    table = {t: [score(prob, label, t) for prob, label in train] for t in thresholds}
    chosen = {k: min(thresholds, key=lambda t: (np.mean([s[k] for s in table[t]]), abs(t - 0.5))) for k in METRICS}
    at = {t: [score(prob, label, t) for prob, label in held_out] for t in set(chosen.values())}
    return chosen, {k: float(np.mean([s[k] for s in at[t]])) for k, t in chosen.items()}


def write_json(path: Path, obj: dict) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="ISBI 2012 folder (images/, labels/)")
    p.add_argument("--out-dir", type=Path, default=REPO / "runs" / "isbi2012", help="bundle_root of the run")
    p.add_argument("--config", default=RECIPE_CONFIGS[-1], help="bundle config merged over train.json ('' for none)")
    p.add_argument("--no-skips", action="store_true", help="skip_connections=False (the FCN-style ablation, B6)")
    p.add_argument("--no-tta", action="store_true", help="no flip test-time augmentation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="torch device (default: the bundle's, cuda:0 if present)")
    p.add_argument("--evaluate-only", action="store_true", help="evaluate <out-dir>/models/model_final.pt")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="bundle config overrides")
    p.add_argument(
        "--thresholds",
        type=float,
        nargs="+",
        default=list(THRESHOLDS),
        help="membrane probability thresholds the training sections choose from, per metric",
    )
    args = p.parse_args(argv)

    data_dir = args.data.resolve()
    for sub in ("images", "labels"):
        if not (data_dir / sub).is_dir():
            raise SystemExit(f"{data_dir / sub} is not a folder: give --data the ISBI 2012 folder (images/, labels/).")
    out_dir = args.out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    configs = ["train"] + ([args.config] if args.config else [])
    overrides = bundle_overrides(args)
    results_path = out_dir / "results.json"
    previous = json.loads(results_path.read_text()) if results_path.is_file() else {}

    if args.evaluate_only:
        wall, iterations = previous.get("train_seconds"), previous.get("iterations")
    else:
        print(f"[1/2] training on sections 00-15 of {data_dir} -> {out_dir}", flush=True)
        wall, iterations = train(out_dir, data_dir, overrides, configs)
        print(f"      {iterations} iterations in {wall / 60:.1f} min", flush=True)
    weights = out_dir / "models" / "model_final.pt"
    if not weights.is_file():
        raise SystemExit(f"{weights} does not exist: train first (run without --evaluate-only).")
    print(f"[2/2] overlap-tile inference on sections 16-19 with {weights}", flush=True)
    result = evaluate(out_dir, data_dir, overrides, configs, weights, not args.no_tta, tuple(args.thresholds))
    result.update(
        configs=configs,
        overrides=overrides,
        recipe=recipe(overrides, configs),
        skip_connections=not args.no_skips,
        train_seconds=wall,
        iterations=iterations,
        torch_threads=torch.get_num_threads(),
        machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        command=" ".join([Path(sys.executable).name, *sys.argv]),
    )
    write_json(results_path, result)
    m = result["mean"]
    minutes = "n/a" if wall is None else f"{wall / 60:.1f} min"
    print(
        f"\nheld-out sections 16-19 ({'with' if not args.no_skips else 'without'} skips, "
        f"{'flip TTA' if result['tta'] else 'no TTA'}): pixel error {m['pixel_error']:.4f}  "
        f"Rand error {m['rand_error']:.4f} (cells grown over membrane: {m['rand_error_grown']:.4f})  "
        f"membrane Dice {m['dice']:.4f}  training {minutes}, {iterations} iterations"
    )
    chosen, at = result["thresholds_from_training_sections"], result["mean_at_training_thresholds"]
    print(
        "at thresholds chosen on sections 00-15: "
        + "  ".join(f"{k.replace('_', ' ')} {at[k]:.4f} (p > {chosen[k]})" for k in METRICS)
    )
    print(f"paper (ISBI 2012 test stack): pixel error {PAPER['pixel_error']}  Rand error {PAPER['rand_error']}")
    in_time = wall is None or wall <= GOAL["minutes"] * 60
    goal = f"Rand <= {GOAL['rand_error']}, pixel <= {GOAL['pixel_error']}, <= {GOAL['minutes']:.0f} min"
    for name, values in (("p > 0.5", m), ("training-section thresholds", at)):
        verdict = {k: values[k] <= GOAL[k.replace("_grown", "")] for k in METRICS}
        print(
            f"goal ({goal}) at {name}: pixel {'met' if verdict['pixel_error'] else 'not met'}, Rand "
            f"{'met' if verdict['rand_error'] else 'not met'} (cells grown: "
            f"{'met' if verdict['rand_error_grown'] else 'not met'}), time {'met' if in_time else 'not met'}"
        )
    print(f"results: {results_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
