"""Memory budgets and step costs of a planned network: the default budget of a device, an estimate of one training
step's memory (forward with the autograd graph, then backward), and a measurement of real training steps.

The inference estimate (no autograd graph) is :func:`monai_unet.inferers.tiling.estimate_activation_bytes`; this
module adds what training keeps alive: every convolution's output (the normalisation's backward needs it) and
every activation's output (ReLU's backward and the next convolution's need it), the pooling indices, the
concatenated skip tensors, and the gradients in flight during backward.
"""

from __future__ import annotations

import math
import os
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from monai_unet.inferers.tiling import SizeRules, unet_size_rules

__all__ = [
    "StepMeasurement",
    "default_memory_mb",
    "describe",
    "estimate_training_bytes",
    "measure_training_steps",
    "physical_memory_bytes",
    "size_rules_for",
]

CPU_MEMORY_FRACTION = 0.25  # of physical memory, for one training step on the CPU
MIB = 2**20
WORKSPACE_BYTES = 64 * MIB  # convolution workspace and allocator pools that do not scale with the tile


def physical_memory_bytes() -> int | None:
    """The machine's physical memory, or ``None`` where it cannot be read."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def default_memory_mb(device: torch.device | str) -> int:
    """The default memory budget (MiB) of one training step on ``device``: on CUDA the GPU's total memory less a
    tenth for the CUDA context and the allocator; on the CPU a quarter of the physical memory (the data loader
    workers, the cached dataset and the system keep the rest), 2048 where it cannot be read."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory * 0.9 // MIB)
    total = physical_memory_bytes()
    return 2048 if total is None else int(total * CPU_MEMORY_FRACTION // MIB)


def size_rules_for(
    kernel_size: Sequence[Sequence[int]],
    strides: Sequence[Sequence[int]],
    features: Sequence[int],
    in_channels: int,
    out_channels: int,
    padding: str = "valid",
) -> SizeRules:
    """The :class:`~monai_unet.inferers.tiling.SizeRules` of a UNet with these settings, without building it."""
    return unet_size_rules(kernel_size, strides, features, in_channels, out_channels, padding)


def _parameters(rules: SizeRules) -> int:
    assert rules.axes is not None and rules.features is not None
    feats = rules.features
    kernels = [math.prod(r.kernels[level] for r in rules.axes) for level in range(len(feats))]
    strides = [math.prod(r.strides[level] for r in rules.axes) for level in range(len(feats))]
    total, c = 0, rules.in_channels or 1
    for level, f in enumerate(feats):
        total += kernels[level] * (c * f + f * f)
        c = f
    for level in range(len(feats) - 1):
        f = feats[level]
        total += strides[level + 1] * feats[level + 1] * f + kernels[level] * (2 * f * f + f * f)
    return total + feats[0] * (rules.out_channels or 1)


def estimate_training_bytes(
    rules: SizeRules, tile: Sequence[int], batch: int, norm: bool = True, dtype_bytes: int = 4
) -> int:
    """Peak memory of one training step (forward keeping the autograd graph, loss, backward, SGD with momentum) of
    a monai-unet UNet on ``batch`` tiles of ``tile``.

    Counts what autograd keeps per sample: the input; per convolution its output (kept by the normalisation) when
    ``norm`` and the activation's output; per pooling its output and int64 indices; the concatenation of each
    decoder level (kept by its first convolution); the dropout mask; a few copies of the logits for the loss. The
    backward adds the gradients of the largest layer's input and output. Weights, their gradients and the momentum
    buffers come on top; 25% margin for the allocator, as in the inference estimate, and a fixed workspace. Against
    the peak resident memory of real steps on a CPU (2D and 3D, with and without instance normalisation, 0.3 to
    2 GiB) it was within -25% to +20%.
    """
    if rules.features is None or rules.axes is None:
        raise ValueError("the training memory estimate needs a monai-unet UNet's size rules (features and axes).")
    feats, valid = rules.features, rules.padding == "valid"
    cin, cout = rules.in_channels or 1, rules.out_channels or 1
    axes = rules.axes[: len(tile)]
    per_conv = 2 if norm else 1

    def vol(c: int, s: Sequence[int]) -> int:
        return c * math.prod(s)

    def convs(s: Sequence[int], level: int) -> tuple[list[int], list[int]]:
        red = [r.kernels[level] - 1 if valid else 0 for r in axes]
        a = [v - d for v, d in zip(s, red)]
        return a, [v - d for v, d in zip(a, red)]

    stored, largest = vol(cin, tile), 0
    sizes, c = list(tile), cin
    b: list[int] = sizes
    for level, f in enumerate(feats):
        if level > 0:
            sizes = [v // r.strides[level] for v, r in zip(b, axes)]
            stored += 3 * vol(c, sizes)  # pooled map (next convolution's input) + int64 indices
        a, b = convs(sizes, level)
        stored += per_conv * (vol(f, a) + vol(f, b))
        largest = max(largest, vol(c, sizes) + vol(f, a))
        c = f
    stored += vol(c, b) + vol(c, b) // 4  # dropout output and mask
    sizes = b
    for level in reversed(range(len(feats) - 1)):
        f = feats[level]
        up = [v * r.strides[level + 1] for v, r in zip(sizes, axes)]
        a, b = convs(up, level)
        stored += vol(2 * f, up) + per_conv * (vol(f, a) + vol(f, b))
        largest = max(largest, vol(2 * f, up) + vol(f, a))
        sizes, c = b, f
    stored += 4 * vol(cout, sizes)  # logits, softmax, one-hot target, loss terms
    weights = 3 * _parameters(rules)  # weights, gradients, momentum
    return int(1.25 * dtype_bytes * (batch * (stored + 2 * largest) + weights)) + WORKSPACE_BYTES


@dataclass(frozen=True)
class StepMeasurement:
    """Training steps timed on random data.

    Attributes:
        seconds: the time of each timed step (forward, loss, backward, optimiser step), after one warm-up step.
        peak_mb: the peak memory of the steps: on CUDA the peak allocated by PyTorch; on the CPU the rise of the
            process' peak resident memory over its resident memory before the steps (0 when the process had been
            larger before, so a lower bound).
        device: where they ran; ``threads``: PyTorch's CPU threads.
    """

    seconds: tuple[float, ...]
    peak_mb: float
    device: str
    threads: int

    @property
    def step_seconds(self) -> float:
        """The median timed step (the warm-up step when no other ran)."""
        s = sorted(self.seconds)
        return s[len(s) // 2]


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _peak_rss_bytes() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # kilobytes on Linux


def measure_training_steps(
    network: torch.nn.Module,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    tile: Sequence[int],
    batch: int,
    in_channels: int,
    out_channels: int,
    output_size: Sequence[int],
    device: torch.device | str = "cpu",
    steps: int = 2,
    time_limit: float = 8.0,
) -> StepMeasurement:
    """Time ``steps`` training steps (after one warm-up) of ``network`` on random data and read their peak memory.

    The optimiser is SGD with momentum (the bundles' optimiser). Fewer steps are timed when the warm-up shows that
    ``steps`` would take longer than ``time_limit`` seconds (at least one always runs).

    Args:
        network: the planned UNet (moved to ``device`` and set to training mode here).
        loss: ``loss(logits (B, out_channels, *output_size), label (B, 1, *output_size))``.
        tile: the input tile; ``output_size``: the network's output for it.
        batch, in_channels, out_channels: the batch ``(batch, in_channels, *tile)``.
        device: where to run.
        steps: timed steps after the warm-up.
        time_limit: seconds the timed steps may take together.
    """
    device = torch.device(device)
    network = network.to(device).train()
    optimizer = torch.optim.SGD(network.parameters(), lr=1e-4, momentum=0.99)
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(batch, in_channels, *tile, generator=generator).to(device)
    y = torch.randint(0, out_channels, (batch, 1, *output_size), generator=generator).float().to(device)

    def step() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        value = loss(network(x), y)
        value.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        before = _rss_bytes()
    times = [step()]
    budget_steps = max(1, min(steps, int(time_limit // max(times[0], 1e-6))))
    timed = [step() for _ in range(budget_steps)] if steps > 0 else []
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - before
    else:
        peak = max(0, _peak_rss_bytes() - before)
    optimizer.zero_grad(set_to_none=True)
    return StepMeasurement(
        seconds=tuple(round(t, 3) for t in (timed or times)),
        peak_mb=round(peak / MIB, 1),
        device=str(device),
        threads=torch.get_num_threads(),
    )


def describe(measurement: StepMeasurement | None, estimate_mb: float) -> dict[str, Any]:
    """The measurement as plain JSON values for a plan's ``plan_info``."""
    if measurement is None:
        return {"estimated_mb": round(estimate_mb)}
    return {
        "step_seconds": measurement.step_seconds,
        "seconds": list(measurement.seconds),
        "peak_mb": measurement.peak_mb,
        "estimated_mb": round(estimate_mb),
        "device": measurement.device,
        "threads": measurement.threads,
    }
