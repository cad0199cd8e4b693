"""The sink protocol and the one delivery loop, against a real SQLite outbox and MemorySink handlers."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from qualys_collector.config import build_config
from qualys_collector.engine.outbox import Outbox
from qualys_collector.errors import ConfigError, DeliveryError
from qualys_collector.model import Event, StoredEvent
from qualys_collector.sinks.base import Ack, BuildContext, Confirmation
from qualys_collector.sinks.drain import Drainer
from qualys_collector.sinks.memory import MemorySink
from qualys_collector.sinks.registry import OUTPUT_TYPES, build_sink

pytestmark = pytest.mark.integration


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "state")
    box.register_outputs(["memory"])
    box.commit("1", "host_list", [Event(tag="a.b", body={"n": i}) for i in range(10)], {"@persistence_version": 1})
    yield box
    box.close()


def numbers(sink: MemorySink) -> list[int]:
    return [json.loads(e.body)["n"] for e in sink.events]


def test_a_sink_that_confirms_a_prefix_has_only_that_prefix_forgotten(outbox: Outbox) -> None:
    def first_three(batch: Sequence[StoredEvent]) -> Ack:
        return Ack(batch[min(2, len(batch) - 1)].seq)

    sink = MemorySink(first_three)
    drainer = Drainer(outbox, sink, batch_size=10)
    assert drainer.drain_once() == 3
    assert outbox.pending("memory") == 7
    assert drainer.drain_once() == 3
    assert numbers(sink) == [0, 1, 2, 3, 4, 5]
    assert [len(b) for b in sink.batches] == [10, 7]  # the unconfirmed rest is offered again, nothing skipped


def test_a_prefix_with_a_reason_is_kept_and_the_reason_is_a_failure(outbox: Outbox) -> None:
    def half_then_down(batch: Sequence[StoredEvent]) -> Ack:
        return Ack(batch[4].seq, DeliveryError("request 2 of 2 refused"))

    sink = MemorySink(half_then_down)
    drainer = Drainer(outbox, sink, batch_size=10)
    with pytest.raises(DeliveryError, match="request 2 of 2 refused"):
        drainer.drain_once()
    assert outbox.pending("memory") == 5
    assert numbers(sink) == [0, 1, 2, 3, 4]
    assert drainer.stats.total_sent == 5


@pytest.mark.parametrize(
    ("ack", "message"),
    [(lambda b: Ack.nothing(), "confirmed none of 10 events"), (lambda b: Ack(b[-1].seq + 1), "beyond its batch")],
)
def test_confirming_nothing_or_more_than_was_given_acknowledges_nothing(
    outbox: Outbox, ack: object, message: str
) -> None:
    drainer = Drainer(outbox, MemorySink(ack))  # type: ignore[arg-type]
    with pytest.raises(DeliveryError, match=message):
        drainer.drain_once()
    assert outbox.pending("memory") == 10


def test_bounded_attempts_give_up_with_the_events_kept_and_unbounded_runs_retry_until_stopped(
    outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[int] = []

    def down(batch: Sequence[StoredEvent]) -> Ack:
        calls.append(len(batch))
        raise DeliveryError("receiver down")

    drainer = Drainer(outbox, MemorySink(down), max_backoff=0.01)
    drainer.backoff_start = 0.01
    with caplog.at_level(logging.ERROR):
        assert drainer.run(threading.Event(), attempts=3) is False
    assert len(calls) == 3
    assert outbox.pending("memory") == 10
    assert "receiver down; retrying in 0 s (attempt 1 of 3)" in caplog.text
    assert "receiver down (attempt 3 of 3); the events stay in the outbox" in caplog.text

    stop = threading.Event()
    up = threading.Event()

    def later(batch: Sequence[StoredEvent]) -> Ack:
        calls.append(len(batch))
        if len(calls) < 10:
            raise DeliveryError("receiver down")
        stop.set()  # confirmed: let the unbounded loop end after this batch
        up.set()
        return Ack.all(batch)

    forever = Drainer(outbox, MemorySink(later), max_backoff=0.01)
    forever.backoff_start = 0.01
    assert forever.run(stop) is True  # six failures in a row did not end it; the seventh try did
    assert up.is_set()
    assert forever.stats.failures == 6
    assert outbox.pending("memory") == 0


def test_a_bounded_drain_delivers_everything_even_after_stop(outbox: Outbox) -> None:
    """``run --once`` after SIGTERM still hands over what was pulled (stop only shortens its waits)."""
    stop = threading.Event()
    stop.set()
    sink = MemorySink()
    assert Drainer(outbox, sink, batch_size=3).run(stop, attempts=3) is True
    assert numbers(sink) == list(range(10))


def test_every_output_type_is_one_module_in_the_registry_and_declares_its_confirmation(tmp_path: Path) -> None:
    certs = tmp_path / "missing"
    blocks = {
        "file": {"type": "file", "config": {"path": str(tmp_path / "out.jsonl")}},
        "stdout": {"type": "stdout"},
        "devo_platform": {
            "type": "devo_platform",
            "config": {"address": "127.0.0.1", "chain": str(certs / "c"), "cert": str(certs / "a"), "key": "k"},
        },
        "devo_http": {"type": "devo_http", "config": {"region": "eu", "domain": "d", "token": "t0ken-of-devo"}},
    }
    assert [o.name for o in OUTPUT_TYPES] == list(blocks)
    raw = {"outputs": blocks, "inputs": {"qualys_fim": {"id": 1, "credentials": CREDENTIALS, "services": SERVICES}}}
    config = build_config(raw, warnings=[])
    context = BuildContext(state_dir=tmp_path / "state")
    kinds = {}
    for name in ("file", "stdout", "devo_http"):
        sink = build_sink(name, config.outputs[name], context)
        kinds[name] = sink.confirmation
        sink.close()
    assert kinds == {
        "file": Confirmation.FSYNC,
        "stdout": Confirmation.NONE,
        "devo_http": Confirmation.APPLICATION_ACK,
    }
    with pytest.raises(DeliveryError) as info:  # its builder checks the certificate files first
        build_sink("devo_platform", config.outputs["devo_platform"], context)
    assert info.value.code == 400


CREDENTIALS = {"username": "u", "password": "p", "base_url": "https://gateway.example"}
SERVICES = {"fim_events": {}}


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"type": "file", "config": {"paht": "x"}}, "outputs.o.config.paht: unknown key"),
        ({"type": "devo_platform", "config": {"address": "a", "chain": "c", "cert": "c"}}, "outputs.o.config.key: is"),
        ({"type": "kafka"}, "outputs.o: Input tag 'kafka' found using 'type' does not match any of the expected tags"),
    ],
)
def test_output_errors_name_the_key_without_the_union_member(block: dict[str, object], message: str) -> None:
    raw = {
        "outputs": {"o": block},
        "inputs": {"qualys_fim": {"id": 1, "credentials": CREDENTIALS, "services": SERVICES}},
    }
    with pytest.raises(ConfigError) as info:
        build_config(raw, warnings=[])
    assert message in str(info.value)


def test_an_unconfirmed_batch_is_resent_once_after_a_confirmed_empty_session_then_the_output_stops(
    outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    """Error 404 (written, not confirmed) costs at most one re-send; connect errors never stop an output."""
    offered: list[int] = []

    def written_never_confirmed(batch: Sequence[StoredEvent]) -> Ack:
        offered.append(len(batch))
        if batch:
            raise DeliveryError("written, not confirmed", code=404)
        return Ack.all(batch)  # the empty session is confirmed

    drainer = Drainer(outbox, MemorySink(written_never_confirmed), max_backoff=0.01)
    drainer.backoff_start = 0.01
    with caplog.at_level(logging.ERROR):
        assert drainer.run(threading.Event()) is False  # the unbounded loop ends: it stopped re-sending
    assert offered == [10, 0, 10]  # the batch, an empty probe, the batch once more: one batch of copies at most
    assert drainer.halted is not None
    assert drainer.halted.code == 408
    assert caplog.text.count("[DeliveryError 408] output memory: delivery stopped") == 1
    assert outbox.pending("memory") == 10

    probes: list[int] = []

    def probe_never_confirmed(batch: Sequence[StoredEvent]) -> Ack:
        probes.append(len(batch))
        raise DeliveryError("written, not confirmed", code=404)

    second = Drainer(outbox, MemorySink(probe_never_confirmed), max_backoff=0.01, probe_limit=3)
    second.backoff_start = 0.01
    assert second.run(threading.Event()) is False
    assert probes == [10, 0, 0, 0]  # never re-sent: the relay confirmed no empty session either

    stop = threading.Event()
    refused: list[int] = []

    def down(batch: Sequence[StoredEvent]) -> Ack:
        refused.append(len(batch))
        if len(refused) >= 8:
            stop.set()
        raise DeliveryError("cannot connect", code=403)  # nothing written: retried for ever

    third = Drainer(outbox, MemorySink(down), max_backoff=0.01)
    third.backoff_start = 0.01
    assert third.run(stop) is True
    assert third.halted is None
    assert len(refused) >= 8
