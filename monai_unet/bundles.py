"""Where the bundles are, and running them in this process as ``python -m monai.bundle run`` does."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["BUNDLE_NAMES", "bundle_config", "find_bundle", "run_bundle"]

BUNDLE_NAMES = ("unet2d_membrane", "unet3d_volume")


def find_bundle(name_or_path: str | os.PathLike) -> Path:
    """A bundle folder from a path, or from the name of one of this project's bundles.

    Raises:
        FileNotFoundError: neither a bundle folder (with ``configs/``) nor a known bundle name.
    """
    path = Path(name_or_path).expanduser()
    if (path / "configs").is_dir():
        return path.resolve()
    if str(name_or_path) in BUNDLE_NAMES:
        env = os.environ.get("MONAI_UNET_BUNDLES")
        roots = [Path(env)] if env else []
        roots.append(Path(__file__).resolve().parents[1] / "bundles")
        for root in roots:
            if (root / str(name_or_path) / "configs").is_dir():
                return (root / str(name_or_path)).resolve()
    raise FileNotFoundError(
        f"no bundle at {name_or_path!r}: give a bundle folder (one holding configs/train.json) or one of "
        f"{', '.join(BUNDLE_NAMES)} from a checkout of monai-unet (or set MONAI_UNET_BUNDLES to its bundles/ folder)."
    )


def bundle_config(bundle: Path, name: str) -> Path:
    """``bundle/configs/<name>`` (``.json`` added when missing), or ``FileNotFoundError`` naming what exists."""
    path = bundle / "configs" / (name if name.endswith((".json", ".yaml", ".conf")) else f"{name}.json")
    if not path.is_file():
        have = sorted(p.name for p in (bundle / "configs").glob("*"))
        raise FileNotFoundError(f"{path} does not exist; {bundle} has configs: {', '.join(have)}.")
    return path


def run_bundle(
    bundle: str | os.PathLike,
    run_id: str = "training",
    configs: Sequence[str] = ("train",),
    bundle_root: str | os.PathLike | None = None,
    **overrides: Any,
) -> None:
    """Run ``run_id`` of a bundle in this process, as ``python -m monai.bundle run`` does.

    Args:
        bundle: bundle folder or name.
        run_id: the config id to run (``"training"``/``"run"`` of train.json, ``"run"`` of inference.json).
        configs: config files of ``bundle/configs`` merged in order (later ones override).
        bundle_root: where the run writes (models/, eval/, data/); default the bundle folder itself.
        overrides: config ids and values, e.g. ``dataset_dir="/data/isbi2012"``, ``max_epochs=2``.
    """
    from monai.bundle import run

    path = find_bundle(bundle)
    files = [str(bundle_config(path, c)) for c in configs]
    root = Path(bundle_root if bundle_root is not None else path).resolve()
    root.mkdir(parents=True, exist_ok=True)
    run(
        run_id,
        meta_file=str(bundle_config(path, "metadata")),
        config_file=files if len(files) > 1 else files[0],
        logging_file=str(bundle_config(path, "logging.conf")),
        bundle_root=str(root),
        **overrides,
    )
