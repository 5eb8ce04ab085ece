"""ResumableCheckpoint: atomic writes, and a resumed run continues where the stopped one left off."""

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


def test_monai_checkpoint_saver_made_atomic(tmp_path: Path) -> None:
    from monai_unet.handlers import AtomicCheckpointSaver

    net = torch.nn.Linear(2, 1)
    saver = AtomicCheckpointSaver(str(tmp_path), {"model": net}, save_final=True, final_filename="final.pt")
    assert saver._final_checkpoint.save_handler._atomic
    engine = Engine(lambda e, b: None)
    saver.attach(engine)
    engine.run([0], max_epochs=1)
    (saved,) = tmp_path.glob("*.pt")
    torch.testing.assert_close(torch.load(saved, weights_only=True)["weight"], net.weight.detach())
