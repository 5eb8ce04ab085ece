"""A bundle's trained U-Net as a bioimage.io model package (model description format 0.5).

Two ways in, one package: :func:`export_bioimageio` (``monai-unet export``) parses the bundle's ``inference.json``
with its ``export_bioimageio.json``, and ``python -m monai.bundle run export_bioimageio`` evaluates that config's
``export_bioimageio`` entry; both hand the parsed ``network_def``, ``preprocessing`` and ``postprocessing`` to
:func:`write_bioimageio_package`.

Each input spatial axis has ``size: {min, step}``: the network's smallest valid tile and the step between valid tiles,
per axis. The border the unpadded network loses is declared in one of two ways (``size_declaration``):

- ``"offset"`` (the spec's declaration for a network that crops its own border): the output axis is the input's size
  plus a negative ``offset`` (``-2 x halo``); the network is :class:`monai_unet.networks.UNet` itself.
- ``"halo"``: the network's output is zero-padded back to the tile's size and the output axes declare ``halo``, which
  tools crop. This is the form bioimage.io's Python library (bioimageio.core 0.11) tiles: it cannot tile an output
  smaller than its input. The network is :class:`~monai_unet.export.network.PaddedOutputUNet`.

Weights come as ``pytorch_state_dict`` (the architecture and its arguments), TorchScript and, where ``torch.onnx``
exports it, ONNX. The test tensors are the bundle's own MONAI inference on a sample, so ``bioimageio test`` checks
that the package computes what the bundle computes.
"""

from __future__ import annotations

import datetime
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monai_unet.export import files
from monai_unet.export.processing import translate_postprocessing, translate_preprocessing

__all__ = ["EXPORT_CONFIG", "EXTRA_HINT", "SIZE_DECLARATIONS", "export_bioimageio", "write_bioimageio_package"]

EXTRA_HINT = 'the bioimage.io export needs bioimageio.core and onnx: pip install "monai-unet[bioimageio]"'
EXPORT_CONFIG = "export_bioimageio.json"
SIZE_DECLARATIONS = ("offset", "halo")
_PAPER = {
    "text": "Ronneberger O., Fischer P., Brox T. U-Net: Convolutional Networks for Biomedical Image Segmentation. "
    "MICCAI 2015, LNCS 9351, pp. 234-241.",
    "doi": "10.1007/978-3-319-24574-4_28",
}


def _require_bioimageio() -> None:
    try:
        import bioimageio.core
        import bioimageio.spec  # noqa: F401
    except ImportError as e:
        raise ImportError(f"{EXTRA_HINT} ({e}).") from e


def _flatten(compose: Any) -> list[Any]:
    from monai.transforms import Compose

    if isinstance(compose, Compose):
        return list(compose.flatten().transforms)
    return list(compose) if isinstance(compose, (list, tuple)) else [compose]


def _authors(value: Any) -> list[dict[str, Any]]:
    if not value:
        return [{"name": "monai-unet developers"}]
    if isinstance(value, str):
        return [{"name": a.strip()} for a in value.split(",") if a.strip()]
    return [dict(a) if isinstance(a, Mapping) else {"name": str(a)} for a in value]


def _identifier(text: Any) -> str:
    out = "".join(c if c.isalnum() or c == "_" else "_" for c in str(text).strip().lower())
    return out if out and out[0].isalpha() else f"c_{out}"


def _channel_names(metadata: Mapping[str, Any], which: str, key: str, n: int, fallback: str) -> list[str]:
    """Channel names from ``metadata.json``'s ``network_data_format`` (``channel_def``), as spec identifiers."""
    names = metadata.get("network_data_format", {}).get(which, {}).get(key, {}).get("channel_def") or {}
    got = [_identifier(names.get(str(i), names.get(i, f"{fallback}{i}"))) for i in range(n)]
    return got if len(set(got)) == n else [f"{fallback}{i}" for i in range(n)]


def _ops_text(ops: Sequence[Any]) -> str:
    names = [o.id for o in ops if o.id != "ensure_dtype"]
    return ", ".join(names) if names else "none"


def write_bioimageio_package(
    network: Any,
    preprocessing: Any,
    postprocessing: Any,
    checkpoint: str | os.PathLike,
    output: str | os.PathLike,
    settings: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    bundle_root: str | os.PathLike | None = None,
    overwrite: bool = False,
    size_declaration: str = "offset",
    declare_spacing: bool = False,
    sample: str | os.PathLike | None = None,
    onnx: bool = True,
) -> Path:
    """Write the bioimage.io model package of a bundle's network with the weights of ``checkpoint``.

    Args:
        network: the bundle's ``network_def`` (a :class:`~monai_unet.networks.UNet`); its weights are replaced.
        preprocessing: the bundle's ``preprocessing`` (a ``Compose`` starting with ``LoadImaged``).
        postprocessing: the bundle's ``postprocessing``.
        checkpoint: weights file (a state dict, or one under ``model``/``network``/``state_dict``).
        output: the package to write, a ``.zip``; written atomically (a temporary beside it, then renamed).
        settings: the ``bioimageio`` section of ``export_bioimageio.json``: ``name``, ``description``, ``authors``,
            ``license`` (SPDX id), ``cite`` (``{text, doi}`` or ``{text, url}`` entries; the paper is always cited),
            ``tags``, ``documentation`` (Markdown appended to the generated page), ``version``,
            ``git_repo``.
        metadata: the bundle's ``metadata.json`` (``_meta_``): name, version, authors, channel names.
        bundle_root: the bundle folder; its ``configs/`` inference, metadata and export configs are attached.
        overwrite: replace an existing ``output``.
        size_declaration: ``"offset"`` or ``"halo"`` (see the module's documentation).
        declare_spacing: declare ``Spacingd``'s voxel size on the input axes instead of refusing the bundle.
        sample: an image the bundle's loader reads, for the test tensors and the cover; default a synthetic one
            from :mod:`monai_unet.data.synthetic`.
        onnx: also write ONNX weights (skipped with a warning when ``torch.onnx`` cannot export the network).

    Returns:
        ``output``.

    Raises:
        FileExistsError: ``output`` exists and ``overwrite`` is false.
        FileNotFoundError: no checkpoint or sample file.
        ValueError: the checkpoint does not fit the network; the network is not this package's UNet; a bad option;
            :class:`~monai_unet.export.processing.UnsupportedTransformError` for a transform the spec cannot express.
        ImportError: bioimageio.core is not installed.
    """
    from monai.transforms import LoadImaged

    from monai_unet.bundles import load_weights
    from monai_unet.export.network import (
        PaddedOutputUNet,
        check_reversed,
        halo_tiling,
        reverse_spatial_axes,
        unet_kwargs,
    )
    from monai_unet.io.atomic import atomic_output

    output = Path(output).expanduser()
    if output.suffix.lower() != ".zip":
        raise ValueError(f"output {output}: a bioimage.io package is a .zip file; name it e.g. model.zip.")
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} exists; pass --overwrite (bundle: --bioimageio_overwrite true) to replace it.")
    if size_declaration not in SIZE_DECLARATIONS:
        raise ValueError(f"size_declaration must be one of {SIZE_DECLARATIONS}, got {size_declaration!r}.")
    _require_bioimageio()
    import tifffile
    from bioimageio.spec import save_bioimageio_package
    from bioimageio.spec.model import v0_5

    settings = dict(settings or {})
    metadata = dict(metadata or {})
    pre_all = _flatten(preprocessing)
    post_all = _flatten(postprocessing)
    if not pre_all or not isinstance(pre_all[0], LoadImaged):
        raise ValueError("the bundle's preprocessing must start with LoadImaged (it names the image key).")
    loader = pre_all[0]
    image_key = str(loader.keys[0])
    pred_key = next((str(t.keys[0]) for t in post_all if getattr(t, "keys", None)), "pred")

    # everything that can refuse the bundle comes before any work
    unet_kwargs(network)
    dims = network.spatial_dims
    spatial = ["z", "y", "x"][3 - dims :]
    pre = translate_preprocessing(pre_all, image_key, spatial, declare_spacing)
    post = translate_postprocessing(post_all, pred_key, geometry=pre.spacing is not None)
    load_weights(network, checkpoint, "cpu", what=f"the network of {metadata.get('name', 'the bundle')}")
    network = network.cpu().eval()
    exported, kwargs = reverse_spatial_axes(network)
    check_reversed(network, exported)
    halo = list(reversed(network.halo))
    rules = list(reversed(network.axis_rules))
    sizes = [(r.first, r.step) for r in rules]  # declared per input axis: (min, step)
    declared_halo = list(halo)
    crop = [(0, 0)] * dims  # input pixels the exported network drops per axis (start, end)
    pad = [(0, 0)] * dims  # zeros around its output
    architecture = ("UNet", "monai_unet.networks")
    if size_declaration == "halo":
        tilings = [halo_tiling(r) for r in rules]
        declared_halo = [t.halo for t in tilings]
        sizes = [(t.first, r.step) for t, r in zip(tilings, rules)]
        crop = [(t.crop_start, t.crop_end) for t in tilings]
        pad = [(t.pad_start, t.pad_end) for t in tilings]
        kwargs = {"crop": [list(c) for c in crop], "pad": [list(p) for p in pad], **kwargs}
        padded = PaddedOutputUNet(**kwargs)
        padded.unet.load_state_dict(exported.state_dict())
        exported = padded.eval()
        architecture = ("PaddedOutputUNet", "monai_unet.export.network")
        if not all(t.exact for t in tilings):
            warnings.warn(
                "no halo makes the tiles of this network start on its pooling grid: tiled predictions in tools will "
                "differ slightly from monai-unet predict.",
                stacklevel=2,
            )

    name = str(settings.get("name") or f"{metadata.get('name', 'monai-unet')} U-Net")
    spacing = list(reversed(pre.spacing)) if pre.spacing is not None else [None] * dims
    unit = {"unit": "millimeter"} if pre.spacing is not None else {}
    in_names = _channel_names(metadata, "inputs", image_key, network.in_channels, "channel")
    out_names = _channel_names(metadata, "outputs", pred_key, network.out_channels, "class")
    cite = [dict(c) for c in settings.get("cite") or []]
    if not any(str(c.get("doi", "")) == _PAPER["doi"] for c in cite):
        cite.insert(0, dict(_PAPER))
    version = str(torch.__version__).split("+")[0]

    with tempfile.TemporaryDirectory(prefix="monai-unet-bioimageio-") as tmp_dir:
        tmp = Path(tmp_dir)
        # test tensors: the bundle's own inference on the sample (raw tile in, activated output out)
        raw = files.sample_image(network, loader, image_key, sample, [c[0] + c[1] for c in reversed(crop)])
        pre_steps = [t for t in pre_all[1:] if type(t).__name__ not in ("Orientationd", "Spacingd")]
        predicted = files.bundle_inference(
            network, raw, pre_steps, post.applied, image_key, pred_key, crop=list(reversed(crop))
        )
        test_in = files.reverse_axes(raw[None], 2)
        test_out = files.reverse_axes(predicted[None], 2)
        if size_declaration == "halo":  # around it, the padded border: zero logits, postprocessed
            zeros = torch.zeros(network.out_channels, *test_in.shape[2:])
            full = np.asarray(_apply(post.applied, zeros, pred_key), dtype=np.float32)[None]
            inside = tuple(slice(p[0], p[0] + n) for p, n in zip(pad, test_out.shape[2:]))
            full[(slice(None), slice(None), *inside)] = test_out
            test_out, valid = full, test_out
        else:
            valid = test_out
        np.save(tmp / "test_input.npy", test_in)
        np.save(tmp / "test_output.npy", test_out)
        tifffile.imwrite(tmp / "sample_input.tif", test_in[0])
        tifffile.imwrite(tmp / "sample_output.tif", test_out[0])
        region = [(c[0] + h, c[1] + h) for c, h in zip(crop, halo)]  # the input under the valid output
        cover = files.write_cover(test_in[0], valid[0], region, tmp / "cover.png")

        # weights
        torch.save(exported.state_dict(), tmp / "weights.pt")
        weights: dict[str, Any] = {
            "pytorch_state_dict": v0_5.PytorchStateDictWeightsDescr(
                source=tmp / "weights.pt",
                architecture=v0_5.ArchitectureFromLibraryDescr(
                    callable=v0_5.Identifier(architecture[0]), import_from=architecture[1], kwargs=kwargs
                ),
                pytorch_version=v0_5.Version(version),
                comment="The bundle's network with its spatial axes in (z,) y, x order (kernels transposed).",
            ),
            "torchscript": v0_5.TorchscriptWeightsDescr(
                source=files.save_torchscript(exported, tmp / "weights_torchscript.pt"),
                pytorch_version=v0_5.Version(version),
                parent="pytorch_state_dict",
                comment="torch.jit.script of the pytorch_state_dict network.",
            ),
        }
        args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        notes = [
            f"pytorch_state_dict: {architecture[1]}.{architecture[0]}({args}); needs monai-unet installed",
            "torchscript: torch.jit.script of it; needs only PyTorch",
        ]
        if onnx:
            why = files.save_onnx(exported, torch.as_tensor(test_in), tmp / "weights.onnx", opset=18)
            if why is None:
                weights["onnx"] = v0_5.OnnxWeightsDescr(
                    source=tmp / "weights.onnx",
                    opset_version=18,
                    parent="pytorch_state_dict",
                    comment="torch.onnx.export (TorchScript-based exporter), dynamic batch and spatial sizes.",
                )
                notes.append("onnx: opset 18, dynamic batch and spatial sizes; needs an ONNX runtime")
            else:
                warnings.warn(f"ONNX weights skipped: torch.onnx could not export the network ({why}).", stacklevel=2)
                notes.append(f"onnx: not included, torch.onnx could not export the network ({why[:160]})")

        def out_axis(a: str, h: int, s: float | None) -> Any:
            ref = v0_5.SizeReference(
                tensor_id=v0_5.TensorId(image_key),
                axis_id=v0_5.AxisId(a),
                offset=-2 * h if size_declaration == "offset" else 0,
            )
            extra = {"scale": s, **unit} if s is not None else {}
            if size_declaration == "halo" and h > 0:
                return v0_5.SpaceOutputAxisWithHalo(id=v0_5.AxisId(a), size=ref, halo=h, **extra)
            return v0_5.SpaceOutputAxis(id=v0_5.AxisId(a), size=ref, **extra)

        inputs = [
            v0_5.InputTensorDescr(
                id=v0_5.TensorId(image_key),
                description=f"{dims}D image, axes in (z,) y, x order",
                axes=[
                    v0_5.BatchAxis(),
                    v0_5.ChannelAxis(channel_names=[v0_5.Identifier(n) for n in in_names]),
                    *[
                        v0_5.SpaceInputAxis(
                            id=v0_5.AxisId(a),
                            size=v0_5.ParameterizedSize(min=first, step=step),
                            **({"scale": s, **unit} if s is not None else {}),
                        )
                        for a, (first, step), s in zip(spatial, sizes, spacing)
                    ],
                ],
                test_tensor=v0_5.FileDescr(source=tmp / "test_input.npy"),
                sample_tensor=v0_5.FileDescr(source=tmp / "sample_input.tif"),
                data=v0_5.IntervalOrRatioDataDescr(type="float32"),
                preprocessing=pre.ops,
                pad=v0_5.ReflectPadding(mode="reflect"),  # the border is mirrored, as overlap-tile inference does
            )
        ]
        outputs = [
            v0_5.OutputTensorDescr(
                id=v0_5.TensorId(pred_key),
                description=(
                    "class probabilities; the label image is their argmax over channel"
                    if post.activation == "softmax"
                    else "network output"
                ),
                axes=[
                    v0_5.BatchAxis(),
                    v0_5.ChannelAxis(channel_names=[v0_5.Identifier(n) for n in out_names]),
                    *[
                        out_axis(a, h, s)
                        for a, h, s in zip(spatial, halo if size_declaration == "offset" else declared_halo, spacing)
                    ],
                ],
                test_tensor=v0_5.FileDescr(source=tmp / "test_output.npy"),
                sample_tensor=v0_5.FileDescr(source=tmp / "sample_output.tif"),
                data=v0_5.IntervalOrRatioDataDescr(
                    type="float32", range=(0.0, 1.0) if post.activation is not None else (None, None)
                ),
                postprocessing=post.ops,
            )
        ]

        import monai

        import monai_unet

        description = str(
            settings.get("description")
            or metadata.get("description")
            or "The original unpadded U-Net (Ronneberger et al. 2015), exported from a MONAI bundle."
        )
        doc = files.write_documentation(
            {
                "name": name,
                "description": description,
                "axes": ", ".join(["batch", "channel", *spatial]),
                "in_names": in_names,
                "out_names": out_names,
                "sizes": "; ".join(f"{a}: {first} + {step}k" for a, (first, step) in zip(spatial, sizes)),
                "crop": " / ".join(f"{h} ({a})" for a, h in zip(spatial, declared_halo)),
                "lost": " / ".join(f"{2 * h} ({a})" for a, h in zip(spatial, halo)),
                "size_declaration": size_declaration,
                "pre": _ops_text(pre.ops),
                "pre_notes": pre.notes,
                "post": _ops_text(post.ops),
                "post_notes": post.notes,
                "weights": notes,
                "cite": cite,
                "bundle": metadata.get("name", "the bundle"),
                "versions": f"monai-unet {monai_unet.__version__}, MONAI {monai.__version__}, PyTorch {version}",
                "extra": settings.get("documentation"),
            },
            tmp / "README.md",
        )
        attachments = []
        if bundle_root is not None:
            for cfg in ("inference.json", "metadata.json", EXPORT_CONFIG):
                if (Path(bundle_root) / "configs" / cfg).is_file():
                    attachments.append(v0_5.FileDescr(source=Path(bundle_root) / "configs" / cfg))
        # the weights' date, so that two exports of one checkpoint describe it alike
        stamp = datetime.datetime.fromtimestamp(Path(checkpoint).stat().st_mtime, tz=datetime.timezone.utc)
        descr = v0_5.ModelDescr(
            name=name,
            description=description[:1024],
            authors=[v0_5.Author(**a) for a in _authors(settings.get("authors") or metadata.get("authors"))],
            cite=[v0_5.CiteEntry(**c) for c in cite],
            license=str(settings.get("license") or "Apache-2.0"),
            documentation=v0_5.FileDescr(source=doc),
            covers=[v0_5.FileDescr(source=cover)],
            tags=list(settings.get("tags") or ["unet", "segmentation", "pytorch", "monai"]),
            inputs=inputs,
            outputs=outputs,
            weights=v0_5.WeightsDescr(**weights),
            attachments=attachments,
            timestamp=v0_5.Datetime(stamp),
            version=settings.get("version") or metadata.get("version"),
            **({"git_repo": settings["git_repo"]} if settings.get("git_repo") else {}),
        )
        with atomic_output(output) as part:
            save_bioimageio_package(descr, output_path=part)
    return output


def _apply(steps: Sequence[Any], tensor: torch.Tensor, key: str) -> Any:
    from monai.data import MetaTensor

    data = {key: MetaTensor(tensor)}
    for t in steps:
        data = t(data)
    return data[key]


def export_bioimageio(
    bundle: str | os.PathLike,
    checkpoint: str | os.PathLike | None,
    output: str | os.PathLike,
    configs: Sequence[str | os.PathLike] = (),
    overrides: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    size_declaration: str | None = None,
    declare_spacing: bool | None = None,
    sample: str | os.PathLike | None = None,
    onnx: bool = True,
) -> Path:
    """Export a bundle as a bioimage.io package: ``inference.json``, then ``export_bioimageio.json`` when the bundle
    has one, then ``configs``, as ``python -m monai.bundle run export_bioimageio`` merges them.

    Args:
        bundle: bundle folder or name (``unet2d_membrane``, ``unet3d_volume``).
        checkpoint: weights file; default the bundle's ``ckpt_path``.
        output: the package to write (``.zip``).
        configs: config overlays merged over the bundle's configs (as ``monai-unet predict --config``).
        overrides: config ids and values set before parsing (``{"features": [16, 32, 64, 128, 256]}``).
        overwrite: replace an existing ``output``.
        size_declaration: ``"offset"`` or ``"halo"``; default the config's ``bioimageio_size_declaration``.
        declare_spacing: see :func:`write_bioimageio_package`; default the config's ``bioimageio_declare_spacing``.
        sample: see :func:`write_bioimageio_package`; default the config's ``bioimageio_sample``.
        onnx: also write ONNX weights.

    Raises:
        as :func:`write_bioimageio_package`; FileNotFoundError for an unknown bundle, config or checkpoint.
    """
    from monai_unet.bundles import find_bundle, inference_workflow

    path = find_bundle(bundle)
    output = Path(output).expanduser()
    if output.exists() and not overwrite:  # before parsing anything
        raise FileExistsError(f"{output} exists; pass --overwrite to replace it.")
    _require_bioimageio()
    own = [EXPORT_CONFIG] if (path / "configs" / EXPORT_CONFIG).is_file() else []
    workflow = inference_workflow(
        path, "inference", {"device": "$torch.device('cpu')", **dict(overrides or {})}, [*own, *configs]
    )
    parser = workflow.parser

    def setting(key: str, default: Any) -> Any:
        return parser.get_parsed_content(key) if key in parser else default

    ckpt = Path(checkpoint if checkpoint is not None else parser.get_parsed_content("ckpt_path"))
    if not ckpt.is_file():
        raise FileNotFoundError(
            f"checkpoint {ckpt} not found: train the bundle first (monai-unet train --bundle {path.name} --work-dir "
            "DIR) and pass --checkpoint DIR/models/model.pt."
        )
    return write_bioimageio_package(
        workflow.network_def,
        workflow.preprocessing,
        workflow.postprocessing,
        checkpoint=ckpt,
        output=output,
        settings=setting("bioimageio", {}),
        metadata=parser.get("_meta_", {}),
        bundle_root=path,
        overwrite=overwrite,
        size_declaration=size_declaration or setting("bioimageio_size_declaration", "offset"),
        declare_spacing=bool(
            setting("bioimageio_declare_spacing", False) if declare_spacing is None else declare_spacing
        ),
        sample=sample if sample is not None else setting("bioimageio_sample", None),
        onnx=onnx,
    )
