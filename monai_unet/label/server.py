"""Preparing the MONAI Label app folder and starting the server (what ``monai-unet label`` does).

MONAI Label serves an app *folder* whose ``main.py`` defines the app, and writes ``model/``, ``logs/``, ``lib/``
and ``bin/`` into it. So the app is not served from the installed package folder: :func:`prepare_app_dir` writes a
small folder (default ``./monai-unet-label-app``) whose ``main.py`` imports :class:`monai_unet.label.main.MonaiUnetApp`,
with each bundle's configs under ``model/<bundle>/`` (refreshed from the installed bundles on every start) and its
weights in ``model/<bundle>/models/model.pt`` (kept across starts, updated by training).

A trained model may need a config overlay (a plan from ``monai-unet plan``, the ``final_overlay.json`` of
``scripts/eval_brain_dicom.py``: its channels, network and preprocessing), as ``monai-unet predict --config`` takes
it. ``monai-unet label --config NAME=OVERLAY`` keeps it with the weights, as ``model/<bundle>/configs/``
``label_overlay.json``, and every start merges it over the refreshed ``inference.json`` and ``train.json`` (MONAI's
``ConfigParser.load_config_files``, the merge of :func:`monai_unet.bundles.inference_workflow`), so that MONAI
Label's infer and train tasks build the network and preprocessing the model was trained with.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from monai_unet.bundles import BUNDLE_NAMES, bundle_config, find_bundle, state_dict_from

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEFAULT_APP_DIR",
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "OVERLAY_FILE",
    "ensure_bundle",
    "prepare_app_dir",
    "read_overlay",
    "selected_models",
    "server_argv",
    "start_server",
]

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_APP_DIR = "monai-unet-label-app"
UNTRAINED_MARKER = "model.pt.untrained"
OVERLAY_FILE = "label_overlay.json"  # in <bundle>/configs/: the overlay served with the weights
MERGED_CONFIGS = ("inference.json", "train.json")  # what MONAI Label's infer and train tasks read

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
        overlay = folder / "configs" / OVERLAY_FILE
        served = (
            f"{folder / 'configs' / 'inference.json'} with the overlay {overlay} merged in"
            if overlay.is_file()
            else f"{folder / 'configs' / 'inference.json'} (no overlay)"
        )
        raise ValueError(
            f"{path} does not fit the {name} network of {served} (first differences: {diff}): give weights trained "
            f"for this network (--model {name}=PATH) with the overlay they were trained with (--config {name}="
            f"OVERLAY.json; --config {name}= for none), or delete the file to start from the initial weights."
        )


def read_overlay(name: str, overlays: Sequence[str | os.PathLike], source: str | os.PathLike | None = None) -> dict:
    """The config overlays of bundle ``name`` merged in order into one config dict (later ones override).

    Each is a path or the name of one of the bundle's configs (``brain_tumor_progression``), found as
    ``monai-unet predict --config`` finds it (:func:`monai_unet.bundles.bundle_config`), and merged as the bundle
    merges config files (MONAI's ``ConfigParser.load_config_files``).

    Raises:
        FileNotFoundError: an overlay is neither a file nor a config of the bundle.
        ValueError: an overlay is not a JSON/YAML object.
    """
    from monai.bundle import ConfigParser

    bundle = find_bundle(source if source is not None else name)
    files = []
    for overlay in overlays:
        try:
            path = bundle_config(bundle, str(overlay))
        except FileNotFoundError:
            raise FileNotFoundError(
                f"--config {name}={overlay}: no such overlay file (nor a config of {bundle / 'configs'}); give the "
                f"JSON overlay the model was trained with (a plan from monai-unet plan, a final_overlay.json)."
            ) from None
        try:
            content = ConfigParser.load_config_file(path)
        except Exception as e:
            raise ValueError(f"--config {name}={overlay}: {path} is not a JSON/YAML config: {e}") from e
        if not isinstance(content, dict):
            raise ValueError(
                f"--config {name}={overlay}: {path} holds a {type(content).__name__}, not a config object "
                f'({{"in_channels": 4, "channels": {{...}}, ...}}).'
            )
        files.append(str(path))
    return ConfigParser.load_config_files(files) if files else {}


def _apply_overlay(folder: Path, overlay: Mapping[str, Any]) -> None:
    """Merge ``overlay`` over the bundle's refreshed ``inference.json``/``train.json`` in ``folder/configs``, and
    say its input channels in ``metadata.json`` (``num_channels``, ``channel_def``)."""
    from monai.bundle import ConfigParser

    from monai_unet.io.writers import write_json

    configs = folder / "configs"
    tmp = configs / ".label_overlay.merging.json"
    write_json(tmp, dict(overlay))
    try:
        for name in MERGED_CONFIGS:
            if (configs / name).is_file():
                write_json(configs / name, ConfigParser.load_config_files([str(configs / name), str(tmp)]))
    finally:
        tmp.unlink(missing_ok=True)
    meta_path = configs / "metadata.json"
    inference = json.loads((configs / "inference.json").read_text())
    channels, in_channels = inference.get("channels"), inference.get("in_channels")
    if not meta_path.is_file() or not isinstance(in_channels, int):
        return
    meta = json.loads(meta_path.read_text())
    image = next(iter(meta.get("network_data_format", {}).get("inputs", {}).values()), None)
    if isinstance(image, dict):
        names = list(channels) if isinstance(channels, Mapping) and len(channels) == in_channels else []
        image["num_channels"] = in_channels
        image["channel_def"] = {str(i): n for i, n in enumerate(names or [f"channel {i}" for i in range(in_channels)])}
        write_json(meta_path, meta)


def _initial_weights(folder: Path) -> None:
    """Write the network's seeded initial weights to ``folder/models/model.pt`` (atomically), marked untrained."""
    import torch

    from monai_unet.handlers.checkpoint import atomic_torch_save

    torch.manual_seed(0)
    network = _network(folder)
    (folder / "models").mkdir(parents=True, exist_ok=True)
    (folder / "models" / UNTRAINED_MARKER).write_text("initial weights written by monai_unet.label; train to replace\n")
    atomic_torch_save({"model": network.state_dict()}, folder / "models" / "model.pt")


def _serve_weights(folder: Path, name: str, weights: str | os.PathLike | None) -> None:
    """``models/model.pt``: ``weights`` copied in, else the one kept, else the network's initial weights (also when
    initial weights kept from an earlier start no longer fit the network)."""
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
        try:
            _check_weights(folder, name)
        except ValueError:
            if not (folder / "models" / UNTRAINED_MARKER).is_file():
                raise
            _initial_weights(folder)  # nothing trained is lost


def ensure_bundle(
    folder: str | os.PathLike,
    name: str,
    source: str | os.PathLike | None = None,
    weights: str | os.PathLike | None = None,
    overlays: Sequence[str | os.PathLike] | None = None,
) -> Path:
    """Make ``folder`` a servable copy of bundle ``name``: configs/docs/LICENSE from the bundle, weights kept.

    ``configs/`` is refreshed from the bundle (``source``, else :func:`monai_unet.bundles.find_bundle`) when the
    bundle can be found, so an upgraded package serves its new configs; the overlay kept in
    ``configs/label_overlay.json`` is then merged over ``inference.json`` and ``train.json`` again.
    ``models/model.pt`` is replaced only by ``weights``; a folder without it gets the network's initial weights
    (see :mod:`monai_unet.label.main`), and so do initial weights that no longer fit (a new overlay).

    Args:
        folder: the bundle's folder in the app folder (``<app_dir>/model/<name>``).
        name: the bundle name.
        source: the bundle folder to copy from (default: found by name).
        weights: a checkpoint to serve (copied to ``models/model.pt``; ``{"model": state_dict}`` or a state dict).
        overlays: config overlays the weights need (see :func:`read_overlay`), kept with them from now on;
            ``None`` keeps the overlay already kept, ``[]`` serves the bundle's own configs again.

    Returns:
        The folder, resolved.

    Raises:
        FileNotFoundError: no such bundle and no copy in ``folder``; ``weights`` or an overlay is not a file.
        ValueError: the weights (given, or already in ``folder``) do not fit the bundle's network (names and shapes),
            with the overlay merged in; an overlay that is not a config or does not build a network.
    """
    folder = Path(folder).resolve()
    kept = folder / "configs" / OVERLAY_FILE
    new_overlay = None if overlays is None else read_overlay(name, overlays, source)
    try:
        src = find_bundle(source if source is not None else name)
    except FileNotFoundError:
        if not (folder / "configs").is_dir():
            raise
        src = None  # serve the copy already there (its configs have the kept overlay merged in)
    if src is not None and src != folder:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src / "configs", folder / "configs", dirs_exist_ok=True)
        for extra in ("docs", "LICENSE"):
            if (src / extra).is_dir():
                shutil.copytree(src / extra, folder / extra, dirs_exist_ok=True)
            elif (src / extra).is_file():
                shutil.copy2(src / extra, folder / extra)
        overlay = new_overlay if new_overlay is not None else json.loads(kept.read_text()) if kept.is_file() else {}
        if overlay:
            _apply_overlay(folder, overlay)
    elif new_overlay is not None:
        raise ValueError(
            f"--config {name}: no bundle to copy fresh configs from into {folder / 'configs'}, so the overlay has "
            f"nothing to be merged over (install monai-unet with its bundles, or set MONAI_UNET_BUNDLES)."
        )
    try:
        _serve_weights(folder, name, weights)
    except ValueError:
        raise
    except Exception as e:  # the overlay's network or weights cannot be built: say which files
        if not (new_overlay or kept.is_file()):
            raise
        raise ValueError(
            f"{name}: {folder / 'configs' / 'inference.json'} with the overlay merged in does not build a network "
            f"({type(e).__name__}: {' '.join(str(e).split())[:300]}): check the overlay (--config {name}=OVERLAY)."
        ) from e
    if new_overlay:
        from monai_unet.io.writers import write_json

        write_json(kept, new_overlay)
    elif new_overlay is not None:
        kept.unlink(missing_ok=True)
    model_pt = folder / "models" / "model.pt"
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
    overlays: Mapping[str, Sequence[str | os.PathLike]] | None = None,
) -> Path:
    """Write the MONAI Label app folder: ``main.py`` and ``model/<bundle>/`` for each served bundle.

    Args:
        app_dir: the folder (created if missing).
        models: ``"all"`` or the bundle names to serve.
        weights: ``{bundle: checkpoint}`` to serve instead of what the folder holds (see :func:`ensure_bundle`),
            e.g. ``<work-dir>/models/model.pt`` of ``monai-unet train``.
        overlays: ``{bundle: [overlay, ...]}``, the config overlays the weights were trained with (a plan, a
            ``final_overlay.json``), kept with them (``[]``: the bundle's own configs again; see
            :func:`ensure_bundle`).

    Returns:
        The app folder, resolved.

    Raises:
        FileNotFoundError: a checkpoint or overlay does not exist.
        ValueError: an unknown or unserved bundle name; an overlay that is not a config; weights that do not fit a
            bundle's network.
    """
    app = Path(app_dir).expanduser().resolve()
    names = selected_models(models)
    weights = dict(weights or {})
    overlays = dict(overlays or {})
    for option, given in (("--model", weights), ("--config", overlays)):
        unknown = [n for n in given if n not in BUNDLE_NAMES]
        if unknown:
            raise ValueError(f"{option} given for {', '.join(unknown)}: no such bundle ({', '.join(BUNDLE_NAMES)}).")
        unserved = [n for n in given if n not in names]
        if unserved:
            raise ValueError(
                f"{option} given for {', '.join(unserved)}, which is not served (serving {', '.join(names)})."
            )
    app.mkdir(parents=True, exist_ok=True)
    (app / "main.py").write_text(_MAIN_PY)
    for name in names:
        ensure_bundle(app / "model" / name, name, weights=weights.get(name), overlays=overlays.get(name))
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
    overlays: Mapping[str, Sequence[str | os.PathLike]] | None = None,
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
        overlays: ``{bundle: [overlay, ...]}``: the config overlays the weights need (see :func:`prepare_app_dir`).

    Raises:
        ValueError: a DICOMweb URL with credentials in it, or ``dicomweb_user`` without a password.
    """
    _require_monailabel()
    from monailabel.main import Main

    names = selected_models(models)
    studies = _studies(studies, conf or {})
    app = prepare_app_dir(app_dir, names, weights, overlays)
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
