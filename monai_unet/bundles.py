"""Where the bundles are, and running them in this process as ``python -m monai.bundle run`` does."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "BUNDLE_NAMES",
    "bundle_config",
    "find_bundle",
    "inference_workflow",
    "load_weights",
    "run_bundle",
    "state_dict_from",
]

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
    """``bundle/configs/<name>`` (``.json`` added when missing), else ``name`` as a path of its own (a config overlay
    such as a plan, ``PLAN.json``), or ``FileNotFoundError`` naming what exists."""
    path = bundle / "configs" / (name if name.endswith((".json", ".yaml", ".conf")) else f"{name}.json")
    if not path.is_file() and name.endswith((".json", ".yaml")) and Path(name).expanduser().is_file():
        return Path(name).expanduser().resolve()
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


def inference_workflow(
    bundle: str | os.PathLike,
    config: str = "inference",
    overrides: Mapping[str, Any] | None = None,
    overlays: Sequence[str | os.PathLike] = (),
) -> Any:
    """The bundle's inference config as an initialized ``monai.bundle.ConfigWorkflow(workflow_type="infer")``.

    ``overlays``: config files merged over it in order (a bundle config name, or a path such as a plan from
    ``monai-unet plan``), as training merges them, so the network and preprocessing are the trained ones.

    Its properties (``network_def``, ``inferer``, ``preprocessing``, ``postprocessing``, ``device``...) are what
    ``python -m monai.bundle run`` would build; ``initialize`` has run. ``overrides`` are config ids and values
    set before parsing (e.g. ``{"device": "$torch.device('cpu')", "infer_tile_size": [572, 572]}``).
    The bundle's logging config is not applied (the caller owns logging).
    """
    import logging

    from monai.bundle import ConfigWorkflow

    path = find_bundle(bundle)
    quiet = logging.getLogger("monai.bundle.workflows")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "Logging file is set to False, skipping logging."
    try:
        files = [str(bundle_config(path, c)) for c in (config, *(str(o) for o in overlays))]
        workflow = ConfigWorkflow(
            config_file=files if len(files) > 1 else files[0],
            meta_file=str(bundle_config(path, "metadata")),
            logging_file=False,
            workflow_type="infer",
            **{"bundle_root": str(path), **dict(overrides or {})},
        )
    finally:
        quiet.setLevel(level)
    workflow.initialize()
    if "imports" in workflow.parser:  # `$import x` lines, as `monai.bundle run` evaluates them
        workflow.parser.get_parsed_content("imports")
    return workflow


def state_dict_from(checkpoint: Any) -> Mapping[str, Any]:
    """The network weights inside a loaded checkpoint: a ``state_dict`` itself, or the one held under ``model``,
    ``network`` or ``state_dict`` (MONAI's ``CheckpointSaver`` / this package's full-state checkpoints)."""
    if isinstance(checkpoint, Mapping):
        for key in ("model", "network", "state_dict"):
            if key in checkpoint and isinstance(checkpoint[key], Mapping):
                return checkpoint[key]
        return checkpoint
    raise ValueError(f"a checkpoint holds a state_dict (a mapping of tensors), not a {type(checkpoint).__name__}.")


def load_weights(network: Any, path: str | os.PathLike, map_location: Any = "cpu", what: str = "the network") -> None:
    """Load the weights of checkpoint ``path`` into ``network``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a PyTorch checkpoint, or its weights do not fit ``network`` (says which keys or
            shapes differ).
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found.")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        why = " ".join(str(e).split())[:200]
        detail = f"{type(e).__name__}: {why}" if len(why) > 8 else type(e).__name__  # KeyError: 101 says nothing
        raise ValueError(
            f"cannot read checkpoint {path}: it is not a file written by torch.save, or it is damaged ({detail})."
        ) from e
    try:
        network.load_state_dict(state_dict_from(state))
    except Exception as e:
        raise ValueError(f"checkpoint {path} does not fit {what}: {' '.join(str(e).split())[:400]}") from e
