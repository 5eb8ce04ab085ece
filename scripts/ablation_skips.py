"""Benchmark B6: the seed's skip-connection figure on ISBI 2012, with and without skip connections.

Runs ``scripts/eval_isbi.py`` twice with the same recipe, data and budget (sections 00-15 to train, 16-19 to
evaluate): once as is and once with ``skip_connections=False`` (the FCN-style ablation). A run whose
``results.json`` and ``probabilities.npy`` already exist and whose recorded recipe (the merged bundle config) is
today's is reused, so ``python scripts/eval_isbi.py`` followed by this script trains only the missing variant. A
run of another recipe (a changed ``configs/isbi2012.json``, other ``--set`` values, the other variant) stops the
script with a message instead of being replaced; ``--retrain`` trains both variants anew.

Writes ``docs/ablation_skips.md`` (the table) and ``docs/ablation_skips.png``: for the held-out section and
membrane junction where the two networks disagree most, the input, the label and both membrane probability maps
(dark = membrane, as in the labels), whole and as a close-up of the junction.

Usage:
    python scripts/ablation_skips.py                 # ~2 x 40 min on 2 CPU cores when nothing is reused
    python scripts/ablation_skips.py --set max_epochs=2 --docs /tmp/docs --skips-dir /tmp/s --no-skips-dir /tmp/n
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage as ndi
from skimage.morphology import skeletonize

sys.path.insert(0, str(Path(__file__).resolve().parent))
import eval_isbi

from monai_unet.io.atomic import atomic_output

REPO = eval_isbi.REPO
CLOSE_UP = 80  # pixels of the junction close-up
PANEL = 320  # pixels of each whole-section panel in the figure
ZOOM = 320 // CLOSE_UP


def stale(out_dir: Path, skips: bool, args: argparse.Namespace) -> str | None:
    """Why the run in ``out_dir`` cannot be reused for this variant (``None`` when it can): missing files, or a
    recipe other than today's configs with ``--set``, ``--seed`` and the variant's skip flag."""
    results = out_dir / "results.json"
    if not (results.is_file() and (out_dir / "probabilities.npy").is_file()):
        return "no results yet"
    stored = json.loads(results.read_text()).get("recipe")
    variant = argparse.Namespace(seed=args.seed, no_skips=not skips, set=args.set, device=None)
    expected = eval_isbi.recipe(eval_isbi.bundle_overrides(variant), eval_isbi.RECIPE_CONFIGS)
    if stored != expected:
        return "its recipe differs from configs/isbi2012.json with these options" if stored else "no recipe recorded"
    return None


def run_variant(out_dir: Path, skips: bool, args: argparse.Namespace) -> dict:
    results = out_dir / "results.json"
    reason = "--retrain" if args.retrain else stale(out_dir, skips, args)
    if reason not in (None, "--retrain", "no results yet"):
        raise SystemExit(
            f"{results}: {reason} (skip_connections={skips}). Give --retrain to replace it, or another "
            f"{'--skips-dir' if skips else '--no-skips-dir'}."
        )
    if reason is not None:
        print(f"training {out_dir} ({reason})", flush=True)
        argv = ["--out-dir", str(out_dir), "--data", str(args.data), "--seed", str(args.seed)]
        argv += [] if skips else ["--no-skips"]
        argv += ["--set", *args.set] if args.set else []
        eval_isbi.main(argv)
    return json.loads(results.read_text())


def junctions(membrane: np.ndarray) -> np.ndarray:
    """(N, 2) pixel coordinates where three or more membranes meet (skeleton pixels with >= 3 neighbours)."""
    skeleton = skeletonize(membrane)
    neighbours = ndi.convolve(skeleton.astype(np.uint8), np.ones((3, 3), np.uint8), mode="constant") - 1
    return np.argwhere(skeleton & (neighbours >= 3))


def pick_junction(labels: np.ndarray, with_skips: np.ndarray, without: np.ndarray) -> tuple[int, int, int]:
    """(section index, row, col) of the label junction whose close-up window differs most between the two maps."""
    half = CLOSE_UP // 2
    best, where = -1.0, (0, half, half)
    for s in range(len(labels)):
        diff = ndi.uniform_filter(np.abs(with_skips[s] - without[s]), CLOSE_UP, mode="constant")
        for r, c in junctions(labels[s]):
            if half <= r < labels.shape[1] - half and half <= c < labels.shape[2] - half and diff[r, c] > best:
                best, where = float(diff[r, c]), (s, int(r), int(c))
    return where


def _gray(x: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)).convert("RGB")


def figure(
    image: np.ndarray, label: np.ndarray, maps: list[np.ndarray], centre: tuple[int, int], section: int, path: Path
) -> None:
    """Input, label and membrane maps: the whole section (box = close-up) above, the junction close-up below."""
    titles = [f"input (section {section:02d})", "label", "U-Net with skips", "without skips"]
    panels = [image, 1.0 - label, *(1.0 - m for m in maps)]
    r, c = centre
    half = CLOSE_UP // 2
    box = (c - half, r - half, c + half, r + half)
    scale = PANEL / image.shape[1]
    head = 18
    canvas = Image.new("RGB", (4 * PANEL + 5 * 8, 2 * (PANEL + head) + 3 * 8), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (panel, title) in enumerate(zip(panels, titles)):
        x0 = 8 + i * (PANEL + 8)
        whole = _gray(panel).resize((PANEL, PANEL), Image.Resampling.BILINEAR)
        ImageDraw.Draw(whole).rectangle([round(v * scale) for v in box], outline=(255, 0, 0), width=2)
        canvas.paste(whole, (x0, 8 + head))
        close = _gray(panel).crop(box).resize((CLOSE_UP * ZOOM, CLOSE_UP * ZOOM), Image.Resampling.NEAREST)
        canvas.paste(close, (x0, 16 + 2 * head + PANEL))
        draw.text((x0, 8), title, fill="black")
        draw.text((x0, 16 + head + PANEL), f"{title.split(' (')[0]}: junction close-up", fill="black")
    with atomic_output(path) as tmp:
        canvas.save(tmp, format="PNG")


def table(rows: list[tuple[str, dict]]) -> str:
    lines = [
        "| ISBI 2012, held-out sections 16-19 | pixel error | Rand error | Rand error, cells grown | membrane Dice "
        "| training | iterations |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in rows:
        m = r["mean"]
        minutes = "n/a" if r.get("train_seconds") is None else f"{r['train_seconds'] / 60:.1f} min"
        lines.append(
            f"| {name} | {m['pixel_error']:.4f} | {m['rand_error']:.4f} | {m['rand_error_grown']:.4f} "
            f"| {m['dice']:.4f} | {minutes} | {r.get('iterations')} |"
        )
    lines.append(
        f"| paper, U-Net (challenge **test** stack, not comparable split) | {eval_isbi.PAPER['pixel_error']} | "
        f"{eval_isbi.PAPER['rand_error']} | - | - | 10 h (GPU) | - |"
    )
    lines += [
        "",
        "The same runs, each metric at the probability threshold chosen for it on the training sections 00-15 "
        "(the held-out sections choose nothing):",
        "",
        "| ISBI 2012, held-out sections 16-19 | pixel error (p >) | Rand error (p >) | Rand error, cells grown (p >) |",
        "|---|---|---|---|",
    ]
    for name, r in rows:
        at, chosen = r.get("mean_at_training_thresholds"), r.get("thresholds_from_training_sections")
        if at is None:
            continue
        cells = " | ".join(f"{at[k]:.4f} ({chosen[k]})" for k in ("pixel_error", "rand_error", "rand_error_grown"))
        lines.append(f"| {name} | {cells} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=eval_isbi.DEFAULT_DATA, help="ISBI 2012 folder (images/, labels/)")
    p.add_argument("--skips-dir", type=Path, default=REPO / "runs" / "isbi2012", help="run with skip connections")
    p.add_argument("--no-skips-dir", type=Path, default=REPO / "runs" / "isbi2012_noskip", help="run without")
    p.add_argument("--docs", type=Path, default=REPO / "docs", help="where the table and the PNG go")
    p.add_argument("--retrain", action="store_true", help="train both variants even when results exist")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="bundle config overrides (both runs)")
    args = p.parse_args(argv)

    with_skips = run_variant(args.skips_dir.resolve(), True, args)
    without = run_variant(args.no_skips_dir.resolve(), False, args)
    probs = [np.load(d.resolve() / "probabilities.npy").astype(np.float32) for d in (args.skips_dir, args.no_skips_dir)]
    labels = np.stack(
        [eval_isbi.read_section(args.data / "labels", i) < 128 for i in eval_isbi.TEST_SECTIONS]
    )  # membrane = True
    s, r, c = pick_junction(labels, probs[0], probs[1])
    image = eval_isbi.read_section(args.data / "images", eval_isbi.TEST_SECTIONS[s]) / 255.0

    args.docs.mkdir(parents=True, exist_ok=True)
    png = args.docs / "ablation_skips.png"
    section = eval_isbi.TEST_SECTIONS[s]
    figure(image, labels[s].astype(np.float32), [probs[0][s], probs[1][s]], (r, c), section, png)
    text = table([("U-Net (skip connections)", with_skips), ("without skip connections", without)])
    note = (
        f"\n\nFigure `ablation_skips.png`: section {section:02d}; close-up around the label junction at row {r}, "
        f"column {c}, the junction where the two membrane maps differ most.\n\nCommands: `python scripts/eval_isbi.py`"
        f" then `python scripts/ablation_skips.py`; machine: {with_skips.get('machine')}.\n"
    )
    with atomic_output(args.docs / "ablation_skips.md") as tmp:
        tmp.write_text("# Skip connections on ISBI 2012 (B6)\n\n" + text + note)
    print(text)
    print(f"figure: {png} (section {section:02d}, junction at row {r}, column {c})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
