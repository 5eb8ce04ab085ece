"""Size arithmetic of the U-Net: the one place that knows which input sizes are valid.

The rules hold per spatial axis. Along one axis the network is described by the kernel size of each level's two
convolutions and the down-sampling factor (stride) before each level (``strides[0] = 1``), as MONAI's ``DynUNet``
names them; :class:`AxisRule` holds one axis' description and answers every size question about it.

For ``padding="valid"`` each level applies two unpadded ``k``-wide convolutions (``-2 (k - 1)``), the contracting
path divides the size by the stride before each lower level (the size must be divisible by it) and the expanding
path multiplies it back (``s * stride - 2 (k - 1)``). For ``padding="same"`` only the pooling constrains the size:
it must be divisible by the product of the strides. Valid sizes form an arithmetic progression whose step is the
product of the strides, and the difference between input and output is constant, so
``halo = (input - output) / 2`` is a property of the network alone (92 pixels for the paper's depth 4, 3-wide
kernels and 2x pooling). A 1-wide kernel along an axis loses nothing along it.

The ``*_1d(size, depth, padding)`` functions are the paper's network (3-wide kernels, 2x pooling) of a given depth.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = [
    "AxisRule",
    "halo_1d",
    "input_size_1d",
    "invalid_size_message",
    "nearest_valid_sizes_1d",
    "output_size_1d",
    "smallest_valid_size_1d",
    "valid_sizes_1d",
]

_PADDINGS = ("valid", "same")


def _output(size: int, kernels: Sequence[int], strides: Sequence[int], padding: str) -> int:
    if size <= 0:
        return -1
    valid = padding == "valid"
    s = size
    for level, (k, st) in enumerate(zip(kernels, strides)):
        if level > 0:
            if s % st != 0:
                return -1
            s //= st
        if valid:
            s -= 2 * (k - 1)
            if s <= 0:
                return -1
    for level in range(len(kernels) - 2, -1, -1):
        s *= strides[level + 1]
        if valid:
            s -= 2 * (kernels[level] - 1)
            if s <= 0:
                return -1
    return s


@dataclass(frozen=True)
class AxisRule:
    """The size rules of a U-Net along one spatial axis.

    Args:
        kernels: the convolution kernel size of each level along this axis (odd, >= 1), top level first.
        strides: the down-sampling factor before each level along this axis (``strides[0] == 1``).
        padding: ``"valid"`` or ``"same"``.

    Attributes:
        first: the smallest valid input size; ``step``: the distance between valid sizes (the product of the
        strides); ``halo``: pixels lost per side (0 for ``"same"``).
    """

    kernels: tuple[int, ...]
    strides: tuple[int, ...]
    padding: str = "valid"
    first: int = field(init=False)
    step: int = field(init=False)
    halo: int = field(init=False)

    def __post_init__(self) -> None:
        kernels = tuple(int(k) for k in self.kernels)
        strides = tuple(int(s) for s in self.strides)
        if len(kernels) != len(strides) or not kernels:
            raise ValueError(f"kernels {kernels} and strides {strides} need one entry per level each.")
        if self.padding not in _PADDINGS:
            raise ValueError(f"padding must be one of {_PADDINGS}, got {self.padding!r}.")
        if strides[0] != 1 or min(strides) < 1 or min(kernels) < 1 or any(k % 2 == 0 for k in kernels):
            raise ValueError(
                f"strides {strides} must start with 1 and be >= 1, kernels {kernels} must be odd and >= 1."
            )
        object.__setattr__(self, "kernels", kernels)
        object.__setattr__(self, "strides", strides)
        step = 1
        for st in strides:
            step *= st
        first = 1
        while _output(first, kernels, strides, self.padding) <= 0:
            first += 1
        object.__setattr__(self, "step", step)
        object.__setattr__(self, "first", first)
        object.__setattr__(self, "halo", (first - _output(first, kernels, strides, self.padding)) // 2)

    @classmethod
    def paper(cls, depth: int, padding: str = "valid") -> AxisRule:
        """The paper's axis: 3-wide kernels at every level, 2x pooling ``depth`` times."""
        return cls((3,) * (depth + 1), (1,) + (2,) * depth, padding)

    @property
    def depth(self) -> int:
        return len(self.kernels) - 1

    @property
    def is_flat(self) -> bool:
        """Whether the network never looks across this axis (1-wide kernels, no pooling at every level)."""
        return max(self.kernels) == 1 and self.step == 1

    def step_to(self, level: int) -> int:
        """The total stride of ``level`` (the product of the strides down to it)."""
        return math.prod(self.strides[: level + 1])

    def decoder_margin(self, level: int) -> float:
        """Voxels, at ``level``'s own spacing, by which decoder level ``level``'s output reaches beyond the top
        output's region on each side: the same for every valid input size.

        A decoder output of ``O_L`` voxels gives ``O_{L-1} = s_L O_L - c_{L-1}`` one level up (``c`` what level
        ``L - 1``'s two convolutions lose: ``2 (k - 1)`` unpadded, 0 padded), so the margin is
        ``sum_{j<L} c_j S_j / (2 S_L)`` (``S`` the total strides). Only a whole number lines the level's voxels up
        with the top output's, ``S_L`` of them to one (deep supervision needs that).
        """
        total, lost = 1, 0
        for j in range(level):
            if self.padding == "valid":
                lost += 2 * (self.kernels[j] - 1) * total
            total *= self.strides[j + 1]
        return lost / (2 * total)

    def output(self, size: int) -> int:
        """Output length for an input of ``size``, or ``-1`` when ``size`` is not a valid input length."""
        return _output(size, self.kernels, self.strides, self.padding)

    def is_valid(self, size: int) -> bool:
        return size >= self.first and (size - self.first) % self.step == 0

    def input_for(self, output_size: int) -> int:
        """The smallest valid input length whose output is at least ``output_size``."""
        k = max(0, -(-(output_size - (self.first - 2 * self.halo)) // self.step))
        return self.first + k * self.step

    def nearest(self, size: int) -> tuple[int, int]:
        """The nearest valid lengths ``(below, above)`` around ``size`` (``below`` is -1 when there is none; both
        are ``size`` when it is valid)."""
        if size < self.first:
            return -1, self.first
        below = self.first + (size - self.first) // self.step * self.step
        return below, below if below == size else below + self.step

    def valid(self, max_size: int, min_size: int = 1) -> list[int]:
        """All valid lengths in ``[min_size, max_size]``, ascending."""
        start = (
            self.first if min_size <= self.first else self.first + -(-(min_size - self.first) // self.step) * self.step
        )
        return list(range(start, max_size + 1, self.step))


def output_size_1d(size: int, depth: int, padding: str = "valid") -> int:
    """Output length of one axis of the paper's network of ``depth`` poolings, ``-1`` for an invalid ``size``."""
    return AxisRule.paper(depth, padding).output(size)


def smallest_valid_size_1d(depth: int, padding: str = "valid") -> int:
    """The smallest valid input length (188 for the paper's valid depth 4)."""
    return AxisRule.paper(depth, padding).first


def halo_1d(depth: int, padding: str = "valid") -> int:
    """Pixels lost per side along one axis: ``(input - output) / 2`` (92 for depth 4, 0 for ``"same"``)."""
    return AxisRule.paper(depth, padding).halo


def input_size_1d(output_size: int, depth: int, padding: str = "valid") -> int:
    """Smallest valid input length whose output length is at least ``output_size``."""
    return AxisRule.paper(depth, padding).input_for(output_size)


def nearest_valid_sizes_1d(size: int, depth: int, padding: str = "valid") -> tuple[int, int]:
    """The nearest valid input lengths ``(below, above)`` around ``size``; ``below`` is ``-1`` if there is none."""
    return AxisRule.paper(depth, padding).nearest(size)


def valid_sizes_1d(max_size: int, depth: int, padding: str = "valid", min_size: int = 1) -> list[int]:
    """All valid input lengths of one axis in ``[min_size, max_size]``, ascending (step ``2 ** depth``)."""
    return AxisRule.paper(depth, padding).valid(max_size, min_size)


def invalid_size_message(
    size: int, axis: int, first: int, step: int, padding: str = "valid", name: str = "size"
) -> str:
    """Why ``size`` is not a valid input length along spatial ``axis``, naming the nearest valid lengths.

    The one wording of this error for the network, the inferer and anything else that checks sizes, e.g.
    ``"size 570 along spatial axis 0 is not a valid input size of a U-Net with padding='valid': the nearest valid
    sizes are 556 (below) and 572 (above); valid sizes are 188 + 16k"``; callers append what to do.
    ``first``/``step``: the axis' smallest valid size and step (:class:`AxisRule`); ``name``: what the size is
    (``"size"``, ``"tile_size"``). String concatenation and ints only keep it TorchScript-compatible.
    """
    near = "the nearest valid size is " + str(first)
    if size >= first:
        below = first + (size - first) // step * step
        near = "the nearest valid sizes are " + str(below) + " (below) and " + str(below + step) + " (above)"
    return (
        name
        + " "
        + str(size)
        + " along spatial axis "
        + str(axis)
        + " is not a valid input size of a U-Net with padding='"
        + padding
        + "': "
        + near
        + "; valid sizes are "
        + str(first)
        + " + "
        + str(step)
        + "k"
    )
