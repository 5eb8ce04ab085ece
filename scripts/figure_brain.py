"""A figure of one held-out brain study: its four MR sequences, the tumour mask and the prediction on one slice.

Reads the study's DICOM series (T1prereg, T1post, T2reg, FLAIRreg, MaskTumor) and a prediction on the study's own
grid (a NIfTI written by ``monai-unet predict``, or any volume/series folder ``LoadImage`` reads), all in RAS, and
draws the axial slice where the mask is largest: the four sequences (each scaled to its own 1st-99th percentile),
then FLAIR with the mask (green) and with the prediction (red) outlined, under a one-line caption with the Dice.

Usage:
    python scripts/figure_brain.py --study STUDY_FOLDER --prediction runs/brain_cv/.../STUDY.nii.gz \
        --out docs/brain_tumor_figure.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_brain_dicom import ALL_CHANNELS, LABEL_SERIES, dice, load_ras

PANEL = 256
GAP = 6
HEAD = 18


def _series(study: Path, pattern: str) -> Path:
    found = sorted(p for p in study.glob(pattern) if p.is_dir())
    if len(found) != 1:
        raise SystemExit(f"{study}: expected one series folder matching {pattern!r}, found {[p.name for p in found]}")
    return found[0]


def _gray(x: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(x, [1, 99])
    return np.clip((x - lo) / max(hi - lo, 1e-6), 0.0, 1.0)


def _view(x: np.ndarray) -> np.ndarray:
    """An RAS slice (X, Y) as an image: rows anterior at the top, the patient's right on the viewer's
    right (neurological convention, as the RAS array lies)."""
    return np.flipud(np.asarray(x).T)


def _outline(mask: np.ndarray) -> np.ndarray:
    inner = mask.copy()
    inner[1:-1, 1:-1] = mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
    return mask & ~inner


def _panel(gray: np.ndarray, outline: np.ndarray | None = None, color: tuple[int, int, int] = (0, 0, 0)) -> Image:
    rgb = np.repeat((gray * 255.0 + 0.5).astype(np.uint8)[..., None], 3, axis=-1)
    if outline is not None:
        rgb[outline] = color
    img = Image.fromarray(rgb)
    scale = PANEL / max(img.size)
    return img.resize((round(img.size[0] * scale), round(img.size[1] * scale)), Image.Resampling.NEAREST)


def figure(study: Path, prediction: Path, out: Path) -> dict:
    """Write the figure; returns the slice index and the Dice of the whole volume and of the slice."""
    images = {name: load_ras(_series(study, pattern)) for name, pattern in ALL_CHANNELS.items()}
    mask = load_ras(_series(study, LABEL_SERIES)) > 0
    pred = load_ras(prediction) > 0
    if pred.shape != mask.shape:
        raise SystemExit(f"{prediction} {pred.shape} is not on the grid of {study} {mask.shape}")
    z = int(np.argmax(mask.sum(axis=(0, 1))))
    panels = [(name, _panel(_gray(_view(v[..., z])))) for name, v in images.items()]
    flair = _gray(_view(images["FLAIR"][..., z]))
    panels.append(("mask", _panel(flair, _outline(_view(mask[..., z])), (0, 255, 0))))
    panels.append(("prediction", _panel(flair, _outline(_view(pred[..., z])), (255, 0, 0))))
    w, h = panels[0][1].size
    canvas = Image.new("RGB", (len(panels) * (w + GAP) + GAP, h + 2 * HEAD + 2 * GAP), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (name, img) in enumerate(panels):
        x = GAP + i * (w + GAP)
        draw.text((x + 2, GAP), name, fill=(0, 0, 0))
        canvas.paste(img, (x, GAP + HEAD))
    result = {"slice": z, "dice": dice(pred, mask), "slice_dice": dice(pred[..., z], mask[..., z])}
    caption = (
        f"{study.parent.name} / {study.name[:10]}, axial slice {z}: Dice {result['dice']:.3f} over the volume, "
        f"{result['slice_dice']:.3f} on this slice"
    )
    draw.text((GAP + 2, GAP + HEAD + h + 4), caption, fill=(0, 0, 0))
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--study", type=Path, required=True, help="the held-out study folder (its DICOM series)")
    p.add_argument("--prediction", type=Path, required=True, help="the label map on the study's grid")
    p.add_argument("--out", type=Path, default=Path("docs/brain_tumor_figure.png"))
    args = p.parse_args(argv)
    result = figure(args.study, args.prediction, args.out)
    print(f"figure: {args.out} (slice {result['slice']}, Dice {result['dice']:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
