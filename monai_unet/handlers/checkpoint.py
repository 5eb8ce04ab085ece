"""Resumable training: atomic checkpoints of the whole training state, loaded again when a run restarts.

MONAI's ``CheckpointSaver`` writes in place (``atomic=False``), so a kill during a save can leave a truncated file,
and resuming needs a second handler pointed at a file that may not exist yet. :class:`ResumableCheckpoint` does
both: on ``STARTED`` it loads ``<save_dir>/<filename>`` if present (network, optimizer, scheduler, engine state),
and every ``save_interval`` epochs or iterations (and on completion) it writes the state to a temporary file in the
same folder, flushes it to disk and renames it over the old one, so the file on disk is always complete. It also
writes ``model.pt`` (the network's ``state_dict`` alone) the same way, for inference. :class:`AtomicCheckpointSaver`
keeps an evaluator's best model the same way. Every write goes through :func:`atomic_torch_save`.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint
from ignite.handlers.checkpoint import BaseSaveHandler

from monai_unet.io.atomic import atomic_output

__all__ = ["AtomicCheckpointSaver", "ResumableCheckpoint", "atomic_torch_save"]

logger = logging.getLogger(__name__)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file beside ``path``, fsync, then rename over ``path`` (never half-written)."""
    with atomic_output(path) as tmp:
        torch.save(obj, tmp)


def _unwrap(obj: Any) -> Any:
    """The module inside DistributedDataParallel/DataParallel, so checkpoints load into a plain network."""
    return obj.module if isinstance(obj, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)) else obj


def _is_rank0() -> bool:
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or (
        torch.distributed.get_rank() == 0
    )


class ResumableCheckpoint:
    """Save the training state atomically and resume from it when the same run starts again.

    Args:
        save_dir: folder for the checkpoint files.
        save_dict: objects with ``state_dict``/``load_state_dict`` to save, e.g.
            ``{"network": net, "optimizer": opt, "lr_scheduler": sched, "trainer": trainer}``.
        filename: the full-state checkpoint file name inside ``save_dir``.
        model_filename: file for the network weights alone (``None`` to skip); the network is the entry
            ``network_key`` of ``save_dict``.
        network_key: which entry of ``save_dict`` is the network.
        save_interval: save every this many epochs (``epoch_level=True``) or iterations.
        epoch_level: count ``save_interval`` in epochs or in iterations.
        resume: load ``filename`` at start when it exists.
        map_location: passed to ``torch.load`` (the default loads onto the CPU first).
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        save_dict: Mapping[str, Any],
        filename: str = "checkpoint.pt",
        model_filename: str | None = "model.pt",
        network_key: str = "network",
        save_interval: int = 1,
        epoch_level: bool = True,
        resume: bool = True,
        map_location: Any = "cpu",
    ) -> None:
        if save_interval < 1:
            raise ValueError(f"save_interval must be >= 1, got {save_interval}.")
        if model_filename is not None and network_key not in save_dict:
            raise ValueError(f"save_dict has no {network_key!r} entry to write {model_filename}: {list(save_dict)}.")
        self.save_dir = Path(save_dir)
        self.save_dict = dict(save_dict)
        self.path = self.save_dir / filename
        self.model_path = None if model_filename is None else self.save_dir / model_filename
        self.network_key = network_key
        self.save_interval = save_interval
        self.epoch_level = epoch_level
        self.resume = resume
        self.map_location = map_location

    def attach(self, engine: Engine) -> None:
        """Load at ``STARTED`` (if resuming), save every interval and when the run completes."""
        if self.resume:
            engine.add_event_handler(Events.STARTED, self.load)
        event = Events.EPOCH_COMPLETED if self.epoch_level else Events.ITERATION_COMPLETED
        engine.add_event_handler(event(every=self.save_interval), self.save)
        engine.add_event_handler(Events.COMPLETED, self.save)

    def load(self, engine: Engine | None = None) -> bool:
        """Load the checkpoint into ``save_dict``'s objects; returns whether one was found."""
        if not self.path.is_file():
            return False
        try:
            state = torch.load(self.path, map_location=self.map_location, weights_only=False)
        except Exception as e:
            raise RuntimeError(
                f"cannot read checkpoint {self.path}: {e}. Delete it (and {self.save_dir}) to start training afresh."
            ) from e
        missing = [k for k in self.save_dict if k not in state]
        if missing:
            raise RuntimeError(f"checkpoint {self.path} lacks {missing}; it was written by another configuration.")
        prior_max_epochs = None if engine is None else engine.state.max_epochs
        for key, obj in self.save_dict.items():
            _unwrap(obj).load_state_dict(state[key])
        if engine is not None:
            # the configured max_epochs wins, so a finished run can be extended by asking for more epochs
            if prior_max_epochs is not None:
                engine.state.max_epochs = max(prior_max_epochs, engine.state.epoch)
            logger.info(
                "resumed from %s at epoch %d, iteration %d", self.path, engine.state.epoch, engine.state.iteration
            )
        return True

    def save(self, engine: Engine | None = None) -> None:
        """Write the checkpoint (and ``model.pt``) atomically; only rank 0 writes in distributed runs."""
        if not _is_rank0():
            return
        state = {key: _unwrap(obj).state_dict() for key, obj in self.save_dict.items()}
        atomic_torch_save(state, self.path)
        if self.model_path is not None:
            atomic_torch_save(state[self.network_key], self.model_path)


class _FixedFileSaver(BaseSaveHandler):
    """An ignite save handler that writes every checkpoint to one file with :func:`atomic_torch_save` (rank 0 only).

    ``Checkpoint`` calls ``remove`` for the checkpoint a better one replaces; the file name being fixed, the new
    file has already been renamed over it, so there is nothing to delete (deleting first, as MONAI's saver does,
    leaves no file at all if the process dies before the next write).
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        if _is_rank0():
            atomic_torch_save(checkpoint, self.path)

    def remove(self, filename: str) -> None:
        """Nothing to delete: the next save replaces the file."""


class AtomicCheckpointSaver:
    """Keep an evaluator's best model (by its key metric), and optionally the final one, each in one complete file.

    For a MONAI evaluator's ``val_handlers`` in place of MONAI's ``CheckpointSaver``, with its argument names (the
    fixed-file-name part the bundles use), on ignite's public ``Checkpoint``. MONAI's saver writes in place
    (``atomic=False``) and deletes the previous best file before writing the next one, so a kill at the wrong moment
    leaves a truncated file or none; here every save writes a temporary file beside the target, flushes it and
    renames it over the old one.

    Args:
        save_dir: folder of the files (created when missing).
        save_dict: objects with ``state_dict`` to save, e.g. ``{"model": network}``. A single object is saved as
            its bare ``state_dict`` (as MONAI's saver does), which MONAI's ``CheckpointLoader`` reads with
            ``load_dict={"model": network}``.
        save_key_metric: at the end of each evaluation, save when the key metric beats the best so far.
        key_metric_name: the metric in ``engine.state.metrics``; by default the evaluator's key metric
            (``engine.state.key_metric_name``). Higher is better; a NaN never counts as an improvement.
        key_metric_filename: the best model's file name inside ``save_dir``.
        save_final: save when the engine completes.
        final_filename: the final model's file name inside ``save_dir``.
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        save_dict: Mapping[str, Any],
        save_key_metric: bool = True,
        key_metric_name: str | None = None,
        key_metric_filename: str = "model.pt",
        save_final: bool = False,
        final_filename: str = "model_final.pt",
    ) -> None:
        if not save_dict:
            raise ValueError("save_dict is empty: give the objects to save, e.g. {'model': network}.")
        if not (save_key_metric or save_final):
            raise ValueError("nothing to save: set save_key_metric=True and/or save_final=True.")
        self.save_dir = Path(save_dir)
        self.key_metric_name = key_metric_name
        self.key_metric_checkpoint = None
        self.final_checkpoint = None
        if save_key_metric:
            self.key_metric_checkpoint = Checkpoint(
                dict(save_dict),
                _FixedFileSaver(self.save_dir / key_metric_filename),
                score_function=self._key_metric,
                score_name="key_metric",
                n_saved=1,
            )
        if save_final:  # n_saved=None: every completion saves (an evaluator restarts its iteration count each run)
            self.final_checkpoint = Checkpoint(
                dict(save_dict), _FixedFileSaver(self.save_dir / final_filename), n_saved=None
            )

    def _key_metric(self, engine: Engine) -> float:
        name = self.key_metric_name or getattr(engine.state, "key_metric_name", None)
        if name is None:
            raise ValueError("save_key_metric=True needs key_metric_name, or an evaluator with a key_val_metric.")
        value = float(engine.state.metrics[name])
        return -math.inf if math.isnan(value) else value

    def attach(self, engine: Engine) -> None:
        """Check the key metric when each evaluation (epoch) completes; save the final model when the run does."""
        if self.key_metric_checkpoint is not None:
            engine.add_event_handler(Events.EPOCH_COMPLETED, self.key_metric_checkpoint)
        if self.final_checkpoint is not None:
            engine.add_event_handler(Events.COMPLETED, self.final_checkpoint)
