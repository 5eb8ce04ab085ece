"""The number format the network computes in during inference: fp32, or bf16/fp16 under ``torch.autocast``.

Mixed precision halves the bytes each activation moves and, where the hardware computes the narrow type natively
(CPUs with AVX512-BF16 or AMX, every recent GPU), the time of each multiply-add. The stitched output and the
probabilities stay float32 whatever the network computes in; only the convolutions round to the narrow type.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator
from pathlib import Path

import torch

__all__ = ["PRECISIONS", "autocast_for", "cpu_computes_bf16", "resolve_precision"]

PRECISIONS = ("fp32", "bf16", "fp16", "auto")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_LOG = logging.getLogger(__name__)


@functools.cache
def cpu_computes_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (the ``avx512_bf16`` or ``amx_bf16`` flag of Linux's
    ``/proc/cpuinfo``); ``False`` where that cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return bool({"avx512_bf16", "amx_bf16"} & flags)


def resolve_precision(precision: str, device: torch.device | str) -> tuple[str, str]:
    """``(precision, why)`` with ``"auto"`` resolved for ``device``: bf16 on a CPU that computes it natively (else
    fp32); on CUDA bf16 where the GPU supports it, else fp16; fp32 on anything else.

    Raises:
        ValueError: an unknown ``precision``.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}.")
    device = torch.device(device)
    if precision != "auto":
        return precision, "as asked"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", "auto: the GPU computes bfloat16"
        return "fp16", "auto: the GPU computes float16 (no bfloat16)"
    if device.type == "cpu":
        if cpu_computes_bf16():
            return "bf16", "auto: the CPU computes bfloat16 natively (AVX512-BF16 or AMX)"
        return "fp32", "auto: the CPU has no native bfloat16 (no AVX512-BF16 or AMX)"
    return "fp32", f"auto: no mixed precision on {device.type}"


@contextlib.contextmanager
def autocast_for(precision: str, device: torch.device | str) -> Iterator[str]:
    """Run the block under ``torch.autocast`` in ``precision`` (resolved for ``device``); yields the precision."""
    device = torch.device(device)
    resolved, why = resolve_precision(precision, device)
    if precision == "auto":
        _LOG.info("precision %s on %s (%s)", resolved, device, why)
    if resolved == "fp32":
        yield resolved
        return
    with torch.autocast(device_type=device.type, dtype=_DTYPES[resolved]):
        yield resolved
