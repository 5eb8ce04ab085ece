"""Ignite handlers that MONAI lacks: atomic, resumable checkpoints."""

from __future__ import annotations

from monai_unet.handlers.checkpoint import AtomicCheckpointSaver, ResumableCheckpoint, atomic_torch_save

__all__ = ["AtomicCheckpointSaver", "ResumableCheckpoint", "atomic_torch_save"]
