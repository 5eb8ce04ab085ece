"""The MONAI Label app that serves the monai-unet bundles to 3D Slicer (and any MONAI Label client).

MONAI Label loads an app from a folder's ``main.py``; :func:`monai_unet.label.server.prepare_app_dir` writes a
folder whose ``main.py`` imports :class:`MonaiUnetApp` from here, and copies each bundle's configs to
``<app_dir>/model/<bundle>/``, where training writes ``models/model.pt`` and inference reads it.

Settings (``--conf KEY VALUE`` of ``monailabel start_server``; ``monai-unet label`` sets them):

- ``models``: ``all`` (default) or a comma-separated list of bundle names to serve.
- ``preload``: ``true`` to load the networks at start-up (default ``false``: on the first request).
- ``dicomweb_filter``, ``dicomweb_user``, ``dicomweb_cache``, ``dicomweb_cache_expiry``, ``dicomweb_retries``,
  ``dicomweb_backoff``: for a DICOMweb ``--studies`` URL, see :mod:`monai_unet.label.datastore`.

An image a model cannot segment (another dimension, another number of channels) is answered with HTTP 422 and a
message naming the image and what the model takes, which the client shows (not a bare "Internal Server Error").

Nothing is downloaded: no model zoo, no SAM weights. A bundle with no ``models/model.pt`` yet is served with the
network's initial weights (seeded, written once) so that it can be trained from the datastore's labels; its
results mean nothing until then, and the app logs a warning saying so.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.train import TrainTask

from monai_unet.label.infers import UNetInferTask
from monai_unet.label.server import ensure_bundle, selected_models
from monai_unet.label.trainers import UNetTrainTask

__all__ = ["MonaiUnetApp"]

logger = logging.getLogger(__name__)


class MonaiUnetApp(MONAILabelApp):
    """MONAI Label app serving the 2D membrane and 3D volume U-Net bundles for inference and training.

    Args:
        app_dir: the app folder (holds ``model/<bundle>/``).
        studies: the studies folder (MONAI Label's local datastore) or a DICOMweb URL.
        conf: the ``--conf`` settings (see the module docstring).
    """

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        self.model_dir = Path(app_dir) / "model"
        self.bundles: dict[str, Path] = {}
        for name in selected_models(conf.get("models", "all")):
            self.bundles[name] = ensure_bundle(self.model_dir / name, name)
        from monai_unet import __version__

        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="monai-unet",
            description=f"The original U-Net (Ronneberger et al. 2015), bundles {', '.join(self.bundles)}",
            version=__version__,
        )

    def infer(self, request: dict[str, Any], datastore: Datastore | None = None) -> dict[str, Any]:
        """MONAI Label's inference; an image the model cannot segment is answered with HTTP 422 and the reason."""
        from fastapi import HTTPException

        from monai_unet.predict.runner import InputError

        try:
            return super().infer(request, datastore)
        except InputError as e:
            raise HTTPException(status_code=422, detail=str(e)) from e

    def init_remote_datastore(self) -> Datastore:
        """A DICOMweb ``--studies`` URL: :class:`~monai_unet.label.datastore.UNetDICOMWebDatastore` (XNAT, DSA:
        MONAI Label's own, chosen with ``MONAI_LABEL_DATASTORE``)."""
        from monailabel.config import settings

        if settings.MONAI_LABEL_DATASTORE.lower() in ("xnat", "dsa"):
            return super().init_remote_datastore()
        from monai_unet.label.datastore import dicomweb_datastore

        return dicomweb_datastore(self.studies, self.conf, self.app_dir)

    def init_infers(self) -> dict[str, InferTask]:
        """One infer task per served bundle, named after the bundle."""
        infers: dict[str, InferTask] = {}
        for name, path in self.bundles.items():
            task = UNetInferTask(str(path), self.conf)
            if not task.is_valid():
                raise RuntimeError(f"bundle {name} at {path} cannot be served: see the log above for what is missing.")
            infers[name] = task
        return infers

    def init_trainers(self) -> dict[str, TrainTask]:
        """One train task per served bundle, named after the bundle."""
        trainers: dict[str, TrainTask] = {}
        for name, path in self.bundles.items():
            dims = self._infers[name].dimension if name in self._infers else (2 if "2d" in name else 3)
            trainers[name] = UNetTrainTask(str(path), self.conf, spatial_dims=int(dims))
        return trainers

    def init_strategies(self) -> dict[str, Any]:
        """MONAI Label's active-learning strategies that need no model: random and first unlabelled image."""
        from monailabel.tasks.activelearning.first import First
        from monailabel.tasks.activelearning.random import Random

        return {"random": Random(), "first": First()}
