"""Ignite handlers that MONAI lacks: atomic, resumable checkpoints; gradient clipping in SupervisedTrainer;
a wall-clock time limit."""

from __future__ import annotations

from monai_unet.handlers.checkpoint import AtomicCheckpointSaver, ResumableCheckpoint, atomic_torch_save
from monai_unet.handlers.clipping import GradientClipping
from monai_unet.handlers.time_limit import TimeLimit

__all__ = ["AtomicCheckpointSaver", "GradientClipping", "ResumableCheckpoint", "TimeLimit", "atomic_torch_save"]
