"""Training stops at a wall-clock budget and still completes (the final checkpoint is written)."""

from __future__ import annotations

import time

from ignite.engine import Engine, Events

from monai_unet.handlers import TimeLimit


def test_training_stops_past_the_budget_and_completes() -> None:
    engine = Engine(lambda e, b: time.sleep(0.02))
    done = []
    engine.add_event_handler(Events.COMPLETED, lambda e: done.append(e.state.iteration))
    limit = TimeLimit(0.1)
    limit.attach(engine)
    engine.run(range(10), max_epochs=100)
    assert limit.stopped_at is not None and 4 <= limit.stopped_at < 200
    assert done == [limit.stopped_at]


def test_no_limit_runs_every_iteration() -> None:
    engine = Engine(lambda e, b: None)
    TimeLimit(None).attach(engine)
    TimeLimit(0).attach(engine)
    state = engine.run(range(5), max_epochs=3)
    assert state.iteration == 15
