"""Fixtures for the bundle tests: tiny synthetic datasets."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_em(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic EM dataset in the ISBI layout (6 images of 256 x 256)."""
    from monai_unet.data import make_em_dataset

    return make_em_dataset(tmp_path_factory.mktemp("tiny_em"), num_images=6, size=256, seed=1)


@pytest.fixture(scope="session")
def tiny_volumes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic volume dataset with dataset.json (5 volumes of 64 x 64 x 24)."""
    from monai_unet.data import make_volume_dataset

    return make_volume_dataset(tmp_path_factory.mktemp("tiny_vol"), num_volumes=5, shape=(64, 64, 24), seed=1)
