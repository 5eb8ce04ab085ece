"""MONAI Label train task for the bundles: MONAI Label's ``BundleTrainTask`` running the bundle's ``train.json``.

``BundleTrainTask`` runs the bundle's ``run`` id with the datastore's image/label pairs in place of the bundle's
datalists, starting from the served ``models/model.pt``. What the task here adds:

- Only the datastore items of the model's dimension are used (one studies folder may hold 2D images and volumes).
- Tiny datasets (a user's first corrections): when the validation split would be empty, the training items are
  also the validation items, so the bundle's validation still runs and still publishes ``models/model.pt``.
- Validation (which writes ``models/model.pt``, the file the infer task reloads when its time stamp changes) runs
  every epoch, and ``epoch_length`` can be set per request.
- Each request fine-tunes the served model afresh: the bundle's resumable ``models/checkpoint.pt`` from an earlier
  request is removed first (otherwise the run would resume a finished run and stop at once).
- 2D labels are read in either convention (MONAI Label / 3D Slicer segment index 1 = membrane, or ISBI 2012
  files 0 = membrane, 255 = cell) and as PNG/TIFF pages or single-slice volumes.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

from monailabel.interfaces.datastore import Datastore
from monailabel.tasks.train.bundle import BundleTrainTask

from monai_unet.label.server import UNTRAINED_MARKER
from monai_unet.label.transforms import image_spatial_dims

__all__ = ["UNetTrainTask"]

logger = logging.getLogger(__name__)

_ISBI_FUNC = "$monai_unet.data.isbi_membrane_label"


def _mtime(path: Path) -> int | None:
    return path.stat().st_mtime_ns if path.is_file() else None


class UNetTrainTask(BundleTrainTask):
    """Training of a monai-unet bundle (2D or 3D) on the datastore's final labels.

    Args:
        path: the bundle folder served by the app (``configs/train.json``; writes ``models/``).
        conf: the app's ``--conf`` settings.
        spatial_dims: 2 or 3, the model's dimension (which datastore items it trains on).
    """

    def __init__(self, path: str, conf: dict[str, str], spatial_dims: int) -> None:
        super().__init__(path, conf, load_strict=True)
        self.spatial_dims = spatial_dims
        self._request: dict[str, Any] = {}

    def config(self) -> dict[str, Any]:
        """Options shown in the client: the bundle's own ``max_epochs`` and ``epoch_length`` as defaults."""
        options = super().config()
        options["max_epochs"] = int(self.bundle_config["max_epochs"])
        options["epoch_length"] = int(self.bundle_config["epoch_length"])
        options.pop("multi_gpu", None)
        options.pop("gpus", None)
        return options

    def _fetch_datalist(self, request: dict[str, Any], datastore: Datastore) -> list[dict[str, Any]]:
        items = super()._fetch_datalist(request, datastore)
        mine = [d for d in items if image_spatial_dims(d["image"]) == self.spatial_dims]
        logger.info(f"{len(mine)} of {len(items)} labelled datastore items are {self.spatial_dims}D")
        if not mine:
            raise ValueError(
                f"no {self.spatial_dims}D image in the datastore has a final label: save a label for one "
                f"(Slicer: 'Submit Label'; client: PUT /datastore/label) before training {Path(self.bundle_path).name}."
            )
        return mine

    def _partition_datalist(
        self, datalist: list[dict[str, Any]], request: dict[str, Any], shuffle: bool = False
    ) -> tuple[list, list | None]:
        train, val = super()._partition_datalist(datalist, request, shuffle=shuffle)
        if not train:
            train = list(datalist)
        if val is not None and not val:
            logger.info("validation split is empty: validating on the training items")
            val = list(train)
        return train, val

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        """Fine-tune the served model on the datastore's labels and publish it as ``models/model.pt``."""
        self._request = dict(request)
        models = Path(self.bundle_path, "models")
        (models / "checkpoint.pt").unlink(missing_ok=True)
        before = _mtime(models / "model.pt")
        self.bundle_config = self._load_bundle_config(self.bundle_path, self.bundle_config_path)
        result = super().__call__(request, datastore)
        if _mtime(models / "model.pt") == before:
            raise RuntimeError(
                f"training of {Path(self.bundle_path).name} finished without writing {models / 'model.pt'} "
                f"(the bundle's validation writes it): the served model is unchanged."
            )
        (models / UNTRAINED_MARKER).unlink(missing_ok=True)
        logger.info(f"published {models / 'model.pt'}: the next inference uses it")
        return result

    def _update_overrides(self, overrides: dict[str, Any]) -> dict[str, Any]:
        request = self._request
        overrides["max_epochs"] = overrides[self.const.key_train_trainer_max_epochs()]
        overrides["val_interval"] = 1
        if request.get("epoch_length") is not None:
            overrides["epoch_length"] = int(request["epoch_length"])
        if request.get("num_workers") is not None:
            overrides["num_workers"] = int(request["num_workers"])
        if self.spatial_dims == 2:
            overrides["load_transforms"] = self._load_transforms_2d()
        return overrides

    def _load_transforms_2d(self) -> list[dict[str, Any]]:
        """The bundle's ``load_transforms`` with a reader for any 2D file and labels in either convention."""
        transforms = copy.deepcopy(self.bundle_config.config["load_transforms"])
        found = set()
        for t in transforms:
            if t.get("_target_") == "LoadImaged":
                t.clear()
                t.update({"_target_": "monai_unet.label.transforms.LoadImage2Dd", "keys": ["image", "label"]})
                found.add("load")
            elif t.get("_target_") == "Lambdad" and t.get("func") == _ISBI_FUNC:
                t["func"] = "$monai_unet.label.transforms.membrane_classes"
                found.add("label")
        if found != {"load", "label"}:
            raise ValueError(
                f"{self.bundle_config_path}: load_transforms no longer has LoadImaged and a Lambdad with {_ISBI_FUNC}; "
                f"update monai_unet.label.trainers to the bundle's new config."
            )
        return transforms
