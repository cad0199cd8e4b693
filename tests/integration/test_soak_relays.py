"""The soak of ``bench/soak_relays.py`` shortened to 60 s: the real ``run`` against each misbehaving relay, all
side by side, with the same expectations (``tests/helpers/soak.py``): at most one batch of extra copies, nothing
acknowledged that the relay did not confirm, the output reported not ready with its reason (or, for the relay
that only omits ``close_notify``, every event stored once), and SIGTERM ending the run within 5 s.

Shortened by tuning only: a 5 s request period, ``confirm_timeout_seconds: 1`` (the halt after five unconfirmed
probes with doubling backoff comes at about 40 s, later under load) and ``delivery_stall_seconds: 10``.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from qualys_collector.simulator import Simulator
from tests.helpers.receivers import RsyslogReceiver, SyslogNg
from tests.helpers.soak import BATCH, RELAYS, SoakResult, soak, soak_simulation

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.reliability]

if not (SyslogNg.available() and RsyslogReceiver.available()):
    pytest.fail("the soak needs rsyslog (with rsyslog-gnutls) and syslog-ng: run `bash .ci/run` as root", pytrace=False)


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, SoakResult]]:
    simulator = Simulator(soak_simulation())
    url = simulator.start()
    root = tmp_path_factory.mktemp("soak")
    try:
        with ThreadPoolExecutor(len(RELAYS)) as pool:
            futures = {
                name: pool.submit(soak, name, root / name, url, 60.0, period=5, stall=10.0, confirm_timeout=1.0)
                for name in RELAYS
            }
            yield {name: future.result() for name, future in futures.items()}
    finally:
        simulator.stop()


@pytest.mark.parametrize("name", sorted(RELAYS))
def test_a_run_against_a_misbehaving_relay_costs_at_most_one_batch_and_says_why(
    results: dict[str, SoakResult], name: str
) -> None:
    result = results[name]
    print(result.line())
    assert result.failures() == [], result.log_tail
    assert result.pulled > 600  # every host at least once, and pulling went on while the relay misbehaved
    assert result.extra <= BATCH
    assert result.exit_code == 0
    assert result.exit_seconds <= 5.0
    if result.expect == "delivers":
        assert result.missing == result.pending == 0
        assert result.ready is True, result.problems
    else:
        assert result.ready is False
        assert result.pending == result.pulled, "a batch the relay never confirmed was acknowledged"
    if result.expect == "halts":
        assert result.halted_gauge == 1.0
        assert result.errors["[DeliveryError 408]"] == 1
        assert any("output devo: delivery stopped" in problem for problem in result.problems)
    if result.expect == "refuses":
        assert result.stored == 0
        assert result.halted_gauge == 0.0  # refused, not halted: it keeps retrying with backoff
        assert any("(last: [DeliveryError 403]" in problem for problem in result.problems), result.problems
