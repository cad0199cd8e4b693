from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from qualys_collector.redact import forget_secrets
from qualys_collector.simulator import Limits, SimConfig, Simulator

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


SimFactory = Callable[..., Simulator]


@pytest.fixture
def make_sim() -> Iterator[SimFactory]:
    """The one way tests get a simulator: ``make_sim(seed=3, hosts=20, vm_limits=Limits(...))`` takes
    :class:`SimConfig` fields plus the :class:`Simulator` options (``vm_limits``, ``fim_limits``, ``username``,
    ``password``, ``token_ttl``); every simulator it made is stopped when the test ends."""
    made: list[Simulator] = []

    def make(
        *,
        vm_limits: Limits | None = None,
        fim_limits: Limits | None = None,
        username: str = "demo",
        password: str = "demo",
        token_ttl: int = 14400,
        **data: Any,
    ) -> Simulator:
        sim = Simulator(
            SimConfig(**data),
            vm_limits=vm_limits,
            fim_limits=fim_limits,
            username=username,
            password=password,
            token_ttl=token_ttl,
        )
        made.append(sim)
        return sim

    yield make
    for sim in made:
        sim.stop()


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
