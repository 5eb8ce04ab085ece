"""MONAI Label infer tasks for the bundles: MONAI Label's ``BundleInferTask`` on the bundle's ``inference.json``.

``BundleInferTask`` builds the pre-processing, the inferer (``monai_unet.inferers.OverlapTileInferer``) and the
post-processing from the bundle's own config, so a MONAI Label result is the bundle's result. What the tasks here
add:

- The label is returned in the model's class convention (``channel_def``: 1 = membrane / structure), which is what
  3D Slicer shows as segments: the 2D bundle's last step, which writes ISBI files (0 = membrane, 255 = cell), is
  left out, and the 2D result loses its channel axis so that it is written as a 2D image like its input.
- Results are written as ``uint8`` (PNG needs it; Slicer reads labelmaps of any integer type).
- One request at a time per model: the parsed bundle config and the cached network are shared state.
- Each request checks that the image has the model's dimension and says which model to use otherwise, and that a
  volume has the model's input channels (``in_channels``, named by ``channels``): a multi-sequence model takes a 4D
  NIfTI ``(X, Y, Z, C)`` whose 4th dimension holds the channels in the model's order (MSD/BraTS style), loaded
  channel first ``(C, X, Y, Z)`` by the bundle's ``LoadImaged``; its label is written as a 3D volume on the image's
  grid. An image that does not fit raises :class:`~monai_unet.predict.runner.InputError`, which the app answers
  with HTTP 422 and the message (see :mod:`monai_unet.label.main`).
- A 2D image that 3D Slicer uploaded (a single-slice NIfTI/NRRD volume, not a PNG) is read with the reader its
  file needs, and its label is written as a single-slice volume with the image's geometry.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.transforms import Lambdad, LoadImaged, SaveImaged, SqueezeDimd
from monailabel.tasks.infer.bundle import BundleInferTask
from monailabel.transform.pre import LoadImageTensord

from monai_unet.label.transforms import TWO_D_SUFFIXES, image_channels, image_spatial_dims
from monai_unet.predict.runner import InputError

__all__ = ["UNetInferTask"]

_PATH_KEY = "monai_unet_image_path"


class _RenameKey:
    """Move ``data[src]`` to ``data[dst]`` (a no-op without ``src``)."""

    def __init__(self, src: str, dst: str) -> None:
        self.src, self.dst = src, dst

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        d = dict(data)
        if self.src in d:
            d[self.dst] = d.pop(self.src)
        return d


def _is_single_slice_volume(path: Any) -> bool:
    return isinstance(path, str) and not path.lower().endswith(TWO_D_SUFFIXES)


class _LoadSingleSlice:
    """Load a single-slice volume ``(W, H, 1)`` as a 2D image ``(1, W, H)``, keeping its geometry in the metadata."""

    def __init__(self, key: str) -> None:
        self.key = key
        self._load = LoadImaged(keys=key, image_only=False, ensure_channel_first=True)

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        d = self._load(data)
        img = d[self.key][..., 0]
        img.meta["spatial_shape"] = np.asarray(img.shape[1:])
        d[self.key] = img
        return d


class _AddSlice:
    """``(W, H)`` -> ``(W, H, 1)``: the label of a single-slice volume, written with the volume's geometry."""

    def __init__(self, key: str) -> None:
        self.key = key

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        d = dict(data)
        d[self.key] = d[self.key][..., None]
        return d


class UNetInferTask(BundleInferTask):
    """Inference with a monai-unet bundle (2D or 3D) for MONAI Label.

    Args:
        path: the bundle folder served by the app (``configs/inference.json``, ``models/model.pt``).
        conf: the app's ``--conf`` settings.
        kwargs: passed to ``BundleInferTask``.
    """

    def __init__(self, path: str, conf: dict[str, str], **kwargs: Any) -> None:
        self._lock = threading.Lock()
        # the 2D bundle's only Lambdad turns classes into ISBI file values; MONAI Label wants the classes
        super().__init__(path, conf, post_filter=[SaveImaged, Lambdad], load_strict=True, **kwargs)
        self.in_channels, self.channel_names = 1, ["channel 0"]
        if self.is_valid():
            config = self.bundle_config
            if "in_channels" in config:
                self.in_channels = int(config.get_parsed_content("in_channels"))
            names = list(config.get("channels") or {})
            self.channel_names = (
                names if len(names) == self.in_channels else [f"channel {i}" for i in range(self.in_channels)]
            )
            if self.in_channels > 1:
                self.description = (
                    f"{self.description} Input: a 4D NIfTI (X, Y, Z, {self.in_channels}) of the registered "
                    f"sequences {', '.join(self.channel_names)}, in this order."
                )

    def __call__(self, request: dict[str, Any], callbacks: dict | None = None) -> tuple[str | None, dict]:
        """Run one request (serialised per model); checks the image's dimension and channels first.

        Raises:
            InputError: the image has another dimension or another number of channels than the model takes.
        """
        image = request.get("image")
        if isinstance(image, str):
            self.check_image(image)
        with self._lock:
            return super().__call__(request, callbacks)

    def check_image(self, image: str) -> None:
        """Raise :class:`InputError` unless the file (from its header) has the model's dimension and channels."""
        name = Path(self.bundle_path).name
        dims = image_spatial_dims(image)
        if dims != self.dimension:
            raise InputError(
                f"{image} is a {dims}D image but model {name} segments {self.dimension}D images: use the "
                f"{'unet2d_membrane' if dims == 2 else 'unet3d_volume'} model."
            )
        if self.dimension != 3:
            return
        found = image_channels(image)
        if found != self.in_channels:
            wanted = ", ".join(self.channel_names)
            form = (
                f"a 4D NIfTI (X, Y, Z, {self.in_channels}) holding them in this order (docs/label_multichannel.md)"
                if self.in_channels > 1
                else "a single-channel volume"
            )
            raise InputError(
                f"{image} has {found} channel(s) but model {name} takes {self.in_channels}: {wanted}; give {form}."
            )

    def pre_transforms(self, data: dict[str, Any] | None = None) -> Sequence[Callable]:
        """The bundle's pre-processing, with MONAI Label's ``image_path`` kept out of the way of ``Spacingd``.

        MONAI's ``Spacingd`` updates every ``image_*`` entry of a NIfTI's data dictionary as a metadata dictionary,
        and MONAI Label puts the image's path (a string) under ``image_path``: it is set aside while the bundle's
        transforms run.
        """
        pre = list(super().pre_transforms(data))
        if self.dimension == 2 and data and _is_single_slice_volume(data.get(self.input_key)):
            pre = [_LoadSingleSlice(self.input_key) if isinstance(t, LoadImageTensord) else t for t in pre]
        return [_RenameKey("image_path", _PATH_KEY), *pre, _RenameKey(_PATH_KEY, "image_path")]

    def post_transforms(self, data: dict[str, Any] | None = None) -> Sequence[Callable]:
        """The bundle's post-processing without its file writing, then MONAI Label's restore to the input grid."""
        post = list(super().post_transforms(data))
        if self.dimension == 2:
            post.append(SqueezeDimd(keys=self.key_pred, dim=0))
            if data and _is_single_slice_volume(data.get("image_path")):
                post.append(_AddSlice(self.key_pred))
        return post

    def writer(self, data: dict[str, Any], extension: str | None = None, dtype: Any = None) -> tuple[Any, Any]:
        """MONAI Label's writer, ``uint8`` labels."""
        return super().writer(data, extension=extension, dtype=np.uint8 if dtype is None else dtype)
