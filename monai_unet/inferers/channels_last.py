"""Channels-last convolution weights for the duration of a call: oneDNN's faster layout on the CPU.

The weights of a network are converted in place for the call and the original tensors put back after (also on
an error); concurrent calls on one network (threads of a server) share one conversion under a lock.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

__all__ = ["channels_last_weights"]

# networks whose weights are in channels-last format now: id -> [calls inside, original tensors]
_CONVERTED: dict[int, list] = {}
_CONVERTED_LOCK = threading.Lock()


@contextlib.contextmanager
def channels_last_weights(network: Any, enabled: bool = True) -> Iterator[None]:
    """Convolution weights in channels-last memory format during the call, the original tensors put back after.

    On a CPU, oneDNN convolutions run about 1.3-1.4x faster on channels-last weights and activations (torch
    2.14, the benchmark networks, ``scripts/profile_tiles.py --channels-last``); the results agree to float
    rounding. Concurrent calls on one network (threads of a server) share the conversion: the first converts,
    the last puts the originals back.
    """
    if not enabled or not isinstance(network, nn.Module):
        yield
        return
    key = id(network)
    with _CONVERTED_LOCK:
        entry = _CONVERTED.get(key)
        if entry is None:
            params = [p for p in network.parameters() if p.dim() in (4, 5)]
            entry = _CONVERTED[key] = [0, [(p, p.data) for p in params]]
            with torch.inference_mode(False), torch.no_grad():
                for p in params:
                    fmt = torch.channels_last if p.dim() == 4 else torch.channels_last_3d
                    p.data = p.data.contiguous(memory_format=fmt)
        entry[0] += 1
    try:
        yield
    finally:
        with _CONVERTED_LOCK:
            entry[0] -= 1
            if entry[0] == 0:
                for p, original in entry[1]:
                    p.data = original
                del _CONVERTED[key]
