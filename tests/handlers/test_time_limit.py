"""Training stops at a wall-clock budget and still completes (the final checkpoint is written)."""

from __future__ import annotations

import itertools
import time

import torch
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


def test_learning_rate_decays_over_the_wall_clock() -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.1)
    seen: list[float] = []
    engine = Engine(lambda e, b: (seen.append(opt.param_groups[0]["lr"]), time.sleep(0.01)))
    limit = TimeLimit(0.2, optimizer=opt, lr_power=0.9)
    limit.attach(engine)
    engine.run(range(10), max_epochs=1000)
    assert limit.stopped_at is not None and len(seen) == limit.stopped_at
    assert abs(seen[0] - 0.1) < 0.01  # starts at the initial rate
    assert all(a >= b for a, b in itertools.pairwise(seen))  # never rises
    assert seen[-1] < 0.03  # near the end of the budget, near zero (0.1 * (1 - t/T) ** 0.9)


def test_no_limit_leaves_the_learning_rate_alone() -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.1)
    engine = Engine(lambda e, b: None)
    TimeLimit(None, optimizer=opt).attach(engine)
    engine.run(range(5), max_epochs=2)
    assert opt.param_groups[0]["lr"] == 0.1
