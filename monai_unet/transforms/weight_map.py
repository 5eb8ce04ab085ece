"""The border weight map of the U-Net paper, as a MONAI array + dictionary transform.

``w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))`` where ``d1``/``d2`` are the distances to the nearest
and the second-nearest object (cell) and ``w_c`` balances the class frequencies (object versus background).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_data_type, convert_to_dst_type
from scipy import ndimage as ndi

__all__ = ["BorderWeightMap", "BorderWeightMapd", "border_weight_map", "object_labels"]


def object_labels(
    label: np.ndarray,
    instance: bool = False,
    foreground: float | Sequence[float] | None = None,
    connectivity: int = 1,
) -> tuple[np.ndarray, int]:
    """The objects of a label map as an instance map.

    Args:
        label: spatial label map ``(*S)`` (no channel axis).
        instance: ``True`` if ``label`` already holds instance ids (0 = no object, each positive id one object).
        foreground: for a binary/semantic label, the value(s) that mark object pixels; ``None`` means every
            non-zero value. For ISBI 2012 labels (0 = membrane, 255 = cell) ``None`` or ``255`` gives the cells; for
            labels with membrane as class 1 and cell as class 0 use ``0``.
        connectivity: neighbourhood of the connected components, as in ``scipy.ndimage.generate_binary_structure``
            (1: faces only, so that cells touching at a corner across a thin diagonal membrane stay apart).

    Returns:
        ``(ids, n)``: an int32 map ``(*S)`` with 0 outside objects and ``1..n`` inside them, and ``n``.
    """
    if instance:
        if label.size and label.min() < 0:
            raise ValueError(f"instance labels must be non-negative (0 = no object), got minimum {label.min()}.")
        uniq, ids = np.unique(label, return_inverse=True)
        ids = ids.reshape(label.shape).astype(np.int32)
        if uniq[0] != 0:  # no background value: every id is an object
            ids += 1
        return ids, int(ids.max(initial=0))
    if foreground is None:
        mask = label != 0
    else:
        mask = np.isin(label, np.atleast_1d(np.asarray(foreground, dtype=label.dtype)))
    structure = ndi.generate_binary_structure(label.ndim, connectivity)
    ids, n = ndi.label(mask, structure=structure, output=np.int32)
    return ids, int(n)


def _two_nearest(ids: np.ndarray, n: int, spacing: tuple[float, ...], radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Distances to the nearest and second-nearest object, exact wherever the second one is within ``radius``.

    One Euclidean distance transform per object, but only over the object's bounding box grown by ``radius``
    (a pixel farther than ``radius`` from an object cannot have it as one of its two nearest objects within
    ``radius``). Elsewhere the values are ``>= radius`` or ``inf``.
    """
    d1 = np.full(ids.shape, np.inf, dtype=np.float32)
    d2 = np.full(ids.shape, np.inf, dtype=np.float32)
    margin = [math.ceil(radius / s) for s in spacing]
    for k, box in enumerate(ndi.find_objects(ids), start=1):
        if box is None:
            continue
        grown = tuple(slice(max(b.start - m, 0), min(b.stop + m, size)) for b, m, size in zip(box, margin, ids.shape))
        dist = ndi.distance_transform_edt(ids[grown] != k, sampling=spacing).astype(np.float32, copy=False)
        near, second = d1[grown], d2[grown]  # views: updated in place
        np.minimum(second, np.maximum(near, dist), out=second)
        np.minimum(near, dist, out=near)
    return d1, d2


def border_weight_map(
    ids: np.ndarray,
    w0: float = 10.0,
    sigma: float = 5.0,
    class_balance: bool = True,
    spacing: Sequence[float] | None = None,
    truncate: float = 5.0,
) -> np.ndarray:
    """The paper's weight map for an instance map.

    ``w = w_c + w0 * exp(-(d1 + d2)^2 / (2 sigma^2))``. The border term is applied to pixels outside every object
    (the gaps between touching cells, as in the paper's figure 3d) and needs at least two objects; it is set to
    0 where ``d1 + d2 > truncate * sigma`` (there it is below ``w0 * exp(-truncate^2 / 2)``, 3.7e-5 for the
    defaults), which bounds the work per object.

    Args:
        ids: instance map ``(*S)``, 0 outside objects (see :func:`object_labels`).
        w0: border weight.
        sigma: border width, in the units of ``spacing`` (pixels when ``spacing`` is ``None``).
        class_balance: ``w_c = N / (2 N_k)`` for the ``N_k`` pixels of class ``k`` (object or background), so that
            both classes carry the same total weight and the mean of ``w_c`` is 1; ``False`` gives ``w_c = 1``.
            With only one class present ``w_c = 1``.
        spacing: physical size of a pixel/voxel along each axis (honoured by the distances), ``None`` for 1.
        truncate: cut-off of the border term in units of ``sigma``.

    Returns:
        float32 array ``(*S)``.
    """
    if w0 < 0 or sigma <= 0 or truncate <= 0:
        raise ValueError(f"need w0 >= 0, sigma > 0 and truncate > 0; got w0={w0}, sigma={sigma}, truncate={truncate}.")
    spacing_t = (1.0,) * ids.ndim if spacing is None else tuple(float(s) for s in spacing)
    if len(spacing_t) != ids.ndim or min(spacing_t) <= 0:
        raise ValueError(f"spacing needs {ids.ndim} positive values (one per spatial axis), got {spacing}.")
    inside = ids > 0
    weight = np.ones(ids.shape, dtype=np.float32)
    if class_balance:
        n_obj = int(inside.sum())
        n_bg = inside.size - n_obj
        if n_obj and n_bg:
            weight[inside] = inside.size / (2.0 * n_obj)
            weight[~inside] = inside.size / (2.0 * n_bg)
    n = int(ids.max(initial=0))
    if w0 > 0 and n >= 2:
        radius = truncate * sigma
        d1, d2 = _two_nearest(ids, n, spacing_t, radius)
        total = d1 + d2
        near = (total <= radius) & ~inside
        weight[near] += w0 * np.exp(-(total[near] ** 2) / (2.0 * sigma**2))
    return weight


def _spacing_of(
    label: NdarrayOrTensor, spacing: Sequence[float] | float | str | None, ndim: int
) -> tuple[float, ...] | None:
    if spacing is None:
        return None
    if isinstance(spacing, str):
        if spacing != "pixdim":
            raise ValueError(f"spacing must be None, numbers or 'pixdim', got {spacing!r}.")
        if not isinstance(label, MetaTensor):
            raise ValueError("spacing='pixdim' needs a MetaTensor label (from LoadImage) that carries its pixdim.")
        return tuple(float(s) for s in label.pixdim[:ndim])
    if isinstance(spacing, (int, float)):
        return (float(spacing),) * ndim
    return tuple(float(s) for s in spacing)


class BorderWeightMap(Transform):
    """Make the paper's border weight map from a label (instance ids, or a binary label whose objects are found).

    Args:
        w0: border weight (10 in the paper).
        sigma: border width (5 px in the paper), in the units of ``spacing``.
        class_balance: add ``w_c`` balancing object and background pixels (equal total weight per class, mean 1);
            ``False`` uses ``w_c = 1``.
        instance: the label holds instance ids (0 = no object) instead of a binary/semantic label.
        foreground: for a binary label, the value(s) of object pixels (``None``: every non-zero value); objects are
            its connected components. ISBI 2012 (0 membrane, 255 cell): ``None``; membrane-as-class-1 labels: ``0``.
        connectivity: connectivity of the components (1 = faces only).
        spacing: ``None`` (pixel units), one number or one per spatial axis (e.g. ``(0.8, 0.8, 6.5)`` mm), or
            ``"pixdim"`` to read it from the label's MetaTensor; distances and ``sigma`` are in these units.
        truncate: the border term is cut off where ``d1 + d2 > truncate * sigma``.

    Input ``(1, *S)`` label (array or tensor, 2D or 3D); output ``(1, *S)`` float32 of the same type (a MetaTensor
    keeps its metadata). About 50 ms for a 512x512 ISBI 2012 label on one core (``scripts/bench_weightmap.py``).
    """

    backend = (TransformBackends.NUMPY, TransformBackends.TORCH)

    def __init__(
        self,
        w0: float = 10.0,
        sigma: float = 5.0,
        class_balance: bool = True,
        instance: bool = False,
        foreground: float | Sequence[float] | None = None,
        connectivity: int = 1,
        spacing: Sequence[float] | float | str | None = None,
        truncate: float = 5.0,
    ) -> None:
        if w0 < 0 or sigma <= 0 or truncate <= 0:
            raise ValueError(
                f"need w0 >= 0, sigma > 0 and truncate > 0; got w0={w0}, sigma={sigma}, truncate={truncate}."
            )
        self.w0 = w0
        self.sigma = sigma
        self.class_balance = class_balance
        self.instance = instance
        self.foreground = foreground
        self.connectivity = connectivity
        self.spacing = spacing
        self.truncate = truncate

    def __call__(self, label: NdarrayOrTensor) -> NdarrayOrTensor:
        """``(1, *S)`` label -> ``(1, *S)`` float32 weight map."""
        if label.ndim < 2 or label.shape[0] != 1:
            raise ValueError(
                f"BorderWeightMap expects a channel-first label with one channel, (1, *spatial); got shape "
                f"{tuple(label.shape)}. Turn one-hot labels into class indices first (AsDiscreted(argmax=True))."
            )
        ndim = label.ndim - 1
        arr = convert_data_type(label, np.ndarray)[0][0]
        ids, _ = object_labels(arr, self.instance, self.foreground, self.connectivity)
        weight = border_weight_map(
            ids, self.w0, self.sigma, self.class_balance, _spacing_of(label, self.spacing, ndim), self.truncate
        )
        dtype = torch.float32 if torch.is_tensor(label) else np.float32
        out, *_ = convert_to_dst_type(weight[None], label, dtype=dtype)
        return out


class BorderWeightMapd(MapTransform):
    """Dictionary version of :class:`BorderWeightMap`: the weight map of ``data[key]`` goes to ``data[weight_key]``.

    Args:
        keys: label keys.
        weight_keys: where to store each map (one per key); ``None`` gives ``"<key>_weight"``.
        w0, sigma, class_balance, instance, foreground, connectivity, spacing, truncate: see :class:`BorderWeightMap`.
        allow_missing_keys: don't raise if a key is missing.
    """

    backend = BorderWeightMap.backend

    def __init__(
        self,
        keys: KeysCollection,
        weight_keys: KeysCollection | None = None,
        w0: float = 10.0,
        sigma: float = 5.0,
        class_balance: bool = True,
        instance: bool = False,
        foreground: float | Sequence[float] | None = None,
        connectivity: int = 1,
        spacing: Sequence[float] | float | str | None = None,
        truncate: float = 5.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if weight_keys is None:
            self.weight_keys: tuple[Hashable, ...] = tuple(f"{k}_weight" for k in self.keys)
        else:
            self.weight_keys = (weight_keys,) if isinstance(weight_keys, (str, int)) else tuple(weight_keys)
        if len(self.weight_keys) != len(self.keys):
            raise ValueError(f"need one weight key per key: keys={self.keys}, weight_keys={self.weight_keys}.")
        self.converter = BorderWeightMap(
            w0, sigma, class_balance, instance, foreground, connectivity, spacing, truncate
        )

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key, weight_key in self.key_iterator(d, self.weight_keys):
            d[weight_key] = self.converter(d[key])
        return d
