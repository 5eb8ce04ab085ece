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
from typing import TYPE_CHECKING

from monai_unet.bundles import BUNDLE_NAMES, find_bundle, state_dict_from

if TYPE_CHECKING:
    import torch

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
    from monai.utils import optional_import

    _, has_monailabel = optional_import("monailabel")
    if not has_monailabel:
        raise SystemExit('monai-unet label needs MONAI Label: pip install "monai-unet[label]".')


def selected_models(models: str | Sequence[str] = "all") -> list[str]:
    """Bundle names from ``"all"``, a comma-separated string or a list; unknown names raise ``ValueError``."""
    names = [m.strip() for m in (models.split(",") if isinstance(models, str) else models) if m.strip()]
    if not names or names == ["all"]:
        return list(BUNDLE_NAMES)
    unknown = [n for n in names if n not in BUNDLE_NAMES]
    if unknown:
        raise ValueError(f"unknown model(s) {', '.join(unknown)}: choose from all, {', '.join(BUNDLE_NAMES)}.")
    return names


def _network(folder: Path) -> torch.nn.Module:
    """The bundle's ``network_def`` of ``inference.json`` (what the infer task builds), on the CPU."""
    from monai_unet.bundles import inference_workflow

    return inference_workflow(folder, overrides={"device": "$torch.device('cpu')"}).network_def


def _check_weights(folder: Path, name: str, path: Path | None = None) -> None:
    """Raise ``ValueError`` when ``path`` (default ``models/model.pt``) does not fit the bundle's network."""
    import torch

    path = folder / "models" / "model.pt" if path is None else path
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state = state_dict_from(checkpoint) if isinstance(checkpoint, dict) else None
    want = {k: tuple(v.shape) for k, v in _network(folder).state_dict().items()}
    have = {k: tuple(v.shape) for k, v in state.items()} if isinstance(state, dict) else {}
    if have != want:
        diff = sorted(set(have.items()) ^ set(want.items()))[:4]
        raise ValueError(
            f"{path} does not fit the {name} network of {folder / 'configs' / 'inference.json'} (first differences: "
            f"{diff}): give weights trained for this network (--model {name}=PATH), or delete the file to start "
            f"from the initial weights."
        )


def _initial_weights(folder: Path) -> None:
    """Write the network's seeded initial weights to ``folder/models/model.pt`` (atomically), marked untrained."""
    import torch

    from monai_unet.handlers.checkpoint import atomic_torch_save

    torch.manual_seed(0)
    network = _network(folder)
    (folder / "models").mkdir(parents=True, exist_ok=True)
    (folder / "models" / UNTRAINED_MARKER).write_text("initial weights written by monai_unet.label; train to replace\n")
    atomic_torch_save({"model": network.state_dict()}, folder / "models" / "model.pt")


def ensure_bundle(
    folder: str | os.PathLike,
    name: str,
    source: str | os.PathLike | None = None,
    weights: str | os.PathLike | None = None,
) -> Path:
    """Make ``folder`` a servable copy of bundle ``name``: configs/docs/LICENSE from the bundle, weights kept.

    ``configs/`` is refreshed from the bundle (``source``, else :func:`monai_unet.bundles.find_bundle`) when the
    bundle can be found, so an upgraded package serves its new configs. ``models/model.pt`` is replaced only by
    ``weights``; a folder without it gets the network's initial weights (see :mod:`monai_unet.label.main`).

    Args:
        folder: the bundle's folder in the app folder (``<app_dir>/model/<name>``).
        name: the bundle name.
        source: the bundle folder to copy from (default: found by name).
        weights: a checkpoint to serve (copied to ``models/model.pt``; ``{"model": state_dict}`` or a state dict).

    Returns:
        The folder, resolved.

    Raises:
        FileNotFoundError: no such bundle and no copy in ``folder``; ``weights`` is not a file.
        ValueError: the weights (given, or already in ``folder``) do not fit the bundle's network (names and shapes).
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
    model_pt = folder / "models" / "model.pt"
    if weights is not None:
        ckpt = Path(weights).expanduser()
        if not ckpt.is_file():
            raise FileNotFoundError(f"--model {name}={ckpt}: no such checkpoint file.")
        _check_weights(folder, name, ckpt)
        model_pt.parent.mkdir(parents=True, exist_ok=True)
        tmp = model_pt.with_name(".model.pt.copy")
        shutil.copyfile(ckpt, tmp)
        os.replace(tmp, model_pt)
        (folder / "models" / UNTRAINED_MARKER).unlink(missing_ok=True)
    elif not model_pt.is_file():
        _initial_weights(folder)
    else:
        _check_weights(folder, name)
    if (folder / "models" / UNTRAINED_MARKER).is_file():
        logger.warning(
            f"{name}: serving the network's initial weights ({model_pt}): results mean nothing until the model is "
            f"trained from the datastore's labels (POST /train/{name}) or a trained model is given "
            f"(monai-unet label --model {name}=PATH)."
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
        weights: ``{bundle: checkpoint}`` to serve instead of what the folder holds (see :func:`ensure_bundle`),
            e.g. ``<work-dir>/models/model.pt`` of ``monai-unet train``.

    Returns:
        The app folder, resolved.

    Raises:
        FileNotFoundError: a checkpoint in ``weights`` does not exist.
        ValueError: an unknown bundle name, or weights that do not fit a bundle's network.
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
        ensure_bundle(app / "model" / name, name, weights=weights.get(name))
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
        studies: the studies folder (images; labels go to ``<studies>/labels/``), or a DICOMweb server's root
            (``dicomweb+http://HOST:8042/dicom-web`` or ``http://...``: see :mod:`monai_unet.label.datastore`).
        app_dir: the app folder (see :func:`prepare_app_dir`).
        host: the address to listen on (loopback by default; ``0.0.0.0`` for every interface).
        port: the port.
        models: ``"all"`` or the bundle names to serve.
        weights: ``{bundle: checkpoint}`` to serve.
        conf: more MONAI Label ``--conf`` settings (e.g. ``{"preload": "true"}``).
        log_level: uvicorn's log level.

    Raises:
        ValueError: a DICOMweb URL with credentials in it, or ``dicomweb_user`` without a password.
    """
    _require_monailabel()
    from monailabel.main import Main

    names = selected_models(models)
    studies = _studies(studies, conf or {})
    app = prepare_app_dir(app_dir, names, weights)
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


def _studies(studies: str | os.PathLike, conf: Mapping[str, str]) -> str:
    """The folder, resolved; or the DICOMweb root (``dicomweb+`` dropped), its password in the environment.

    With ``dicomweb_user`` set and no ``$MONAI_UNET_DICOMWEB_PASSWORD``, the password is asked on the terminal and
    put in this process' environment, where the app (and a training it starts) reads it: never on a command line.
    """
    from monai_unet.io.dicomweb import PASSWORD_ENV, is_dicomweb_url, parse_dicomweb_url, read_password

    text = str(studies)
    if not (is_dicomweb_url(text) or text.lower().startswith(("http://", "https://"))):
        return str(Path(text).expanduser().resolve())
    url = parse_dicomweb_url(text)
    user = conf.get("dicomweb_user")
    if user and not os.environ.get(PASSWORD_ENV):
        os.environ[PASSWORD_ENV] = read_password(user)
    return url


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
