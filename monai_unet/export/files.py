"""The files of a bioimage.io package other than its description: test tensors, cover, weights, documentation.

Arrays here are in the network's own (MONAI) axis order ``(C, x, y[, z])`` until :func:`reverse_axes` turns them
into the package's ``(C, [z,] y, x)``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "bundle_inference",
    "reverse_axes",
    "sample_image",
    "save_onnx",
    "save_torchscript",
    "write_cover",
    "write_documentation",
]

# the test tile: the smallest valid tile whose output has at least this many pixels per axis (2D, 3D)
TEST_OUTPUT = {2: 160, 3: 24}


def reverse_axes(array: np.ndarray, lead: int) -> np.ndarray:
    """``array`` with its axes after the first ``lead`` ones reversed (MONAI's ``(x, y, z)`` <-> ``(z, y, x)``)."""
    return np.ascontiguousarray(np.transpose(array, (*range(lead), *range(array.ndim - 1, lead - 1, -1))))


def _fit(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """``image`` ``(C, *S)`` centre-cropped, then reflect-padded (as overlap-tile inference pads), to ``size``."""
    out = image
    for axis, n in enumerate(size, start=1):
        have = out.shape[axis]
        if have > n:
            start = (have - n) // 2
            out = np.take(out, range(start, start + n), axis=axis)
        elif have < n:
            before = (n - have) // 2
            pad = [(0, 0)] * out.ndim
            pad[axis] = (before, n - have - before)
            out = np.pad(out, pad, mode="reflect" if have > 1 else "edge")
    return np.ascontiguousarray(out)


def sample_image(
    network: Any, loader: Any, image_key: str, sample: str | os.PathLike | None, extra: Sequence[int] = ()
) -> np.ndarray:
    """The raw test image ``(C, *S)`` float32 in the network's axis order, cropped or padded to the test tile.

    Args:
        network: the bundle's UNet (its size rules give the tile).
        loader: the bundle's ``LoadImaged`` (reads ``sample``).
        image_key: its key.
        sample: an image file; ``None``: a synthetic EM section (2D) or MR-like volume (3D), seeded.
        extra: pixels per axis added to the tile (what the exported network drops before the U-Net).

    Raises:
        FileNotFoundError: no such sample file.
        ValueError: the sample does not have the network's dimensionality or channels.
    """
    dims = network.spatial_dims
    size = [r.input_for(TEST_OUTPUT[dims]) + (extra[i] if extra else 0) for i, r in enumerate(network.axis_rules)]
    if sample is not None:
        path = Path(sample)
        if not path.exists():
            raise FileNotFoundError(f"sample image {path} not found (give an image the bundle can read, or none).")
        image = np.asarray(loader({image_key: str(path)})[image_key], dtype=np.float32)
        if image.ndim != dims + 1 or image.shape[0] != network.in_channels:
            raise ValueError(
                f"sample image {path} has shape {image.shape} after the bundle's loading; the network takes "
                f"{network.in_channels} channel(s) of {dims}D images."
            )
    else:
        from monai_unet.data.synthetic import em_section, volume_sample

        rng = np.random.default_rng(0)
        if dims == 2:
            section = em_section((size[1], size[0]), rng)[0]  # (y, x) -> the network's (x, y)
            image = section.T[None].astype(np.float32)
        else:
            image = volume_sample(size, (2.0, 2.0, 3.0), rng)[0][None].astype(np.float32)
        image = np.repeat(image, network.in_channels, axis=0)
    return _fit(image, size)


def bundle_inference(
    network: torch.nn.Module,
    image: np.ndarray,
    pre: Sequence[Any],
    post: Sequence[Any],
    image_key: str,
    pred_key: str,
    crop: Sequence[tuple[int, int]] = (),
) -> np.ndarray:
    """The bundle's own MONAI steps on one tile ``(C, *S)``: ``pre`` (intensity steps), ``crop`` (pixels dropped at the
    start and end of each axis), the network, ``post`` (the steps the package expresses).

    Returns:
        ``(C_out, *S_out)`` float32 in the network's axis order.
    """
    from monai.data import MetaTensor

    data = {image_key: MetaTensor(torch.as_tensor(image))}
    for t in pre:
        data = t(data)
    x = torch.as_tensor(data[image_key], dtype=torch.float32)[None]
    for d, (start, end) in enumerate(crop):
        x = x.narrow(d + 2, start, x.shape[d + 2] - start - end)
    with torch.no_grad():
        out = network.eval()(x)[0]
    result = {pred_key: MetaTensor(out)}
    for t in post:
        result = t(result)
    return np.asarray(result[pred_key], dtype=np.float32)


def write_cover(raw: np.ndarray, prediction: np.ndarray, region: Sequence[tuple[int, int]], path: Path) -> Path:
    """A 2:1 PNG: the part of the input the prediction covers (first channel) beside the last output channel.

    Args:
        raw: ``(C, *S)`` in the package's ``(z,) y, x`` order.
        prediction: ``(C_out, *S_out)``, same order; 3D: the middle slice is shown.
        region: per spatial axis, the input pixels ``(start, end)`` outside what ``prediction`` covers.
    """
    from PIL import Image

    inner = raw[(0, *(slice(a, raw.shape[i + 1] - b) for i, (a, b) in enumerate(region)))]
    pred = prediction[-1]
    if inner.ndim == 3:
        inner, pred = inner[inner.shape[0] // 2], pred[pred.shape[0] // 2]
    lo, hi = np.percentile(inner, (0.5, 99.5))
    left = np.clip((inner - lo) / max(hi - lo, 1e-6), 0, 1)
    if pred.min() >= 0 and pred.max() <= 1:
        right = pred
    else:
        right = (pred - pred.min()) / max(float(np.ptp(pred)), 1e-6)
    picture = (np.concatenate([left, right], axis=1) * 255).round().astype(np.uint8)
    scale = max(1, 256 // picture.shape[0])
    Image.fromarray(picture).resize((picture.shape[1] * scale, picture.shape[0] * scale), Image.NEAREST).save(path)
    return path


def save_torchscript(network: torch.nn.Module, path: Path) -> Path:
    """``torch.jit.script`` of ``network`` (keeps the UNet's input-size check, so a tool shows its message)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.")
        torch.jit.save(torch.jit.script(network), str(path))
    return path


def save_onnx(network: torch.nn.Module, example: torch.Tensor, path: Path, opset: int = 18) -> str | None:
    """Write ``network`` as ONNX with dynamic batch and spatial sizes; return why not when ``torch.onnx`` fails.

    The TorchScript-based exporter (``dynamo=False``) is used: torch.export's exporter specialises the spatial sizes
    on the example (the crop-and-concatenate arithmetic of the valid network defeats its dynamic shapes).
    """
    dims = example.ndim - 2
    axes = {0: "batch", **{i + 2: f"in{i}" for i in range(dims)}}
    out_axes = {0: "batch", **{i + 2: f"out{i}" for i in range(dims)}}
    try:
        import onnx  # noqa: F401

        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                network,
                (example,),
                str(path),
                dynamo=False,
                input_names=["input"],
                output_names=["output"],
                dynamic_axes={"input": axes, "output": out_axes},
                opset_version=opset,
            )
    except Exception as e:  # any exporter failure: the package keeps TorchScript and the state dict
        path.unlink(missing_ok=True)
        return f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
    return None


def write_documentation(info: Mapping[str, Any], path: Path) -> Path:
    """The package's README.md: what the model takes and gives, the size rules, what a tool does, validation.

    ``info`` keys: name, description, axes, in_names, out_names, sizes, crop, lost, size_declaration, pre, pre_notes,
    post, post_notes, weights, cite, bundle, versions, extra.
    """
    if info["size_declaration"] == "offset":
        border = (
            f"The convolutions are unpadded: the output is smaller than the input by {info['lost']} pixels (declared "
            "as a negative `offset` on the output axes). A tool that tiles gives each tile half that much context per "
            "side, mirrored at the image border, as overlap-tile inference does."
        )
    else:
        border = (
            f"The convolutions are unpadded; the exported network pads its output back to the tile's size, and a "
            f"border of {info['crop']} "
            "pixels per side is to be cropped (declared as `halo`). A tool that tiles gives each tile that much "
            "context, mirrored at the image border (`pad: reflect`), and crops it: overlap-tile inference. The halo "
            "is a little wider than the network's, so that tiles start on its pooling grid and give what one pass "
            "over the whole image gives."
        )
    lines = [
        f"# {info['name']}",
        "",
        info["description"],
        "",
        "## Input",
        "",
        f"`{info['axes']}`, float32, channel(s): {', '.join(info['in_names'])}.",
        f"Valid tile sizes per spatial axis: {info['sizes']} pixels. Tools that tile accept any image size.",
        "",
        f"Preprocessing (the bundle's, as bioimage.io operations): {info['pre']}.",
        *[f"\n{n}" for n in info["pre_notes"]],
        "",
        "## Output",
        "",
        f"`{info['axes']}`, float32, channels: {', '.join(info['out_names'])}. {border}",
        "",
        f"Postprocessing: {info['post']}.",
        *[f"\n{n}" for n in info["post_notes"]],
        "",
        "## Validation",
        "",
        f"The test tensors are the bundle's own MONAI inference ({info['versions']}) on the test input, not the "
        "package's operations: `bioimageio test` checks that every weights format, with the package's pre- and "
        "postprocessing, reproduces the bundle. Accuracy on real data: see the bundle's documentation "
        f"({info['bundle']}/docs/README.md).",
        "",
        "## Weights",
        "",
        *[f"- {w}" for w in info["weights"]],
        "",
        "## Cite",
        "",
        *[
            f"- {c['text']} doi:{c['doi']}" if c.get("doi") else f"- {c['text']} {c.get('url', '')}"
            for c in info["cite"]
        ],
        "",
    ]
    text = "\n".join(lines)
    if info.get("extra"):
        text += "\n" + str(info["extra"]).strip() + "\n"
    path.write_text(text, encoding="utf-8")
    return path
