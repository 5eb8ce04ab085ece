"""Preparing the MONAI Label app folder and starting the server (what ``monai-unet label`` does).

MONAI Label serves an app *folder* whose ``main.py`` defines the app, and writes ``model/``, ``logs/``, ``lib/``
and ``bin/`` into it. So the app is not served from the installed package folder: :func:`prepare_app_dir` writes a
small folder (default ``./monai-unet-label-app``) whose ``main.py`` imports :class:`monai_unet.label.main.MonaiUnetApp`,
with each bundle's configs under ``model/<bundle>/`` (refreshed from the installed bundles on every start) and its
weights in ``model/<bundle>/models/model.pt`` (kept across starts, updated by training).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path

from monai_unet.bundles import BUNDLE_NAMES, bundle_config, find_bundle

__all__ = [
    "DEFAULT_APP_DIR",
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "ensure_bundle",
    "prepare_app_dir",
    "selected_models",
    "server_argv",
    "start_server",
]

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_APP_DIR = "monai-unet-label-app"
UNTRAINED_MARKER = "model.pt.untrained"

_MAIN_PY = '''"""MONAI Label app folder written by `monai-unet label`: the app is monai_unet.label.main.MonaiUnetApp."""

from monai_unet.label.main import MonaiUnetApp  # noqa: F401
'''


def _require_monailabel() -> None:
    try:
        import monailabel  # noqa: F401
    except ImportError as e:
        raise SystemExit(f'monai-unet label needs MONAI Label ({e}): pip install "monai-unet[label]".') from None


def selected_models(models: str | Sequence[str] = "all") -> list[str]:
    """Bundle names from ``"all"``, a comma-separated string or a list; unknown names raise ``ValueError``."""
    names = [m.strip() for m in (models.split(",") if isinstance(models, str) else models) if m.strip()]
    if not names or names == ["all"]:
        return list(BUNDLE_NAMES)
    unknown = [n for n in names if n not in BUNDLE_NAMES]
    if unknown:
        raise ValueError(f"unknown model(s) {', '.join(unknown)}: choose from all, {', '.join(BUNDLE_NAMES)}.")
    return names


def _initial_weights(folder: Path) -> None:
    """Write the network's seeded initial weights to ``folder/models/model.pt`` (atomically), marked untrained."""
    import torch
    from monai.bundle import ConfigParser

    from monai_unet.handlers.checkpoint import atomic_torch_save

    parser = ConfigParser()
    parser.read_config(str(bundle_config(folder, "inference")))
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def", instantiate=True)
    (folder / "models").mkdir(parents=True, exist_ok=True)
    (folder / "models" / UNTRAINED_MARKER).write_text("initial weights written by monai_unet.label; train to replace\n")
    atomic_torch_save({"model": network.state_dict()}, folder / "models" / "model.pt")


def ensure_bundle(folder: str | os.PathLike, name: str, source: str | os.PathLike | None = None) -> Path:
    """Make ``folder`` a servable copy of bundle ``name``: configs/docs/LICENSE from the bundle, weights kept.

    ``configs/`` is refreshed from the bundle (``source``, else :func:`monai_unet.bundles.find_bundle`) when the
    bundle can be found, so an upgraded package serves its new configs; ``models/`` is never overwritten. A folder
    without ``models/model.pt`` gets the network's initial weights (see :mod:`monai_unet.label.main`).

    Returns:
        The folder, resolved.
    """
    folder = Path(folder).resolve()
    try:
        src = find_bundle(source if source is not None else name)
    except FileNotFoundError:
        if not (folder / "configs").is_dir():
            raise
        src = None  # serve the copy already there
    if src is not None and src != folder:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src / "configs", folder / "configs", dirs_exist_ok=True)
        for extra in ("docs", "LICENSE"):
            if (src / extra).is_dir():
                shutil.copytree(src / extra, folder / extra, dirs_exist_ok=True)
            elif (src / extra).is_file():
                shutil.copy2(src / extra, folder / extra)
    if not (folder / "models" / "model.pt").is_file():
        _initial_weights(folder)
    if (folder / "models" / UNTRAINED_MARKER).is_file():
        logger.warning(
            f"{name}: serving the network's initial weights ({folder / 'models' / 'model.pt'}): results mean nothing "
            f"until the model is trained from the datastore's labels (POST /train/{name}) or a trained model is "
            f"given (monai-unet label --model {name}=PATH)."
        )
    return folder


def prepare_app_dir(
    app_dir: str | os.PathLike = DEFAULT_APP_DIR,
    models: str | Sequence[str] = "all",
    weights: Mapping[str, str | os.PathLike] | None = None,
) -> Path:
    """Write the MONAI Label app folder: ``main.py`` and ``model/<bundle>/`` for each served bundle.

    Args:
        app_dir: the folder (created if missing).
        models: ``"all"`` or the bundle names to serve.
        weights: ``{bundle: checkpoint}`` to serve instead of what the folder holds (copied to
            ``model/<bundle>/models/model.pt``), e.g. ``<work-dir>/models/model.pt`` of ``monai-unet train``.

    Returns:
        The app folder, resolved.

    Raises:
        FileNotFoundError: a checkpoint in ``weights`` does not exist.
        ValueError: an unknown bundle name.
    """
    app = Path(app_dir).expanduser().resolve()
    names = selected_models(models)
    weights = dict(weights or {})
    unknown = [n for n in weights if n not in names]
    if unknown:
        raise ValueError(f"--model given for {', '.join(unknown)}, which is not served (serving {', '.join(names)}).")
    app.mkdir(parents=True, exist_ok=True)
    (app / "main.py").write_text(_MAIN_PY)
    for name in names:
        folder = app / "model" / name
        if name in weights:
            ckpt = Path(weights[name]).expanduser()
            if not ckpt.is_file():
                raise FileNotFoundError(f"--model {name}={ckpt}: no such checkpoint file.")
            (folder / "models").mkdir(parents=True, exist_ok=True)
            tmp = folder / "models" / ".model.pt.copy"
            shutil.copyfile(ckpt, tmp)
            os.replace(tmp, folder / "models" / "model.pt")
            (folder / "models" / UNTRAINED_MARKER).unlink(missing_ok=True)
        ensure_bundle(folder, name)
    return app


def server_argv(
    app_dir: str | os.PathLike,
    studies: str | os.PathLike,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    conf: Mapping[str, str] | None = None,
    log_level: str = "info",
) -> list[str]:
    """The ``monailabel start_server`` arguments for the app folder (without the program name)."""
    argv = ["start_server", "--app", str(app_dir), "--studies", str(studies), "--host", host, "--port", str(port)]
    for key, value in (conf or {}).items():
        argv += ["--conf", key, str(value)]
    return [*argv, "--log_level", log_level]


def start_server(
    studies: str | os.PathLike,
    app_dir: str | os.PathLike = DEFAULT_APP_DIR,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    models: str | Sequence[str] = "all",
    weights: Mapping[str, str | os.PathLike] | None = None,
    conf: Mapping[str, str] | None = None,
    log_level: str = "info",
) -> None:
    """Prepare the app folder and run MONAI Label's server in this process until it is stopped (Ctrl-C, SIGTERM).

    When the server stops, the processes it started (a training still running) are stopped too.

    Args:
        studies: the studies folder (images; labels go to ``<studies>/labels/``), or a DICOMweb URL.
        app_dir: the app folder (see :func:`prepare_app_dir`).
        host: the address to listen on (loopback by default; ``0.0.0.0`` for every interface).
        port: the port.
        models: ``"all"`` or the bundle names to serve.
        weights: ``{bundle: checkpoint}`` to serve.
        conf: more MONAI Label ``--conf`` settings (e.g. ``{"preload": "true"}``).
        log_level: uvicorn's log level.
    """
    _require_monailabel()
    from monailabel.main import Main

    names = selected_models(models)
    app = prepare_app_dir(app_dir, names, weights)
    studies = str(studies)
    if not studies.startswith(("http://", "https://")):
        studies = str(Path(studies).expanduser().resolve())
    settings = {"models": ",".join(names), **dict(conf or {})}
    main = Main()
    args = main.args_parser().parse_args(server_argv(app, studies, host, port, settings, log_level))
    # uvicorn re-raises SIGTERM after its shutdown with the handler it found: make that handler an exit that runs
    # the clean-up below (the default one would end the process at once and leave a running training behind)
    previous = signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        main.action_start_server(args)
    finally:
        _stop_children()
        signal.signal(signal.SIGTERM, previous)


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _stop_children(timeout: float = 10.0) -> None:
    """End what the server started (a training still running, its data loader workers): nothing outlives it."""
    import psutil

    children = psutil.Process().children(recursive=True)
    for child in children:
        try:
            child.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(children, timeout=timeout)
    for child in alive:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    if children:
        logger.warning(f"stopped {len(children)} process(es) the server had started (e.g. a training)")
