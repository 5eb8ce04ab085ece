"""Stop training at a wall-clock budget, as nnU-Net's benchmarks and this project's recipes are compared."""

from __future__ import annotations

import time

from ignite.engine import Engine, Events

__all__ = ["TimeLimit"]


class TimeLimit:
    """Terminate the trainer after the iteration that ends past ``limit_s`` seconds of training.

    Ignite then fires ``COMPLETED``, so the final checkpoint (``model_final.pt``) is written as after a full run.
    The clock starts when the run starts (a resumed run gets the budget again; pass what is left).

    Args:
        limit_s: the budget in seconds; ``None`` or a value <= 0: no limit.
    """

    def __init__(self, limit_s: float | None) -> None:
        self.limit_s = limit_s
        self.started: float | None = None
        self.stopped_at: int | None = None

    def attach(self, engine: Engine) -> None:
        if self.limit_s is None or self.limit_s <= 0:
            return
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def _start(self, engine: Engine) -> None:
        self.started = time.perf_counter()

    def __call__(self, engine: Engine) -> None:
        if self.started is not None and time.perf_counter() - self.started > float(self.limit_s):
            self.stopped_at = engine.state.iteration
            engine.logger.info(
                "time limit of %.0f s reached after %d iterations: training stops", self.limit_s, self.stopped_at
            )
            engine.terminate()
