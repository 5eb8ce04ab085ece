"""Gradient-norm clipping inside MONAI's ``SupervisedTrainer``, without forking its iteration.

The trainer fires ``IterationEvents.BACKWARD_COMPLETED`` between ``loss.backward()`` and ``optimizer.step()``;
clipping there bounds each step. The paper's SGD with momentum 0.99 on an unnormalised network occasionally
takes a huge step on a hard tile (the loss jumps by orders of magnitude and ReLUs die); a norm bound keeps the
recipe and removes those blow-ups.
"""

from __future__ import annotations

import torch
from ignite.engine import Engine
from monai.engines.utils import IterationEvents

__all__ = ["GradientClipping"]


class GradientClipping:
    """Clip the global gradient norm of the trainer's network before each optimizer step.

    Args:
        max_norm: largest allowed L2 norm of all gradients together (``torch.nn.utils.clip_grad_norm_``).
        norm_type: the norm's order.

    With AMP the gradients are unscaled first, so ``max_norm`` means the same with and without it.
    """

    def __init__(self, max_norm: float = 1.0, norm_type: float = 2.0) -> None:
        if max_norm <= 0:
            raise ValueError(f"max_norm must be positive, got {max_norm}.")
        self.max_norm = max_norm
        self.norm_type = norm_type

    def attach(self, engine: Engine) -> None:
        """Run after every backward pass of ``engine`` (a MONAI ``SupervisedTrainer``)."""
        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        """Clip the gradients of ``engine.network``; the norm before clipping goes to ``engine.state.grad_norm``."""
        scaler = getattr(engine, "scaler", None)
        if getattr(engine, "amp", False) and scaler is not None:
            scaler.unscale_(engine.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(engine.network.parameters(), self.max_norm, self.norm_type)
        engine.state.grad_norm = float(norm)
