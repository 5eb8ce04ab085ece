"""Reader settings for ``monai.transforms.LoadImaged``, verified on the real data in ``../shared/data``.

- 2D (PNG, single-page TIFF, pages of TIFF stacks): MONAI's ``PILReader``. It returns arrays as ``(W, H)`` (the
  transpose of the file's rows x columns); image and label get the same treatment, so they stay aligned, and
  predictions written back with ``SaveImage``/``PILWriter`` are transposed back. Labels load as 0./255.
- 3D (NIfTI, NRRD, MHA, DICOM series folders): MONAI's ``ITKReader``, which reads DICOM series folders with their
  oblique direction cosines (pydicom is not needed) and gives the same RAS affine as ``NibabelReader`` on NIfTI.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DICOM_READER", "MEMBRANE_READER", "VOLUME_READER", "load_image_kwargs"]

MEMBRANE_READER = "PILReader"
VOLUME_READER = "ITKReader"
DICOM_READER = VOLUME_READER


def load_image_kwargs(kind: str) -> dict[str, Any]:
    """Keyword arguments for ``LoadImaged``/``LoadImage`` for ``kind`` ``"membrane"`` (2D) or ``"volume"`` (3D).

    Example:
        ``LoadImaged(keys=["image", "label"], **load_image_kwargs("volume"))``

    Returns:
        ``{"reader": ..., "ensure_channel_first": True, "image_only": True}``: channel-first MetaTensors
        ``(1, W, H)`` in 2D and ``(1, X, Y, Z)`` in 3D with the affine in ``.affine``.

    Raises:
        ValueError: unknown ``kind``.
    """
    readers = {"membrane": MEMBRANE_READER, "volume": VOLUME_READER}
    if kind not in readers:
        raise ValueError(f"kind must be one of {sorted(readers)}, got {kind!r}.")
    return {"reader": readers[kind], "ensure_channel_first": True, "image_only": True}
