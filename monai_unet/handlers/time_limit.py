"""Stop training at a wall-clock budget, as nnU-Net's benchmarks and this project's recipes are compared; optionally
decay the learning rate over that budget (the poly schedule in time rather than in iterations)."""

from __future__ import annotations

import time

import torch
from ignite.engine import Engine, Events

__all__ = ["TimeLimit"]


class TimeLimit:
    """Terminate the trainer after the iteration that ends past ``limit_s`` seconds of training.

    Ignite then fires ``COMPLETED``, so the final checkpoint (``model_final.pt``) is written as after a full run.
    The clock starts when the run starts (a resumed run gets the budget again; pass what is left).

    With ``optimizer``, the learning rate follows nnU-Net's poly schedule over the *wall clock*: before each
    iteration every parameter group's rate is ``initial * (1 - elapsed / limit_s) ** lr_power``. A schedule sized
    in iterations ends too early on a fast machine and is cut short on a slow or shared one; this one always
    reaches its end at the budget. Leave the iteration scheduler out when this is used (the 3D bundle disables
    its ``LrScheduleHandler`` when ``time_limit_s`` is set).

    Args:
        limit_s: the budget in seconds; ``None`` or a value <= 0: no limit (and no schedule).
        optimizer: the optimizer whose learning rate decays over the budget; ``None``: the rate is left alone.
        lr_power: the exponent of the poly schedule (nnU-Net: 0.9).
        min_fraction: the schedule's floor as a fraction of the initial rate (the last iterations still learn).
    """

    def __init__(
        self,
        limit_s: float | None,
        optimizer: torch.optim.Optimizer | None = None,
        lr_power: float = 0.9,
        min_fraction: float = 0.0,
    ) -> None:
        self.limit_s = limit_s
        self.optimizer = optimizer
        self.lr_power = float(lr_power)
        self.min_fraction = float(min_fraction)
        self.started: float | None = None
        self.stopped_at: int | None = None
        self._initial: list[float] = []

    def attach(self, engine: Engine) -> None:
        if self.limit_s is None or self.limit_s <= 0:
            return
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        if self.optimizer is not None:
            engine.add_event_handler(Events.ITERATION_STARTED, self._schedule)

    def _start(self, engine: Engine) -> None:
        self.started = time.perf_counter()
        if self.optimizer is not None:
            self._initial = [float(g.get("initial_lr", g["lr"])) for g in self.optimizer.param_groups]

    def fraction_left(self) -> float:
        """The share of the budget not yet spent, in [0, 1] (1 before the run starts)."""
        if self.started is None or not self.limit_s:
            return 1.0
        return min(1.0, max(0.0, 1.0 - (time.perf_counter() - self.started) / float(self.limit_s)))

    def _schedule(self, engine: Engine) -> None:
        factor = max(self.min_fraction, self.fraction_left() ** self.lr_power)
        for group, lr in zip(self.optimizer.param_groups, self._initial):
            group["lr"] = lr * factor

    def __call__(self, engine: Engine) -> None:
        if self.started is not None and time.perf_counter() - self.started > float(self.limit_s):
            self.stopped_at = engine.state.iteration
            engine.logger.info(
                "time limit of %.0f s reached after %d iterations: training stops", self.limit_s, self.stopped_at
            )
            engine.terminate()
