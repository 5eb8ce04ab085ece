"""What a bundle config calls: the dataset folder to use (real, or the synthetic default) and its datalists.

A ``train.json`` can say::

    "imports": ["$import monai_unet", "$import monai_unet.data"],
    "dataset_dir": null,
    "cache_dir": "$@bundle_root + '/cache'",
    "data_root": "$monai_unet.data.prepare_dataset(@dataset_dir, 'membrane', @cache_dir)",
    "datalists": "$monai_unet.data.make_datalists(@data_root, 'membrane', cache_dir=@cache_dir)",
    "train_datalist": "$@datalists['training']",
    "val_datalist": "$@datalists['validation']",

and ``python -m monai.bundle run ... --dataset_dir ../shared/data/isbi2012`` trains on real data instead.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai_unet.data.datalists import membrane_datalist, split_datalist, volume_datalist
from monai_unet.data.synthetic import (
    EM_GENERATOR_VERSION,
    VOLUME_GENERATOR_VERSION,
    make_em_dataset,
    make_volume_dataset,
)

__all__ = ["KINDS", "datalist", "make_datalists", "prepare_dataset"]

KINDS = ("membrane", "volume")
_NO_DATASET = ("none", "null")


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}.")


def prepare_dataset(
    dataset_dir: str | os.PathLike | None,
    kind: str,
    cache_dir: str | os.PathLike,
    synthetic: dict[str, Any] | None = None,
) -> str:
    """The dataset folder to train on: ``dataset_dir`` if given, else a synthetic dataset generated in ``cache_dir``.

    The synthetic default is generated once (idempotent, atomic files) into
    ``cache_dir/synthetic_<kind>_<key>``, where the key is a hash of the generator settings, so changed settings
    never reuse a stale dataset.

    Args:
        dataset_dir: a dataset folder, or None / ``""`` / ``"none"`` / ``"null"`` for the synthetic default (the
            strings, as a command line may pass them, only when no folder of that name exists).
        kind: ``"membrane"`` (2D, :func:`~monai_unet.data.make_em_dataset`) or ``"volume"`` (3D,
            :func:`~monai_unet.data.make_volume_dataset`).
        cache_dir: where the synthetic dataset is written.
        synthetic: keyword arguments for the generator (e.g. ``{"num_images": 30, "size": 512}``).

    Returns:
        The absolute path of the folder to read, as a string.

    Raises:
        FileNotFoundError: ``dataset_dir`` is given but is not a folder.
        ValueError: unknown ``kind``.
    """
    _check_kind(kind)
    text = "" if dataset_dir is None else str(dataset_dir).strip()
    no_dataset = not text or (text.lower() in _NO_DATASET and not Path(text).exists())
    if not no_dataset:
        folder = Path(dataset_dir).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(
                f"dataset_dir {dataset_dir} is not a folder (resolved: {folder.resolve()}). Give the folder of a "
                f"{kind} dataset, or leave dataset_dir null to train on the synthetic default."
            )
        return str(folder.resolve())
    kwargs = dict(synthetic or {})
    version = EM_GENERATOR_VERSION if kind == "membrane" else VOLUME_GENERATOR_VERSION
    key = hashlib.sha1(json.dumps([version, sorted(kwargs.items())], default=str).encode()).hexdigest()[:10]
    out = Path(cache_dir).expanduser() / f"synthetic_{kind}_{key}"
    generate = make_em_dataset if kind == "membrane" else make_volume_dataset
    return str(generate(out, **kwargs).resolve())


def datalist(dataset_dir: str | os.PathLike, kind: str, **kwargs: Any) -> list[dict[str, str]]:
    """The whole datalist of ``dataset_dir``: :func:`membrane_datalist` or :func:`volume_datalist` by ``kind``.

    Args:
        dataset_dir: the dataset folder.
        kind: ``"membrane"`` or ``"volume"``.
        kwargs: passed to the datalist function.

    Returns:
        ``[{"image": path, "label": path}, ...]``.
    """
    _check_kind(kind)
    return membrane_datalist(dataset_dir, **kwargs) if kind == "membrane" else volume_datalist(dataset_dir, **kwargs)


def make_datalists(
    dataset_dir: str | os.PathLike,
    kind: str,
    val_fraction: float = 0.2,
    val_indices: Sequence[int] | None = None,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    channels: Mapping[str, Any] | None = None,
) -> dict[str, list[dict[str, str]]]:
    """Training and validation datalists of ``dataset_dir``.

    A ``dataset.json`` with a non-empty ``validation`` list (volumes) is used as it is; otherwise the items are
    split with :func:`split_datalist` (deterministic for ``seed``).

    Args:
        dataset_dir: the dataset folder (e.g. the return value of :func:`prepare_dataset`).
        kind: ``"membrane"`` or ``"volume"``.
        val_fraction: fraction of the items for validation.
        val_indices: explicit validation indices instead of ``val_fraction``.
        seed: seed of the split.
        cache_dir: where pages of multi-page TIFF stacks are written (membrane only).
        channels: the named input channels of a volume bundle, ``{name: pattern(s)}`` (see
            :func:`~monai_unet.data.volume_datalist`); ``None``: one channel.

    Returns:
        ``{"training": [...], "validation": [...]}``.
    """
    _check_kind(kind)
    if kind == "membrane":
        items = membrane_datalist(dataset_dir, cache_dir=None if cache_dir is None else Path(cache_dir) / "tiff_pages")
    else:
        dataset_json = Path(dataset_dir) / "dataset.json"
        if dataset_json.is_file() and json.loads(dataset_json.read_text()).get("validation"):
            return {
                "training": volume_datalist(dataset_dir, section="training", channels=channels),
                "validation": volume_datalist(dataset_dir, section="validation", channels=channels),
            }
        items = volume_datalist(dataset_dir, channels=channels)
    train, val = split_datalist(items, val_fraction=val_fraction, val_indices=val_indices, seed=seed)
    return {"training": train, "validation": val}
