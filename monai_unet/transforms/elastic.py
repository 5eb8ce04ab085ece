"""Elastic deformation on a coarse control grid in N dimensions (the paper's deformation, for volumes too).

MONAI's ``Rand2DElastic`` already is the paper's 2D deformation (see :func:`monai_unet.transforms.paper_elastic_2d`);
its ``Rand3DElastic`` smooths dense noise instead. :class:`RandCoarseElastic` places ``control_points`` per axis
evenly from the first to the last voxel (3 per axis: the corners, edge midpoints and centre, the paper's 3x3 grid),
draws a normal displacement per control point with a per-axis standard deviation in voxels (volumes are often
anisotropic), interpolates it to every voxel with natural cubic splines (separable: the N-d analogue of bicubic)
and resamples with MONAI's ``Resample``. Output voxel ``x`` takes the input value at ``x + u(x)``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.data import get_track_meta
from monai.transforms import MapTransform, RandomizableTransform, Resample
from monai.transforms.utils import create_grid
from monai.utils import GridSampleMode, GridSamplePadMode, convert_to_tensor, ensure_tuple_rep
from scipy.interpolate import CubicSpline

__all__ = ["RandCoarseElastic", "RandCoarseElasticd", "coarse_displacement_field", "coarse_elastic_deform"]


def _interpolation_matrix(n_points: int, size: int) -> np.ndarray:
    """``(size, n_points)`` weights of a natural cubic spline through ``n_points`` evenly spread on ``[0, size-1]``."""
    if n_points == 1:
        return np.ones((size, 1))
    knots = np.linspace(0.0, max(size - 1, 1), n_points)
    return CubicSpline(knots, np.eye(n_points), bc_type="natural", axis=0)(np.arange(size, dtype=float))


def coarse_displacement_field(displacements: torch.Tensor, spatial_size: Sequence[int]) -> torch.Tensor:
    """Interpolate control-point displacements to every voxel.

    Args:
        displacements: ``(N, *P)``: for each of the ``N`` spatial axes, the displacement (in voxels) along that
            axis at the ``P[i]`` control points per axis.
        spatial_size: ``S``, ``N`` sizes.

    Returns:
        ``(N, *S)`` float32 displacement field; at a control point it equals the control point's displacement.
    """
    ndim = len(spatial_size)
    if displacements.dim() != ndim + 1 or displacements.shape[0] != ndim:
        raise ValueError(
            f"displacements must have shape (N, *control_points) with N = {ndim} spatial axes; "
            f"got {tuple(displacements.shape)}."
        )
    field = displacements.to(torch.float32)
    for axis, size in enumerate(spatial_size):
        weights = torch.as_tensor(
            _interpolation_matrix(field.shape[axis + 1], int(size)), dtype=torch.float32, device=field.device
        )
        field = torch.movedim(torch.tensordot(field, weights, dims=([axis + 1], [1])), -1, axis + 1)
    return field


def coarse_elastic_deform(
    img: torch.Tensor,
    displacements: torch.Tensor,
    mode: str | int = GridSampleMode.BILINEAR,
    padding_mode: str = GridSamplePadMode.REFLECTION,
) -> torch.Tensor:
    """Warp ``img`` ``(C, *S)`` by the field of ``displacements`` ``(N, *P)``; returns ``(C, *S)``.

    ``mode``/``padding_mode`` as in MONAI's ``Resample`` (``"nearest"`` for labels, which keeps their values).
    """
    spatial_size = tuple(int(s) for s in img.shape[1:])
    field = coarse_displacement_field(torch.as_tensor(displacements, device=img.device), spatial_size)
    grid = torch.as_tensor(create_grid(spatial_size, backend="torch", device=img.device), dtype=torch.float32)
    grid[: len(spatial_size)] += field
    return Resample(mode=mode, padding_mode=padding_mode, device=img.device)(img, grid)


class RandCoarseElastic(RandomizableTransform):
    """Random elastic deformation on a coarse control grid, for 2D and 3D (any N) channel-first images.

    Args:
        sigma: standard deviation of the control-point displacements in voxels, one value or one per spatial
            axis (the paper: 10 px; e.g. ``(10, 10, 1.5)`` for a volume with thick slices on the last axis).
        control_points: control points per axis (at least 1; 3 is the paper's 3x3 grid), one or one per axis.
        prob: probability of deforming (otherwise the input is returned unchanged).
        mode: interpolation of the image, as in MONAI's ``Resample``: ``"bilinear"`` (trilinear in 3D),
            ``"nearest"`` (labels), or a spline order 0-5.
        padding_mode: values sampled outside the image: ``"reflection"``, ``"border"`` or ``"zeros"``.

    ``__call__``: ``(C, *S)`` -> ``(C, *S)``, a MetaTensor for a MetaTensor.
    """

    backend = Resample.backend

    def __init__(
        self,
        sigma: Sequence[float] | float = 10.0,
        control_points: Sequence[int] | int = 3,
        prob: float = 0.1,
        mode: str | int = GridSampleMode.BILINEAR,
        padding_mode: str = GridSamplePadMode.REFLECTION,
    ) -> None:
        RandomizableTransform.__init__(self, prob)
        sigmas = np.atleast_1d(np.asarray(sigma, dtype=float))
        points = np.atleast_1d(np.asarray(control_points))
        if sigmas.ndim != 1 or (sigmas < 0).any():
            raise ValueError(f"sigma must be one non-negative number or one per spatial axis, got {sigma}.")
        if points.ndim != 1 or (points < 1).any() or not np.issubdtype(points.dtype, np.integer):
            raise ValueError(f"control_points must be one integer >= 1 or one per spatial axis, got {control_points}.")
        self.sigma = sigma
        self.control_points = control_points
        self.mode = mode
        self.padding_mode = padding_mode
        self.displacements: np.ndarray | None = None

    @staticmethod
    def _per_axis(value: Sequence[float] | float, ndim: int, name: str) -> tuple:
        values = np.atleast_1d(np.asarray(value)).tolist()
        if len(values) not in (1, ndim):
            raise ValueError(f"{name} has {len(values)} values but the image has {ndim} spatial axes: {value}.")
        return tuple(ensure_tuple_rep(values[0], ndim) if len(values) == 1 else values)

    def randomize(self, spatial_size: Sequence[int]) -> None:
        """Decide whether to deform and draw the control-point displacements ``(N, *P)`` for an image of ``S``."""
        super().randomize(None)
        if not self._do_transform:
            return
        ndim = len(spatial_size)
        sigmas = self._per_axis(self.sigma, ndim, "sigma")
        points = self._per_axis(self.control_points, ndim, "control_points")
        noise = self.R.standard_normal(size=(ndim, *points)).astype(np.float32)
        self.displacements = noise * np.asarray(sigmas, dtype=np.float32).reshape((ndim,) + (1,) * ndim)

    def __call__(
        self,
        img: NdarrayOrTensor,
        mode: str | int | None = None,
        padding_mode: str | None = None,
        randomize: bool = True,
    ) -> torch.Tensor:
        """Deform ``img`` ``(C, *S)``; ``randomize=False`` reuses the last draw (to move several images alike)."""
        img_t = convert_to_tensor(img, track_meta=get_track_meta())
        if randomize:
            self.randomize(img_t.shape[1:])
        if not self._do_transform:
            return img_t
        if self.displacements is None or self.displacements.shape[0] != img_t.dim() - 1:
            raise ValueError(
                f"no displacements drawn for a {img_t.dim() - 1}D image: call randomize(spatial_size) first."
            )
        return coarse_elastic_deform(
            img_t,
            torch.as_tensor(self.displacements),
            mode=self.mode if mode is None else mode,
            padding_mode=self.padding_mode if padding_mode is None else padding_mode,
        )


class RandCoarseElasticd(RandomizableTransform, MapTransform):
    """Dictionary version of :class:`RandCoarseElastic`: every key is moved by the same random field.

    Args:
        keys: keys to deform (image, label, weight map, ...).
        sigma, control_points, prob: see :class:`RandCoarseElastic`.
        mode: one interpolation mode or one per key, e.g. ``("bilinear", "nearest")`` for image and label.
        padding_mode: one padding mode or one per key.
        allow_missing_keys: don't raise if a key is missing.
    """

    backend = RandCoarseElastic.backend

    def __init__(
        self,
        keys: KeysCollection,
        sigma: Sequence[float] | float = 10.0,
        control_points: Sequence[int] | int = 3,
        prob: float = 0.1,
        mode: Sequence[str | int] | str | int = GridSampleMode.BILINEAR,
        padding_mode: Sequence[str] | str = GridSamplePadMode.REFLECTION,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.rand_elastic = RandCoarseElastic(sigma=sigma, control_points=control_points, prob=1.0)
        self.mode = ensure_tuple_rep(mode, len(self.keys))
        self.padding_mode = ensure_tuple_rep(padding_mode, len(self.keys))

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> RandCoarseElasticd:
        super().set_random_state(seed, state)
        self.rand_elastic.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        self.randomize(None)
        first_key = self.first_key(d)
        if not self._do_transform or first_key == ():
            for key in self.key_iterator(d):
                d[key] = convert_to_tensor(d[key], track_meta=get_track_meta())
            return d
        size = tuple(d[first_key].shape[1:])
        self.rand_elastic.randomize(size)
        for key, mode, padding_mode in self.key_iterator(d, self.mode, self.padding_mode):
            if tuple(d[key].shape[1:]) != size:
                raise ValueError(
                    f"RandCoarseElasticd moves all keys by one field, so they need one spatial size: "
                    f"'{first_key}' is {size} but '{key}' is {tuple(d[key].shape[1:])}."
                )
            d[key] = self.rand_elastic(d[key], mode=mode, padding_mode=padding_mode, randomize=False)
        return d
