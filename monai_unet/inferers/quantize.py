"""INT8 overlap-tile inference: the U-Net quantised after training (static, through ONNX Runtime), run per tile.

The network is exported to ONNX with dynamic sizes (:func:`~monai_unet.export.files.save_onnx`), its convolution
weights quantised to int8 per output channel and its activations to uint8 with scales calibrated on tiles of the
bundle's own (training) images (``onnxruntime.quantization.quantize_static``, QDQ format, MinMax calibration). The
scales are fixed, so a pixel's value depends only on the input around it, as in float: tiled inference still equals
one pass over the whole image, to float rounding.

:class:`OnnxTileNetwork` is the quantised model as a network :class:`~monai_unet.inferers.OverlapTileInferer` takes:
it carries the U-Net's size attributes, so the inferer knows its valid tiles and halo. :class:`TileRecorder` stands
in for the network during a calibration run and keeps the tiles the inferer cuts. Whether int8 may be used for a
model is the same precision check as for bf16 (:func:`~monai_unet.inferers.precision.precision_verdict`). Int8
convolutions pay on CPUs with VNNI or AMX-INT8; on older AVX2-only CPUs uint8 x int8 products may saturate.

Needs ``pip install "monai-unet[int8]"`` (onnxruntime, onnx).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["EXTRA_HINT", "OnnxTileNetwork", "TileRecorder", "quantize_network"]

EXTRA_HINT = 'INT8 inference needs onnxruntime and onnx: pip install "monai-unet[int8]"'
# what overlap-tile inference reads from a network to know its size rules (monai_unet.inferers.tiling.size_rules_of)
_SIZE_ATTRIBUTES = (
    "spatial_dims",
    "in_channels",
    "out_channels",
    "features",
    "padding",
    "n_pool",
    "kernel_size",
    "strides",
)
_METHODS = ("minmax", "entropy", "percentile")


def _onnxruntime() -> Any:
    try:
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError as e:
        raise ImportError(EXTRA_HINT) from e
    return onnxruntime


def _copy_size_attributes(target: Any, network: nn.Module) -> None:
    for name in _SIZE_ATTRIBUTES:
        if hasattr(network, name):
            setattr(target, name, getattr(network, name))


class TileRecorder:
    """A stand-in for ``network`` that keeps tiles it is given and returns zeros of the output's shape.

    Run an inferer with it over the calibration images to collect the tiles the real network would see.

    Args:
        network: the U-Net (a monai-unet ``UNet``: its size attributes and ``output_size`` are used).
        limit: keep at most this many tiles, a uniform sample of all tiles seen (reservoir sampling, so memory
            stays bounded however many images are run); ``None``: all.
        seed: of the sampling.

    Call: ``(N, C, *T) -> (N, out_channels, *network.output_size(T))`` zeros; ``tiles`` holds ``(C, *T)`` float32
    CPU tensors; ``seen`` counts the tiles given.
    """

    def __init__(self, network: nn.Module, limit: int | None = None, seed: int = 0) -> None:
        if not hasattr(network, "output_size"):
            raise ValueError(f"TileRecorder needs a monai-unet UNet (with output_size), got {type(network).__name__}.")
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be >= 1 (or None for all tiles), got {limit}.")
        _copy_size_attributes(self, network)
        self._output_size = network.output_size
        self.limit = limit
        self.tiles: list[torch.Tensor] = []
        self.seen = 0
        self._rng = np.random.default_rng(seed)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for tile in x:
            self.seen += 1
            if self.limit is None or len(self.tiles) < self.limit:
                self.tiles.append(tile.detach().to("cpu", torch.float32).clone())
            else:
                k = int(self._rng.integers(self.seen))
                if k < self.limit:
                    self.tiles[k] = tile.detach().to("cpu", torch.float32).clone()
        out = tuple(self._output_size(tuple(int(s) for s in x.shape[2:])))
        return torch.zeros((x.shape[0], int(self.out_channels), *out), dtype=torch.float32, device=x.device)


class _TileReader:
    """ONNX Runtime's ``CalibrationDataReader`` protocol over ``(C, *T)`` tiles, one tile per batch."""

    def __init__(self, tiles: Sequence[torch.Tensor], input_name: str) -> None:
        self._tiles = iter(tiles)
        self._name = input_name

    def get_next(self) -> dict[str, np.ndarray] | None:
        tile = next(self._tiles, None)
        if tile is None:
            return None
        return {self._name: np.ascontiguousarray(tile.detach().cpu().numpy()[None], dtype=np.float32)}


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """ONNX Runtime's quantisation tools warn through the root logger (pre-processing advice, bias layout)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_network(
    network: nn.Module,
    tiles: Sequence[torch.Tensor],
    path: str | os.PathLike,
    *,
    per_channel: bool = True,
    method: str = "minmax",
) -> Path:
    """Quantise ``network`` to an int8 ONNX model at ``path``, calibrated on ``tiles``.

    Args:
        network: the trained U-Net (any device; a float32 copy on the CPU is exported, in ``eval`` mode).
        tiles: calibration tiles ``(C, *T)``, each of a size the network accepts (e.g. from :class:`TileRecorder`);
            the activation ranges are the extremes seen on them.
        path: where the quantised model goes (``.onnx``).
        per_channel: one weight scale per output channel (else one per tensor).
        method: calibration, ``"minmax"`` (default), ``"entropy"`` or ``"percentile"`` (ONNX Runtime's methods).

    Returns:
        ``path``.

    Raises:
        ImportError: onnxruntime or onnx missing (names the extra to install).
        ValueError: no tiles, or an unknown ``method``.
        RuntimeError: ``torch.onnx`` could not export the network.
    """
    _onnxruntime()
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from monai_unet.export.files import save_onnx

    if not tiles:
        raise ValueError("quantize_network needs calibration tiles: give at least one (C, *T) tile.")
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}.")
    calibrate = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[method]
    net = copy.deepcopy(network).to("cpu", torch.float32).eval()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="monai_unet_int8_") as tmp:
        exported, prepared = Path(tmp) / "fp32.onnx", Path(tmp) / "prepared.onnx"
        why = save_onnx(net, tiles[0][None].to(torch.float32), exported)
        if why is not None:
            raise RuntimeError(f"torch.onnx could not export the network for int8 quantisation: {why}")
        with _quiet_root_logger():
            # constant folding (shared bias initialisers) and shape inference; the symbolic shapes of the valid
            # network's crops cannot be inferred, and are not needed
            quant_pre_process(str(exported), str(prepared), skip_symbolic_shape=True)
            quantize_static(
                str(prepared),
                str(path),
                _TileReader(tiles, "input"),
                quant_format=QuantFormat.QDQ,
                per_channel=per_channel,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=calibrate,
            )
    return path


class OnnxTileNetwork:
    """An ONNX model (e.g. from :func:`quantize_network`) as a network for overlap-tile inference on the CPU.

    Args:
        path: the ``.onnx`` file, input ``"input"`` ``(N, C, *T)``, output ``(N, C_out, *T_out)``.
        like: the U-Net it was made from: its size attributes (``n_pool``, ``padding``, ``spatial_dims``, ...) are
            copied, so :class:`~monai_unet.inferers.OverlapTileInferer` knows the valid tiles and the halo.
        threads: ONNX Runtime's intra-op threads (default: ``torch.get_num_threads()``, as the float runs).

    Call: ``(N, C, *T)`` tensor (any device) ``-> (N, C_out, *T_out)`` float32 on the input's device.

    Raises:
        ImportError: onnxruntime missing (names the extra to install).
    """

    def __init__(self, path: str | os.PathLike, like: nn.Module | None = None, threads: int | None = None) -> None:
        ort = _onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        self.path = Path(path)
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        if like is not None:
            _copy_size_attributes(self, like)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        y = self.session.run(None, {self.input_name: arr})[0]
        return torch.from_numpy(np.asarray(y, dtype=np.float32)).to(x.device)
