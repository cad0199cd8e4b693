"""The state store's unit of work, keyed tables and in-place upgrade, against real SQLite files."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from qualys_collector.engine.cycle import Job, run_cycle
from qualys_collector.engine.outbox import DB_NAME, Outbox
from qualys_collector.engine.source import CursorMode, ServiceSpec
from qualys_collector.engine.store import PAGE_SIZE, SCHEMA_VERSION
from qualys_collector.errors import StateError
from qualys_collector.model import Event, epoch_ms
from tests.helpers.sources import ListSource, rec

pytestmark = pytest.mark.integration

T0 = datetime(2024, 1, 1, tzinfo=UTC)

#: The schema exactly as qualys-collector 4cd6d36 (schema version 0) created it.
SCHEMA_4CD6D36 = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    tag TEXT NOT NULL,
    body TEXT NOT NULL,
    source TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoints (
    input_id TEXT NOT NULL,
    service TEXT NOT NULL,
    data TEXT NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (input_id, service)
);
CREATE TABLE IF NOT EXISTS positions (
    output TEXT PRIMARY KEY,
    seq INTEGER NOT NULL
);
"""


def write_old_database(state: Path, checkpoint: dict[str, object], events: int = 3) -> None:
    """A state database as 4cd6d36 left it: its schema, pending events, a checkpoint, one output's position."""
    state.mkdir(parents=True)
    db = sqlite3.connect(state / DB_NAME)
    db.executescript(SCHEMA_4CD6D36)
    db.executemany(
        "INSERT INTO events (tag, body, source, created) VALUES (?, ?, ?, ?)",
        [("vuln.qualys.hosts", json.dumps({"n": i}), "7/host_list", 1.0) for i in range(events)],
    )
    db.execute(
        "INSERT INTO checkpoints VALUES (?, ?, ?, ?)",
        ("7", "fim_incidents", json.dumps(checkpoint, sort_keys=True), 1.0),
    )
    db.execute("INSERT INTO positions VALUES ('file', 1)")  # the first event was delivered
    db.commit()
    db.close()


@pytest.fixture
def store(tmp_path: Path) -> Outbox:
    box = Outbox(tmp_path / "state")
    box.declare("things", owner="fim_incidents")
    yield box  # type: ignore[misc]
    box.close()


def test_keyed_table_get_put_delete_iterate_prune_by_scope(store: Outbox) -> None:
    with store.transaction("7") as tx:
        table = tx.table("things")
        table.put("b", {"x": 2}, stamp=200)
        table.put("a", [1], stamp=100)
        table.put("c", "three")
        assert table.get("a") == [1]  # a transaction reads its own writes
        assert table.delete("c")
        assert not table.delete("c")
    with store.transaction("8") as tx:
        tx.table("things").put("a", "other input")
    view = store.table("7", "things")
    assert list(view.items()) == [("a", [1]), ("b", {"x": 2})]
    assert len(view) == 2
    assert "a" in view
    assert "c" not in view
    assert store.table("8", "things").get("a") == "other input"
    with store.transaction("7") as tx:
        table = tx.table("things")
        assert table.prune(150) == 1
        table.put("b", {"x": 3}, stamp=300)  # an update replaces value and stamp
    assert list(store.table("7", "things").items()) == [("b", {"x": 3})]
    assert store.table("8", "things").get("a") == "other input"


def test_keyed_rows_roll_back_with_the_events_and_the_checkpoint(store: Outbox) -> None:
    store.commit("7", "fim_incidents", [], {"n": 1})

    def half_done() -> None:
        with store.transaction("7") as tx:
            tx.add_events("fim_incidents", [Event(tag="a.b", body={"i": 1}, key="k1")])
            tx.table("things").put("k1", 1)
            tx.save_checkpoint("fim_incidents", {"n": 2})
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        half_done()
    assert store.pending() == 0
    assert store.table("7", "things").get("k1") is None
    assert store.load_checkpoint("7", "fim_incidents") == {"n": 1}
    with store.transaction("7") as tx:
        tx.add_events("fim_incidents", [Event(tag="a.b", body={"i": 1}, key="k1")])
        tx.table("things").put("k1", 1)
        tx.save_checkpoint("fim_incidents", {"n": 2})
    assert (store.pending(), store.table("7", "things").get("k1")) == (1, 1)
    assert store.load_checkpoint("7", "fim_incidents") == {"n": 2}


def test_an_undeclared_table_is_refused(store: Outbox) -> None:
    with pytest.raises(StateError, match="'nope' was used without being declared"):
        store.table("7", "nope")
    with pytest.raises(StateError, match="not lowercase"):
        store.declare("Robert'); DROP TABLE events;--", owner="x")


def test_resetting_a_service_clears_the_rows_of_the_tables_it_owns_in_its_scope(store: Outbox) -> None:
    for scope in ("7", "8"):
        with store.transaction(scope) as tx:
            tx.table("things").put("k", 1)
            tx.save_checkpoint("fim_incidents", {"n": 1})
    assert store.reset_checkpoint("7", "fim_incidents")
    assert store.table("7", "things").get("k") is None
    assert store.table("8", "things").get("k") == 1
    assert store.load_checkpoint("8", "fim_incidents") == {"n": 1}


def test_an_outbox_row_carries_the_record_key_and_the_event_time(tmp_path: Path) -> None:
    store = Outbox(tmp_path / "state")
    spec = ServiceSpec("vm_scans", "vuln.qualys.vulnerabilities", "LAUNCH_DATETIME", CursorMode.RECORD)
    source = ListSource([rec("r1", T0 + timedelta(seconds=10)), rec("r2", T0 + timedelta(seconds=20))])
    job = Job(input_name="qualys", input_id="42", spec=spec, source=source, tag=spec.default_tag, start_time=T0)
    run_cycle(job, store, clock=lambda: T0 + timedelta(seconds=100))
    store.close()
    with sqlite3.connect(tmp_path / "state" / DB_NAME) as db:
        rows = db.execute("SELECT record_key, event_time, source FROM events ORDER BY seq").fetchall()
    assert rows == [
        ("r1", epoch_ms(T0 + timedelta(seconds=10)), "42/vm_scans"),
        ("r2", epoch_ms(T0 + timedelta(seconds=20)), "42/vm_scans"),
        ("summary:vm_scans:2024-01-01T00:01:40Z", epoch_ms(T0 + timedelta(seconds=100)), "42/vm_scans"),  # window end
    ]


def test_a_new_state_database_has_16_kib_pages_and_an_older_one_keeps_its_own(tmp_path: Path) -> None:
    Outbox(tmp_path / "new").close()
    with sqlite3.connect(tmp_path / "new" / DB_NAME) as db:
        assert db.execute("PRAGMA page_size").fetchone()[0] == PAGE_SIZE == 16384
    write_old_database(tmp_path / "old", {"@persistence_version": 1})
    store = Outbox(tmp_path / "old")
    store.commit("7", "host_list", [Event(tag="vuln.qualys.hosts", body={"n": 3}, key="h3")], {})
    assert [json.loads(e.body)["n"] for e in store.read("file", 10)] == [1, 2, 3]
    store.close()
    with sqlite3.connect(tmp_path / "old" / DB_NAME) as db:
        assert db.execute("PRAGMA page_size").fetchone()[0] == 4096  # as the older collector created it


def test_a_database_written_by_the_previous_schema_opens_and_upgrades_in_place(tmp_path: Path) -> None:
    state = tmp_path / "state"
    checkpoint = {"@persistence_version": 1, "start_time_str": "2024-01-01T00:00:00Z", "last_ids": []}
    write_old_database(state, checkpoint)
    store = Outbox(state)
    try:
        assert store.load_checkpoint("7", "fim_incidents") == checkpoint
        assert store.pending("file") == 2  # pending events and the output's position survive
        assert [json.loads(e.body)["n"] for e in store.read("file", 10)] == [1, 2]
        store.commit("7", "host_list", [Event(tag="vuln.qualys.hosts", body={"n": 3}, key="h3")], checkpoint)
        assert [e.seq for e in store.read("file", 10)] == [2, 3, 4]
    finally:
        store.close()
    with sqlite3.connect(state / DB_NAME) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        keys = db.execute("SELECT record_key, event_time FROM events ORDER BY seq").fetchall()
    assert keys == [(None, None)] * 3 + [("h3", None)]  # old rows: no key; new rows: the record key
    Outbox(state).close()  # opening an upgraded database again changes nothing


def test_a_database_from_a_newer_collector_is_refused(tmp_path: Path) -> None:
    Outbox(tmp_path / "state").close()
    with sqlite3.connect(tmp_path / "state" / DB_NAME) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StateError, match="this collector knows up to"):
        Outbox(tmp_path / "state")


def _columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in db.execute(f"PRAGMA table_info({table})").fetchall()}


@pytest.mark.parametrize("version", [0, 1])
def test_the_upgrade_drops_the_columns_nothing_reads_and_keeps_the_rows(tmp_path: Path, version: int) -> None:
    state = tmp_path / "state"
    checkpoint = {"@persistence_version": 1, "start_time_str": "2024-01-01T00:00:00Z", "last_ids": []}
    write_old_database(state, checkpoint)
    if version == 1:  # what the collector wrote between the state store and this schema
        with sqlite3.connect(state / DB_NAME) as db:
            db.execute("ALTER TABLE events ADD COLUMN record_key TEXT")
            db.execute("ALTER TABLE events ADD COLUMN event_time INTEGER")
            db.execute("CREATE TABLE keyed_tables (name TEXT PRIMARY KEY, owner TEXT NOT NULL)")
            db.execute("PRAGMA user_version = 1")
    store = Outbox(state)
    try:
        assert store.checkpoints() == [("7", "fim_incidents", checkpoint)]
        assert [json.loads(e.body)["n"] for e in store.read("file", 10)] == [1, 2]
    finally:
        store.close()
    Outbox(tmp_path / "fresh").close()
    for directory in (state, tmp_path / "fresh"):
        with sqlite3.connect(directory / DB_NAME) as db:
            assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
            assert _columns(db, "events") == {"seq", "tag", "body", "source", "record_key", "event_time"}
            assert _columns(db, "checkpoints") == {"input_id", "service", "data"}
