"""Size arithmetic of the U-Net: the one place that knows which input sizes are valid.

Every function here works on one spatial axis and is TorchScript-compatible, so the network can
check its input inside ``forward`` with the same rules the inferer, the transforms and the bundles use.

For ``padding="valid"`` each level applies two unpadded 3-wide convolutions (``-4``), the contracting path
halves the size ``depth`` times (the size before pooling must be even) and the expanding path doubles it
(``2 s - 4``). For ``padding="same"`` only the pooling constrains the size: it must be divisible by
``2 ** depth``. Valid sizes form an arithmetic progression with step ``2 ** depth`` and the difference between
input and output is constant, so ``halo = (input - output) / 2`` is a property of the network alone
(92 pixels for the paper's depth 4).
"""

from __future__ import annotations


def output_size_1d(size: int, depth: int, padding: str = "valid") -> int:
    """Output length of one spatial axis, or ``-1`` when ``size`` is not a valid input length.

    Args:
        size: input length along the axis.
        depth: number of 2x pooling steps (``len(features) - 1``).
        padding: ``"valid"`` (the paper's unpadded convolutions) or ``"same"``.
    """
    if size <= 0:
        return -1
    s = size
    if padding == "same":
        for _ in range(depth):
            if s % 2 != 0:
                return -1
            s = s // 2
        return size
    for _ in range(depth):
        s = s - 4
        if s <= 0 or s % 2 != 0:
            return -1
        s = s // 2
    s = s - 4
    if s <= 0:
        return -1
    for _ in range(depth):
        s = 2 * s - 4
        if s <= 0:
            return -1
    return s


def smallest_valid_size_1d(depth: int, padding: str = "valid") -> int:
    """The smallest valid input length for the given depth and padding (188 for the paper's valid depth 4)."""
    if padding == "same":
        return 1 << depth
    s = 1
    while output_size_1d(s, depth, padding) < 0:
        s += 1
    return s


def halo_1d(depth: int, padding: str = "valid") -> int:
    """Pixels lost per side along one axis: ``(input - output) / 2`` (92 for depth 4, 0 for ``"same"``)."""
    s = smallest_valid_size_1d(depth, padding)
    return (s - output_size_1d(s, depth, padding)) // 2


def input_size_1d(output_size: int, depth: int, padding: str = "valid") -> int:
    """Smallest valid input length whose output length is at least ``output_size``."""
    step = 1 << depth
    s0 = smallest_valid_size_1d(depth, padding)
    o0 = output_size_1d(s0, depth, padding)
    if output_size <= o0:
        return s0
    k = (output_size - o0 + step - 1) // step
    return s0 + k * step


def nearest_valid_sizes_1d(size: int, depth: int, padding: str = "valid") -> tuple[int, int]:
    """The nearest valid input lengths ``(below, above)`` around ``size``; ``below`` is ``-1`` if there is none.

    When ``size`` is itself valid both are ``size``.
    """
    step = 1 << depth
    s0 = smallest_valid_size_1d(depth, padding)
    if size < s0:
        return -1, s0
    k = (size - s0) // step
    below = s0 + k * step
    above = below if below == size else below + step
    return below, above


def invalid_size_message(size: int, axis: int, depth: int, padding: str = "valid", name: str = "size") -> str:
    """Why ``size`` is not a valid input length along spatial ``axis``, naming the nearest valid lengths.

    The one wording of this error for the network, the inferer and anything else that checks sizes, e.g.
    ``"size 570 along spatial axis 0 is not a valid input size of a U-Net with padding='valid' and depth 4: the
    nearest valid sizes are 556 (below) and 572 (above); valid sizes are 188 + 16k"``; callers append what to do.
    ``name``: what the size is (``"size"``, ``"tile_size"``). String concatenation keeps it TorchScript-compatible.
    """
    below, above = nearest_valid_sizes_1d(size, depth, padding)
    near = "the nearest valid size is " + str(above)
    if below > 0:
        near = "the nearest valid sizes are " + str(below) + " (below) and " + str(above) + " (above)"
    return (
        name
        + " "
        + str(size)
        + " along spatial axis "
        + str(axis)
        + " is not a valid input size of a U-Net with padding='"
        + padding
        + "' and depth "
        + str(depth)
        + ": "
        + near
        + "; valid sizes are "
        + str(smallest_valid_size_1d(depth, padding))
        + " + "
        + str(1 << depth)
        + "k"
    )


def valid_sizes_1d(max_size: int, depth: int, padding: str = "valid", min_size: int = 1) -> list[int]:
    """All valid input lengths of one axis in ``[min_size, max_size]``, ascending (step ``2 ** depth``)."""
    first = smallest_valid_size_1d(depth, padding)
    step = 1 << depth
    start = first if min_size <= first else first + -(-(min_size - first) // step) * step
    return list(range(start, max_size + 1, step))
