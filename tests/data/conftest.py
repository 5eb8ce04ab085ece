"""Fixtures for the data tests: the real datasets in ``../shared/data`` beside the repository."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` relative to the repository root; the tests fail (not skip) without it."""
    for name in ("isbi2012", "brain_tumor_progression_dicom", "nrrd_brain"):
        if not (SHARED_DATA / name).is_dir():
            pytest.fail(
                f"Real test data missing: {SHARED_DATA / name} does not exist. The data tests read ../shared/data "
                "beside the repository checkout (see shared/data/README.md); clone the repository next to it."
            )
    return SHARED_DATA
