"""Benchmark: the paper's border weight map on the 20 ISBI 2012 training labels, on one CPU core.

Competitors, in the same process, in turn, per label:
  fast  - monai_unet.transforms.BorderWeightMap (one distance transform per cell, bounded to the cell's box grown
          by truncate * sigma), the whole transform including connected components and class balance;
  naive - the textbook way: one Euclidean distance transform per cell over the whole image, sorted per pixel.

One core: scipy's distance transform and numpy's element-wise maths run single-threaded, and torch is limited
with torch.set_num_threads(1) (for stricter isolation run it under `taskset -c 0`).

Usage: python scripts/bench_weightmap.py [--data ../shared/data/isbi2012] [--naive 20] [--repeat 3]
Prints a table, the largest difference between the two maps, and one summary line.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage as ndi

from monai_unet.transforms import BorderWeightMap, object_labels

W0, SIGMA = 10.0, 5.0


def naive_weight_map(label: np.ndarray) -> np.ndarray:
    """Same map, the naive way (class balance as in BorderWeightMap)."""
    ids, n = object_labels(label)
    inside = ids > 0
    weight = np.where(inside, inside.size / (2.0 * inside.sum()), inside.size / (2.0 * (~inside).sum()))
    dist = np.sort(np.stack([ndi.distance_transform_edt(ids != k) for k in range(1, n + 1)]), axis=0)
    return weight + W0 * np.exp(-((dist[0] + dist[1]) ** 2) / (2 * SIGMA**2)) * ~inside


def best_of(fn, repeat: int) -> tuple[float, np.ndarray]:
    times, out = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def main() -> None:
    default_data = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "isbi2012"
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=default_data, help="ISBI 2012 folder with labels/train_NN.png")
    parser.add_argument("--naive", type=int, default=20, help="how many labels also get the naive map (slow)")
    parser.add_argument("--repeat", type=int, default=3, help="timings per label; the best is kept")
    args = parser.parse_args()
    torch.set_num_threads(1)
    paths = sorted((args.data / "labels").glob("train_*.png"))
    if not paths:
        raise SystemExit(f"no labels/train_*.png under {args.data}: pass --data <isbi2012 folder>")
    transform = BorderWeightMap(w0=W0, sigma=SIGMA)
    print(f"BorderWeightMap on {len(paths)} ISBI 2012 labels, one CPU core (torch.set_num_threads(1))")
    print(f"{'label':<14}{'size':>10}{'cells':>7}{'fast ms':>10}{'naive ms':>10}{'naive/fast':>12}{'max |diff|':>12}")
    fast_times, ratios, diffs = [], [], []
    for i, path in enumerate(paths):
        label = np.array(Image.open(path))
        n_cells = object_labels(label)[1]
        t_fast, w_fast = best_of(lambda label=label: transform(label[None])[0], args.repeat)
        fast_times.append(t_fast)
        row = f"{path.name:<14}{'x'.join(map(str, label.shape)):>10}{n_cells:>7}{t_fast * 1e3:>10.1f}"
        if i < args.naive:
            t_naive, w_naive = best_of(lambda label=label: naive_weight_map(label), 1)
            ratios.append(t_naive / t_fast)
            diffs.append(float(np.abs(w_fast - w_naive).max()))
            row += f"{t_naive * 1e3:>10.1f}{ratios[-1]:>12.1f}{diffs[-1]:>12.2e}"
        print(row)
    summary = (
        f"SUMMARY: BorderWeightMap median {statistics.median(fast_times) * 1e3:.1f} ms, max "
        f"{max(fast_times) * 1e3:.1f} ms per 512x512 ISBI label on one core"
    )
    if ratios:
        summary += (
            f"; {statistics.median(ratios):.0f}x faster than a per-cell whole-image distance transform "
            f"(median over {len(ratios)} labels), max |difference| {max(diffs):.1e}"
        )
    print(summary)


if __name__ == "__main__":
    main()
