"""Small random-weight models of both bundles (geometry and failure handling need no accuracy)."""

from __future__ import annotations

from pathlib import Path

import pytest
from predict_helpers import FEATURES, make_checkpoint


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """``{bundle name: model.pt}`` with random weights for the narrow networks of both bundles."""
    root = tmp_path_factory.mktemp("models")
    return {b: make_checkpoint(b, root / f"{b}.pt") for b in FEATURES}


@pytest.fixture(scope="session")
def runners(checkpoints) -> dict:
    """Ready :class:`BundleRunner` objects (CPU) for both bundles, shared by the tests."""
    from monai_unet.predict.runner import BundleRunner

    return {
        b: BundleRunner(b, checkpoint=checkpoints[b], device="cpu", overrides={"features": FEATURES[b]})
        for b in FEATURES
    }
