"""One bundle's ``inference.json`` run on one image at a time: what ``monai-unet predict`` does per input.

The bundle's own objects are used (``network_def``, ``preprocessing``, ``inferer``, ``postprocessing``): the
properties of ``monai.bundle.ConfigWorkflow(workflow_type="infer")``, built as ``python -m monai.bundle run``
builds them. Two steps are replaced, as MONAI Label replaces them: the loading step is called per input (with a
reader chosen for the input, e.g. one DICOM series of a folder holding several), and the final ``SaveImaged`` is
dropped because the batch command writes its outputs itself, atomically. Everything between runs unchanged, so
``Invertd`` returns a 3D prediction to the input's own grid.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["BundleRunner", "InputError"]


def _tile_dims(inferer: Any) -> int:
    """The spatial dimensions an inferer's ``tile_size``/``roi_size`` names (0 when it is automatic or one int)."""
    size = getattr(inferer, "tile_size", None) or getattr(inferer, "roi_size", None)
    return len(size) if isinstance(size, (list, tuple)) else 0


def check_device(device: str) -> None:
    """Raise ``ValueError`` unless ``device`` is a torch device that exists here (``cpu``, ``cuda``, ``cuda:N``)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"--device {device!r} is not a torch device: use cpu, cuda or cuda:N (e.g. cuda:0).") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: no CUDA device is available here; use --device cpu.")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})."
            )


def _paths_spec(paths: Any) -> str | list[str] | None:
    if paths is None or isinstance(paths, (str, os.PathLike)):
        return None if paths is None else str(paths)
    return [str(p) for p in paths]


class InputError(ValueError):
    """An input that cannot be segmented by this bundle (wrong dimensionality, channels, values, size)."""


def _flatten(compose: Any) -> list[Any]:
    from monai.transforms import Compose

    if isinstance(compose, Compose):
        return list(compose.flatten().transforms)
    if isinstance(compose, (list, tuple)):
        return list(compose)
    return [compose]


class BundleRunner:
    """Load a bundle's inference config and network once; segment images one at a time.

    Args:
        bundle: bundle folder or name (``unet2d_membrane``, ``unet3d_volume``).
        checkpoint: weights file (a ``state_dict``, or a dict holding one under ``model``/``network``/
            ``state_dict``); default the bundle's ``ckpt_path``. Several files: an ensemble, whose members'
            probabilities (the bundle's activation of each one's output) are averaged.
        tta: flip test-time augmentation (the inferer averages the probabilities over all flips); ``False``: as the
            bundle's inferer has it (the 3D bundle's ``tta``, which a planned overlay may set).
        precision: what the network computes in (``"fp32"``, ``"bf16"``, ``"fp16"``, ``"auto"``; see
            :class:`~monai_unet.inferers.OverlapTileInferer`); default the bundle's inferer's.
        device: torch device string (default: the bundle's ``device``).
        overrides: config ids and values set before parsing (e.g. ``{"infer_tile_size": [572, 572]}``).
        config: the inference config's name inside ``configs/``.
        overlays: config files merged over it (as in training: ``configs/brain_tumor_progression.json``, a plan
            from ``monai-unet plan``), so the network and preprocessing are the ones the model was trained with.

    Raises:
        FileNotFoundError: no such bundle, config or checkpoint.
        ValueError: the checkpoint does not fit the bundle's network.
    """

    def __init__(
        self,
        bundle: str | os.PathLike,
        checkpoint: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
        device: str | None = None,
        overrides: Mapping[str, Any] | None = None,
        config: str = "inference",
        tta: bool = False,
        precision: str | None = None,
        overlays: Sequence[str | os.PathLike] = (),
    ) -> None:
        from monai.transforms import Activationsd, Compose, Invertd, LoadImaged, SaveImaged

        from monai_unet.bundles import find_bundle, inference_workflow

        self.bundle = find_bundle(bundle)
        # how to build this runner again in another process (a Dask worker)
        self.spec: dict[str, Any] = {
            "bundle": str(self.bundle),
            "checkpoint": _paths_spec(checkpoint),
            "device": device,
            "overrides": dict(overrides or {}),
            "config": config,
            "tta": tta,
            "precision": precision,
            "overlays": [str(o) for o in overlays],
        }
        settings = dict(overrides or {})
        if device is not None:
            check_device(device)
            settings["device"] = f"$torch.device('{device}')"
        workflow = inference_workflow(self.bundle, config, settings, overlays)
        self.device = torch.device(workflow.device)
        self.network = workflow.network_def.to(self.device).eval()
        self.inferer = workflow.inferer
        for name, value in (("tta", True if tta else None), ("precision", precision)):
            if value is None:
                continue
            if not hasattr(self.inferer, name):
                raise ValueError(f"{name} needs the bundle's inferer to be an OverlapTileInferer, not {self.inferer}.")
            if name == "precision":
                from monai_unet.inferers import resolve_precision

                resolve_precision(value, self.device)
            self.inferer = copy.copy(self.inferer)  # the bundle's own inferer is left as it was
            setattr(self.inferer, name, value)
        pre = _flatten(workflow.preprocessing)
        post = _flatten(workflow.postprocessing)
        default = workflow.parser.get_parsed_content("ckpt_path")
        if checkpoint is None or isinstance(checkpoint, (str, os.PathLike)):
            paths = [Path(checkpoint if checkpoint is not None else default)]
        else:
            paths = [Path(c) for c in checkpoint]
        if not paths:
            raise ValueError("checkpoint: give at least one weights file.")
        self.checkpoints = paths
        self.checkpoint = paths[0]
        self.networks = [self.network] + [copy.deepcopy(self.network) for _ in paths[1:]]
        for net, path in zip(self.networks, paths):
            self._load_weights(net, path)

        if not pre or not isinstance(pre[0], LoadImaged):
            raise ValueError(f"{self.bundle}: the preprocessing must start with LoadImaged, got {pre[:1]}.")
        self.loader: LoadImaged = pre[0]
        self.image_key = self.loader.keys[0]
        self.pre_transforms = pre[1:]
        self.preprocess = Compose(self.pre_transforms)
        savers = [t for t in post if isinstance(t, SaveImaged)]
        self.post_transforms = [t for t in post if not isinstance(t, SaveImaged)]
        self.pred_key = savers[0].keys[0] if savers else "pred"
        self.output_dtype = np.dtype(savers[0].saver.init_kwargs.get("output_dtype") or np.uint8) if savers else None
        self.has_invert = any(isinstance(t, Invertd) for t in self.post_transforms)
        first_act = next((i for i, t in enumerate(self.post_transforms) if isinstance(t, Activationsd)), None)
        self._prob_index = first_act
        self.spatial_dims = int(getattr(self.network, "spatial_dims", 0) or _tile_dims(self.inferer) or 3)
        self.in_channels = int(getattr(self.network, "in_channels", 1))
        # the named input channels and their patterns (a study's series, nnU-Net's channel files), if declared
        self.channels: dict[str, Any] | None = (
            dict(workflow.parser.get_parsed_content("channels")) if "channels" in workflow.parser else None
        )
        self.out_channels = int(getattr(self.network, "out_channels", 2))

    def _load_weights(self, network: torch.nn.Module, path: Path) -> None:
        from monai_unet.bundles import load_weights

        if not path.is_file():
            raise FileNotFoundError(
                f"checkpoint {path} not found: train the bundle first (monai-unet train --bundle "
                f"{self.bundle.name} --work-dir DIR) and pass --checkpoint DIR/models/model.pt."
            )
        load_weights(network, path, self.device, what=f"the network of {self.bundle.name}")

    # ---- one image ------------------------------------------------------------------------------------------

    def load(self, source: Any, reader: Any = None) -> Any:
        """Run the bundle's loading step on ``source`` (a path, or a ready MetaTensor) and check the image.

        Returns:
            the channel-first MetaTensor ``(C, *S)``.

        Raises:
            InputError: wrong dimensionality, channel count, empty or non-finite image.
        """
        if isinstance(source, torch.Tensor):
            img = source
        else:
            img = self.loader({self.image_key: source}, reader)[self.image_key]
        self.check(img, str(source) if not isinstance(source, torch.Tensor) else "image")
        return img

    def check(self, img: Any, name: str) -> None:
        """Raise :class:`InputError` unless ``img`` ``(C, *S)`` is what the network takes."""
        if img.numel() == 0:
            raise InputError(f"image is empty (no voxels): shape {tuple(img.shape)}.")
        dims = img.ndim - 1
        if dims != self.spatial_dims:
            raise InputError(
                f"image of shape {tuple(img.shape[1:])} has {dims} spatial dimensions; the bundle "
                f"{self.bundle.name} segments {self.spatial_dims}D images."
            )
        if img.shape[0] != self.in_channels:
            raise InputError(
                f"image has {img.shape[0]} channels; the bundle {self.bundle.name} takes {self.in_channels} "
                f"(convert it, e.g. to grayscale)."
            )
        if min(img.shape[1:]) < 1:
            raise InputError(f"image is empty: shape {tuple(img.shape[1:])}.")
        if img.dtype.is_floating_point:
            finite = torch.isfinite(img)
            if not bool(finite.all()):
                raise InputError(
                    f"image holds {int((~finite).sum())} NaN/infinite values; fix or mask them before segmenting."
                )

    @torch.no_grad()
    def run(self, img: Any, probabilities: bool = False) -> dict[str, Any]:
        """Preprocess, infer and postprocess one loaded image ``(C, *S)``.

        Returns:
            ``{"pred": (1, *S_orig) MetaTensor, "prob": (C_out, *S_orig) MetaTensor or None}`` on the CPU,
            both on the input's own grid.
        """
        from monai.transforms import Invertd

        data = self.preprocess({self.image_key: img})
        x = data[self.image_key][None].to(self.device)
        activated = len(self.networks) > 1 or bool(getattr(self.inferer, "tta", False))
        if activated and self._prob_index is None:
            raise ValueError(
                f"an ensemble or tta averages probabilities, but the bundle {self.bundle.name}'s postprocessing has no "
                "Activationsd to make them."
            )
        if not activated:
            pred = self.inferer(x, self.network)
            data[self.pred_key] = pred[0].cpu() if isinstance(pred, torch.Tensor) else pred
        else:  # the average of the members' probabilities; the inferer's flips are activated already
            act = self.post_transforms[self._prob_index]
            total = None
            for net in self.networks:
                out = self.inferer(x, net)[0].cpu()
                if not getattr(self.inferer, "tta", False):
                    out = act({self.pred_key: out})[self.pred_key]
                total = out if total is None else total + out
            data[self.pred_key] = total / len(self.networks)
        prob = None
        for i, t in enumerate(self.post_transforms):
            if not (activated and i == self._prob_index):
                data = t(data)
            if probabilities and i == self._prob_index:
                prob = data[self.pred_key].clone()
        if prob is not None and self.has_invert:
            inv = next(t for t in self.post_transforms if isinstance(t, Invertd))
            back = Invertd(keys="prob", transform=inv.transform, orig_keys=inv.orig_keys[0], nearest_interp=False)
            prob = back({"prob": prob, inv.orig_keys[0]: data[inv.orig_keys[0]]})["prob"]
        return {"pred": data[self.pred_key], "prob": prob}

    def run_tile_postprocessing(self, logits: torch.Tensor) -> torch.Tensor:
        """The bundle's postprocessing on one tile of logits ``(C_out, *s)``; only pointwise steps are allowed."""
        data = {self.pred_key: logits}
        for t in self.post_transforms:
            data = t(data)
        return data[self.pred_key]

    def check_pointwise_postprocessing(self) -> None:
        """Raise ``ValueError`` if a postprocessing step is not pointwise (so cannot run tile by tile)."""
        from monai.transforms import Activationsd, AsDiscreted, CastToTyped, EnsureTyped, Lambdad

        for t in self.post_transforms:
            if not isinstance(t, (Activationsd, AsDiscreted, Lambdad, EnsureTyped, CastToTyped)):
                raise ValueError(
                    f"{type(t).__name__} in the bundle's postprocessing is not pointwise, so the large-image path "
                    "cannot run it tile by tile; segment the image in memory instead (raise --large-threshold)."
                )
