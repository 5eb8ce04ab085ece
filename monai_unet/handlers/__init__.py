"""Ignite handlers that MONAI lacks: atomic, resumable checkpoints; gradient clipping in SupervisedTrainer."""

from __future__ import annotations

from monai_unet.handlers.checkpoint import AtomicCheckpointSaver, ResumableCheckpoint, atomic_torch_save
from monai_unet.handlers.clipping import GradientClipping

__all__ = ["AtomicCheckpointSaver", "GradientClipping", "ResumableCheckpoint", "atomic_torch_save"]
