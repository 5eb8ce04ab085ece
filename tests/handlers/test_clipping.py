"""GradientClipping bounds each SupervisedTrainer step without changing the engine."""

from __future__ import annotations

import pytest
import torch
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents

from monai_unet.handlers import GradientClipping


def _trainer(scale: float) -> SupervisedTrainer:
    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 2, 3, padding=1)
    data = [{"image": torch.randn(1, 1, 8, 8) * scale, "label": torch.randint(0, 2, (1, 1, 8, 8))}]
    return SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=data,
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.0),
        loss_function=lambda p, t: torch.nn.functional.cross_entropy(p, t[:, 0].long()),
    )


def _record_step_norms(trainer) -> list:
    """Gradient norms the optimizer step sees (after the clipping handler), filled as the trainer runs."""
    seen = []
    trainer.add_event_handler(
        IterationEvents.MODEL_COMPLETED,
        lambda e: seen.append(torch.nn.utils.get_total_norm([p.grad for p in e.network.parameters()])),
    )
    return seen


def test_clips_the_step_to_max_norm() -> None:
    trainer = _trainer(scale=100.0)
    GradientClipping(max_norm=0.5).attach(trainer)
    seen = _record_step_norms(trainer)
    trainer.run()
    assert trainer.state.grad_norm > 0.5  # the raw gradient was larger ...
    assert float(seen[0]) == pytest.approx(0.5, rel=1e-4)  # ... and the step used the clipped one


def test_small_gradients_are_untouched() -> None:
    trainer = _trainer(scale=1e-3)
    GradientClipping(max_norm=1e6).attach(trainer)
    seen = _record_step_norms(trainer)
    trainer.run()
    assert float(seen[0]) == pytest.approx(trainer.state.grad_norm, rel=1e-6)


def test_bad_max_norm() -> None:
    with pytest.raises(ValueError, match="max_norm"):
        GradientClipping(max_norm=0)
