"""ResumableCheckpoint: atomic writes, and a resumed run continues where the stopped one left off;
AtomicCheckpointSaver: the best model by the key metric, always a complete file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events

from monai_unet.handlers import ResumableCheckpoint, atomic_torch_save


def _trainer(stop_at: int | None = None) -> tuple[Engine, torch.nn.Module, torch.optim.Optimizer, list]:
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.99)
    data = [torch.randn(4, 3) for _ in range(5)]

    def step(engine: Engine, x: torch.Tensor) -> float:
        opt.zero_grad()
        loss = net(x).square().mean()
        loss.backward()
        opt.step()
        return loss.item()

    engine = Engine(step)
    if stop_at is not None:

        @engine.on(Events.EPOCH_COMPLETED(once=stop_at))
        def _stop(e: Engine) -> None:
            e.terminate()

    return engine, net, opt, data


def _run(tmp_path: Path, max_epochs: int, stop_at: int | None = None) -> tuple[Engine, torch.nn.Module]:
    engine, net, opt, data = _trainer(stop_at)
    ResumableCheckpoint(tmp_path, {"network": net, "optimizer": opt, "trainer": engine}).attach(engine)
    engine.run(data, max_epochs=max_epochs)
    return engine, net


def test_resume_gives_the_uninterrupted_result(tmp_path: Path) -> None:
    _, straight = _run(tmp_path / "a", max_epochs=4)
    stopped, _ = _run(tmp_path / "b", max_epochs=4, stop_at=2)
    assert stopped.state.epoch == 2
    assert (tmp_path / "b" / "checkpoint.pt").is_file() and (tmp_path / "b" / "model.pt").is_file()
    resumed, net = _run(tmp_path / "b", max_epochs=4)
    assert resumed.state.epoch == 4 and resumed.state.iteration == 20
    for a, b in zip(straight.state_dict().values(), net.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_model_file_holds_network_weights(tmp_path: Path) -> None:
    _, net = _run(tmp_path, max_epochs=1)
    weights = torch.load(tmp_path / "model.pt", weights_only=True)
    for k, v in net.state_dict().items():
        torch.testing.assert_close(weights[k], v)


def test_failed_save_keeps_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "checkpoint.pt"
    atomic_torch_save({"step": 1}, path)

    def broken_save(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"half a checkpoint")
        raise KeyboardInterrupt  # a Ctrl-C in the middle of writing

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary file left behind


def test_unreadable_checkpoint_says_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    engine, net, opt, _ = _trainer()
    handler = ResumableCheckpoint(tmp_path, {"network": net, "optimizer": opt, "trainer": engine})
    with pytest.raises(RuntimeError, match="Delete it"):
        handler.load()


def _evaluations(saver, scores: list[float], broken_at: int | None = None) -> torch.nn.Module:
    """An evaluator-like engine: epoch ``e`` sets every weight to ``e`` and reports ``scores[e - 1]`` as key metric."""
    net = torch.nn.Linear(2, 1)

    def step(engine: Engine, batch: int) -> None:
        with torch.no_grad():
            for p in net.parameters():
                p.fill_(engine.state.epoch)

    engine = Engine(step)
    engine.state.key_metric_name = "val_mean_dice"

    @engine.on(Events.EPOCH_COMPLETED)
    def _metric(e: Engine) -> None:
        e.state.metrics = {"val_mean_dice": scores[e.state.epoch - 1]}

    saver = saver(net)
    saver.attach(engine)
    engine.run([0], max_epochs=len(scores))
    return net


def test_best_model_is_kept_by_the_key_metric(tmp_path: Path) -> None:
    """The file holds the epoch with the best score (a tie does not replace it); the final file the last epoch."""
    from monai.handlers import CheckpointLoader

    from monai_unet.handlers import AtomicCheckpointSaver

    def saver(net):
        return AtomicCheckpointSaver(tmp_path, {"model": net}, save_final=True, final_filename="final.pt")

    _evaluations(saver, [0.5, 0.8, float("nan"), 0.8, 0.6])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final.pt", "model.pt"]
    assert torch.load(tmp_path / "model.pt", weights_only=True)["weight"].unique().tolist() == [2.0]
    assert torch.load(tmp_path / "final.pt", weights_only=True)["weight"].unique().tolist() == [5.0]
    # as the bundles' inference.json reads it
    net = torch.nn.Linear(2, 1)
    engine = Engine(lambda e, b: None)
    CheckpointLoader(str(tmp_path / "model.pt"), {"model": net}).attach(engine)
    engine.run([0])
    assert net.bias.item() == 2.0


def test_best_model_file_survives_a_failed_save(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kill while the next best model is written leaves the previous best file whole, and no temporary."""
    from monai_unet.handlers import AtomicCheckpointSaver

    real_save = torch.save

    def save_then_break_on_epoch_2(obj, f, *args, **kwargs):
        if obj["weight"].unique().item() == 2.0:
            Path(f).write_bytes(b"half a checkpoint")
            raise KeyboardInterrupt
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_then_break_on_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        _evaluations(lambda net: AtomicCheckpointSaver(tmp_path, {"model": net}), [0.5, 0.9])
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]
    assert torch.load(tmp_path / "model.pt", weights_only=True)["weight"].unique().tolist() == [1.0]


def test_final_model_is_saved_at_every_completion(tmp_path: Path) -> None:
    """An evaluator runs once per validation; the final file holds the weights of the last run."""
    from monai_unet.handlers import AtomicCheckpointSaver

    net = torch.nn.Linear(2, 1)
    runs = []

    def step(engine: Engine, batch: int) -> None:
        with torch.no_grad():
            net.weight.fill_(len(runs))

    engine = Engine(step)
    engine.add_event_handler(Events.STARTED, lambda e: runs.append(1))
    AtomicCheckpointSaver(tmp_path, {"model": net}, save_key_metric=False, save_final=True).attach(engine)
    for _ in range(2):
        engine.run([0, 1], max_epochs=1)
    assert torch.load(tmp_path / "model_final.pt", weights_only=True)["weight"].unique().tolist() == [2.0]


def test_checkpoint_saver_needs_something_to_save(tmp_path: Path) -> None:
    from monai_unet.handlers import AtomicCheckpointSaver

    with pytest.raises(ValueError, match="nothing to save"):
        AtomicCheckpointSaver(tmp_path, {"model": torch.nn.Linear(2, 1)}, save_key_metric=False)
