"""The MONAI Label app: the monai-unet bundles served to 3D Slicer for inference and training on corrections.

Start it with ``monai-unet label --studies DIR`` or ``--studies dicomweb+http://HOST:8042/dicom-web`` (a PACS: see
:mod:`monai_unet.label.datastore`; :func:`monai_unet.label.server.start_server`). Needs the
``label`` extra: ``pip install "monai-unet[label]"``. Importing this package does not import MONAI Label; the app
itself is :class:`monai_unet.label.main.MonaiUnetApp`.
"""

from __future__ import annotations

from monai_unet.label.server import DEFAULT_APP_DIR, DEFAULT_HOST, DEFAULT_PORT, prepare_app_dir, start_server

__all__ = ["DEFAULT_APP_DIR", "DEFAULT_HOST", "DEFAULT_PORT", "prepare_app_dir", "start_server"]
