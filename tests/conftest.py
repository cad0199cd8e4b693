from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from qualys_collector.redact import forget_secrets

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"


@pytest.fixture(autouse=True)
def _clean_secrets() -> Iterator[None]:
    forget_secrets()
    yield
    forget_secrets()


@pytest.fixture
def shared() -> Path:
    if not SHARED.is_dir():  # CI always has ../shared beside the clone
        pytest.fail(f"{SHARED} is missing: the tests read the reference samples in place")
    return SHARED
