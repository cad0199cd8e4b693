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


#: Totals of the reliability suite, printed at the end of the run (and so of the CI log).
RELIABILITY = {"cases": 0, "events compared": 0, "lost": 0, "duplicated": 0}


def record_reliability(*, compared: int, lost: int, duplicated: int) -> None:
    RELIABILITY["cases"] += 1
    RELIABILITY["events compared"] += compared
    RELIABILITY["lost"] += lost
    RELIABILITY["duplicated"] += duplicated


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if RELIABILITY["cases"]:
        terminalreporter.section("reliability summary")
        terminalreporter.write_line(", ".join(f"{k}: {v}" for k, v in RELIABILITY.items()))
