"""Synthetic datasets on disk: the embedded default that a bundle trains on when no dataset is given.

- :func:`make_em_dataset`: 2D electron-microscopy-like sections in the ISBI 2012 layout (``images/*.png``,
  ``labels/*.png``; label 0 = membrane, 255 = cell interior), so the datalist that reads ISBI reads these too.
- :func:`make_volume_dataset`: 3D NIfTI volumes with blob-like structures and real geometry (anisotropic spacing,
  oblique direction, non-zero origin) in the Medical Segmentation Decathlon layout (``imagesTr/``, ``labelsTr/``,
  ``dataset.json``).

Both are deterministic for a seed (item ``i`` draws from ``numpy.random.default_rng([seed, i])``), idempotent (a
complete dataset in ``out_dir`` is left alone) and write every file atomically.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from monai_unet.data._files import ensure_generated
from monai_unet.io.writers import write_json, write_nifti, write_png

__all__ = ["em_section", "make_em_dataset", "make_volume_dataset", "volume_sample"]

EM_GENERATOR_VERSION = 1
VOLUME_GENERATOR_VERSION = 1


def _smooth_noise(rng: np.random.Generator, shape: Sequence[int], scale: float | Sequence[float]) -> np.ndarray:
    """Smooth random field, standard deviation about 1, with features about ``scale`` voxels across (per axis).

    Drawn on a coarse grid and upsampled with cubic splines, which is much faster than a wide Gaussian filter.
    """
    scales = [float(scale)] * len(shape) if np.isscalar(scale) else [float(s) for s in scale]
    coarse = [max(2, int(np.ceil(n / max(c, 1.0))) + 1) for n, c in zip(shape, scales)]
    field = rng.standard_normal(coarse).astype(np.float32)
    zoomed = ndi.zoom(field, [n / c for n, c in zip(shape, coarse)], order=3, mode="mirror", grid_mode=True)
    return zoomed[tuple(slice(0, n) for n in shape)]


# ----------------------------------------------------------------------------------------------------------- 2D EM


def em_section(size: int | Sequence[int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw one EM-like section and its membrane label.

    Cells are an additively weighted Voronoi tessellation of random seeds computed on randomly warped coordinates
    (irregular, curved cell walls, varied cell sizes). Membranes are the cell walls with a width that varies
    smoothly across the image (about 2-7 px), drawn dark with a soft profile. Cell interiors get a per-cell grey
    level, fine texture, small dark vesicles and a few darker mitochondria-like ellipses (labelled interior, as in
    ISBI 2012); then uneven illumination, blur and noise.

    Args:
        size: ``H`` or ``(H, W)`` in pixels.
        rng: random generator (the only source of randomness).

    Returns:
        ``(image, label)``, both uint8 ``(H, W)``; label 0 = membrane, 255 = interior.
    """
    h, w = (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))
    pad = 48
    mean_cell_area = rng.uniform(1500.0, 2300.0)  # ISBI 2012: about 130 cells in 512 x 512
    n = max(4, int(rng.poisson((h + 2 * pad) * (w + 2 * pad) / mean_cell_area)))
    seeds = np.stack([rng.uniform(-pad, h + pad, n), rng.uniform(-pad, w + pad, n)], axis=1)
    weights = rng.gamma(2.0, 3.0, n)  # additive weights: some cells grow at the expense of their neighbours

    # Voronoi cells on warped coordinates: wavy, irregular walls.
    warp = 6.0 * np.stack([_smooth_noise(rng, (h, w), 24.0), _smooth_noise(rng, (h, w), 24.0)])
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    coords = np.stack([yy + warp[0], xx + warp[1]], axis=-1).reshape(-1, 2)
    k = min(6, n)
    dist, idx = cKDTree(seeds).query(coords, k=k)
    idx = idx.reshape(-1, k)
    best = np.argmin(dist.reshape(-1, k) - weights[idx], axis=1)
    cells = idx[np.arange(idx.shape[0]), best].reshape(h, w)

    # Membranes: everything within a varying half-width of a cell wall.
    wall = np.zeros((h, w), bool)
    wall[:-1, :] |= cells[:-1, :] != cells[1:, :]
    wall[:, :-1] |= cells[:, :-1] != cells[:, 1:]
    to_wall = ndi.distance_transform_edt(~wall).astype(np.float32)
    half_width = np.clip(2.3 + 0.9 * _smooth_noise(rng, (h, w), 40.0), 1.3, 4.5)
    membrane = to_wall < half_width

    # Interior: per-cell grey level, texture, vesicles.
    cell_grey = rng.normal(150.0, 8.0, n).astype(np.float32)
    img = cell_grey[cells]
    img += 9.0 * _smooth_noise(rng, (h, w), 3.0) + 5.0 * rng.standard_normal((h, w)).astype(np.float32)
    dots = (rng.random((h, w)) < 0.0015).astype(np.float32)
    img -= 900.0 * ndi.gaussian_filter(dots, 1.3) * (to_wall > half_width + 2)

    # Mitochondria-like organelles: darker ellipses with a dark rim, inside cells, labelled interior.
    for _ in range(rng.integers(1, 5)):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        a, b = rng.uniform(8, 22), rng.uniform(5, 11)
        t = rng.uniform(0, np.pi)
        y0, y1, x0, x1 = int(max(0, cy - a)), int(min(h, cy + a + 1)), int(max(0, cx - a)), int(min(w, cx + a + 1))
        if y1 <= y0 or x1 <= x0:
            continue
        dy, dx = yy[y0:y1, x0:x1] - cy, xx[y0:y1, x0:x1] - cx
        r = ((dy * np.cos(t) + dx * np.sin(t)) / a) ** 2 + ((-dy * np.sin(t) + dx * np.cos(t)) / b) ** 2
        inside = (r < 1.0) & (to_wall[y0:y1, x0:x1] > half_width[y0:y1, x0:x1] + 1.5)
        rim = inside & (r > 0.7)
        patch = img[y0:y1, x0:x1]
        patch[inside] -= 45.0
        patch[rim] -= 25.0

    # Dark membranes with a soft cross-profile, deepest on the wall.
    depth = 85.0 + 12.0 * _smooth_noise(rng, (h, w), 30.0)
    img -= depth * np.exp(-0.5 * (to_wall / half_width) ** 4)

    # Uneven illumination, blur, noise.
    img *= 1.0 + 0.07 * _smooth_noise(rng, (h, w), 128.0)
    img = ndi.gaussian_filter(img, rng.uniform(0.8, 1.3))
    img += rng.normal(0.0, 7.0, (h, w)).astype(np.float32)
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    label = np.where(membrane, 0, 255).astype(np.uint8)
    return image, label


def make_em_dataset(
    out_dir: str | os.PathLike, num_images: int = 30, size: int | Sequence[int] = 512, seed: int = 0
) -> Path:
    """Write an EM-like membrane dataset in the ISBI 2012 layout, unless it is already complete there.

    Layout: ``out_dir/images/em_NNN.png`` and ``out_dir/labels/em_NNN.png`` (uint8 greyscale; label 0 = membrane,
    255 = cell interior, about 20-25 % membrane like ISBI 2012). See :func:`em_section` for what is drawn.

    Args:
        out_dir: destination folder (created; must be empty or hold this same dataset).
        num_images: number of image/label pairs.
        size: image size ``H`` or ``(H, W)``.
        seed: random seed; image ``i`` depends only on ``(seed, i, size)``.

    Returns:
        ``out_dir`` as a Path.

    Raises:
        ValueError: bad arguments, or ``out_dir`` holds something else.
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}.")
    size_hw = [int(size)] * 2 if np.isscalar(size) else [int(s) for s in size]
    if len(size_hw) != 2 or min(size_hw) < 16:
        raise ValueError(f"size must be an int or (H, W) with both >= 16, got {size}.")
    out = Path(out_dir)
    names = [f"em_{i:03d}.png" for i in range(num_images)]
    items = [(f"images/{n}", f"labels/{n}") for n in names]

    def make_item(i: int) -> None:
        image, label = em_section(size_hw, np.random.default_rng([seed, i]))
        write_png(label, out / items[i][1])  # label first: the image's presence marks the pair
        write_png(image, out / items[i][0])

    params = {"num_images": num_images, "size": size_hw, "seed": seed, "version": EM_GENERATOR_VERSION}
    return ensure_generated(out, "em", params, items, make_item)


# -------------------------------------------------------------------------------------------------------- 3D volume


def _rotation(angles: Sequence[float]) -> np.ndarray:
    """Rotation matrix from angles (radians) about x, y, z, applied in that order."""
    ax, ay, az = angles
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def volume_sample(
    shape: Sequence[int], spacing: Sequence[float], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one MR-like volume with blob-like structures, its label and its affine.

    A head-like ellipsoid of textured tissue on a dark background holds 2-4 irregular blobs (ellipsoids in
    millimetres, randomly oriented, their surfaces perturbed by smooth noise) that are brighter than the tissue.
    A multiplicative bias field and Gaussian noise are added. Shapes are drawn in physical space, so blobs are
    round in millimetres and anisotropic in voxels.

    Args:
        shape: ``(X, Y, Z)`` voxels.
        spacing: voxel size in mm, ``(sx, sy, sz)``.
        rng: random generator (the only source of randomness).

    Returns:
        ``(image, label, affine)``: float32 ``(X, Y, Z)``, uint8 ``(X, Y, Z)`` in {0, 1}, and the 4x4 voxel-to-RAS
        affine (oblique direction, the given spacing, a non-zero origin).
    """
    shape = tuple(int(s) for s in shape)
    sp = np.asarray(spacing, dtype=np.float64)
    grid = [(np.arange(n, dtype=np.float32) - (n - 1) / 2) * s for n, s in zip(shape, sp)]
    x, y, z = np.meshgrid(*grid, indexing="ij")
    extent = np.array([n * s for n, s in zip(shape, sp)])
    scale = 12.0 / sp  # smooth-noise feature size: 12 mm, in voxels per axis

    body_r = extent / 2 * rng.uniform(0.8, 0.92, 3)
    body = (x / body_r[0]) ** 2 + (y / body_r[1]) ** 2 + (z / body_r[2]) ** 2
    body = body + 0.08 * _smooth_noise(rng, shape, 2 * scale) < 1.0
    tissue = np.where(body, 100.0 + 8.0 * _smooth_noise(rng, shape, scale / 3), 8.0).astype(np.float32)

    label = np.zeros(shape, bool)
    blob_grey = np.zeros(shape, np.float32)
    radius_max = 0.16 * float(extent.min())
    for _ in range(rng.integers(2, 5)):
        radii = rng.uniform(0.45, 1.0, 3) * radius_max
        centre = rng.uniform(-0.55, 0.55, 3) * (body_r - radii.max())
        rot = _rotation(rng.uniform(-np.pi, np.pi, 3)).astype(np.float32)
        d = np.stack([x - centre[0], y - centre[1], z - centre[2]])
        local = np.tensordot(rot.T, d, axes=1)
        f = sum((local[i] / radii[i]) ** 2 for i in range(3))
        blob = (f + 0.25 * _smooth_noise(rng, shape, scale) < 1.0) & body
        label |= blob
        blob_grey[blob] = rng.uniform(45.0, 80.0)
    image = tissue + ndi.gaussian_filter(blob_grey, 0.6 / sp * sp.min())
    bias = np.exp(0.15 * _smooth_noise(rng, shape, 4 * scale))
    image = image * bias + rng.normal(0.0, 6.0, shape).astype(np.float32)

    affine = np.eye(4)
    affine[:3, :3] = _rotation(rng.uniform(np.radians(5), np.radians(20), 3) * rng.choice([-1, 1], 3)) @ np.diag(sp)
    affine[:3, 3] = rng.uniform(-60.0, 60.0, 3) - affine[:3, :3] @ ((np.asarray(shape) - 1) / 2)
    return image.astype(np.float32), label.astype(np.uint8), affine


def make_volume_dataset(
    out_dir: str | os.PathLike,
    num_volumes: int = 12,
    shape: Sequence[int] = (96, 96, 32),
    spacing: Sequence[float] = (1.0, 1.0, 3.0),
    seed: int = 0,
) -> Path:
    """Write a 3D blob-segmentation dataset in the Decathlon layout, unless it is already complete there.

    Layout: ``out_dir/imagesTr/blob_NNN.nii.gz`` (float32), ``out_dir/labelsTr/blob_NNN.nii.gz`` (uint8, 0 =
    background, 1 = blob) and ``out_dir/dataset.json`` (MSD-style; ``training`` lists every pair, read it with
    ``monai.data.load_decathlon_datalist``). Every volume has its own oblique direction and origin, and the given
    spacing (qform = sform). See :func:`volume_sample` for what is drawn.

    Args:
        out_dir: destination folder (created; must be empty or hold this same dataset).
        num_volumes: number of image/label pairs.
        shape: ``(X, Y, Z)`` voxels per volume.
        spacing: voxel size in mm; anisotropic by default, like clinical scans.
        seed: random seed; volume ``i`` depends only on ``(seed, i, shape, spacing)``.

    Returns:
        ``out_dir`` as a Path.

    Raises:
        ValueError: bad arguments, or ``out_dir`` holds something else.
    """
    shape = [int(s) for s in shape]
    spacing = [float(s) for s in spacing]
    if num_volumes < 1:
        raise ValueError(f"num_volumes must be >= 1, got {num_volumes}.")
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"shape must be (X, Y, Z) with every size >= 8, got {shape}.")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must be three positive numbers (mm), got {spacing}.")
    out = Path(out_dir)
    names = [f"blob_{i:03d}.nii.gz" for i in range(num_volumes)]
    items = [(f"imagesTr/{n}", f"labelsTr/{n}") for n in names]

    def make_item(i: int) -> None:
        image, label, affine = volume_sample(shape, spacing, np.random.default_rng([seed, i]))
        write_nifti(label, affine, out / items[i][1])
        write_nifti(image, affine, out / items[i][0])

    def write_dataset_json() -> None:
        write_json(
            out / "dataset.json",
            {
                "name": "SyntheticBlobs",
                "description": "Synthetic MR-like volumes with blob-like structures (monai_unet embedded default)",
                "tensorImageSize": "3D",
                "reference": "generated by monai_unet.data.make_volume_dataset",
                "licence": "CC0",
                "modality": {"0": "MR"},
                "labels": {"0": "background", "1": "blob"},
                "numTraining": num_volumes,
                "numTest": 0,
                "training": [{"image": f"./{im}", "label": f"./{lb}"} for im, lb in items],
                "test": [],
            },
        )

    params = {
        "num_volumes": num_volumes,
        "shape": shape,
        "spacing": spacing,
        "seed": seed,
        "version": VOLUME_GENERATOR_VERSION,
    }
    return ensure_generated(out, "volume", params, items, make_item, write_dataset_json, ["dataset.json"])
