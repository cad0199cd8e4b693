"""The state store: one SQLite database with the outbox's events, the checkpoints and named keyed tables,
written through a unit of work.

``with store.transaction(input_id) as tx:`` collects a page's events, its checkpoint and its keyed-table
writes, and commits them together or not at all. Keyed tables (``tx.table("fim_incident_ids")``: get,
put, delete, iterate by key) are declared up front with :meth:`StateStore.declare`, so their schema is
created once; each row belongs to a scope (the input id), so two subscriptions never share rows.
Reading a table outside a transaction (:meth:`StateStore.table`) sees what was committed.

The schema version is SQLite's ``user_version``; a database written by an older collector is upgraded in
place when opened (``ALTER TABLE``), one written by a newer one is refused. Only this package touches
SQLite.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from qualys_collector.errors import StateError
from qualys_collector.model import JSON, Event, epoch_ms

DB_NAME = "qualys-collector.sqlite3"
LOCK_NAME = "qualys-collector.lock"
#: SQLite page size of a new state database. Outbox rows of ~1.4 KB (a host detection) fit two to a default 4 KiB
#: page, so inserting and deleting them split and merge B-tree pages all the time: 16 KiB pages took the outbox's
#: insert + read + delete from ~19 to ~10 µs of CPU per event (measured, 60k events of 1.4 KB, WAL, synchronous
#: FULL). A database created by an older collector keeps its page size (WAL cannot change it in place).
PAGE_SIZE = 16384
#: SQLite's primary result codes for a damaged file (``sqlite_errorcode & 0xFF``).
_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26


def corrupt_fix(path: Path) -> str:
    """What to do with a damaged state database, and what each choice loses."""
    return (
        f"restore {path.name} from a backup taken while the collector was stopped; or move it aside "
        f"(mv {path} {path}.corrupt) and start again: the events still in its outbox (not yet delivered) "
        "are lost with it, and every service pulls again from its start_time_utc (delivered again)"
    )


class StateLock:
    """An exclusive ``flock`` on ``<state>/qualys-collector.lock`` holding the owner's PID, for as long as a
    collector runs: a second collector on the same state directory would deliver everything twice."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_NAME
        try:
            state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StateError(
                f"cannot open the state database lock file {self.path}: {exc}",
                code=500,
                fix="make the state directory writable by this user and check the disk has free space",
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise StateError(
                f"the state directory {state_dir} is in use by another collector (PID {holder})",
                code=503,
                fix="stop that collector first, or give this one its own state directory (globals.persistence or "
                "--state-dir): two collectors on one state directory deliver every event twice",
            ) from exc
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd: int | None = fd

    def release(self) -> None:
        """Let another collector use the state directory."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def classify(exc: sqlite3.Error, path: Path, doing: str) -> StateError:
    """A SQLite failure as the numbered StateError that says the right fix (corrupt file or unwritable disk)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
        message = f"the state database {path} is corrupt ({exc}; seen on {doing})"
        return StateError(message, code=501, fix=corrupt_fix(path))
    return StateError(
        f"state database {path} rejected {doing}: {exc}",
        code=500,
        fix="check free disk space and that the state directory is writable; nothing was lost",
    )


def _loads(text: str, path: Path, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise StateError(
            f"{what} in the state database {path} is not readable JSON ({exc}; starts {text[:40]!r})",
            code=502,
            fix=f"restore {path.name} from a backup, or forget that row with `qualys-collector state reset` "
            "(for a checkpoint: that service pulls again from its start_time_utc)",
        ) from exc


#: 0: the seed layout (events without key/time, no keyed tables); 1: record key + event time, keyed tables;
#: 2: without the columns nothing read (``events.created``, ``checkpoints.updated``).
SCHEMA_VERSION = 2
#: Columns of older schemas that nothing reads, dropped on upgrade.
_DROPPED = (("events", "created"), ("checkpoints", "updated"))

_BASE = (
    "CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY AUTOINCREMENT, tag TEXT NOT NULL, body TEXT NOT NULL,"
    " source TEXT NOT NULL, record_key TEXT, event_time INTEGER)",
    "CREATE TABLE IF NOT EXISTS checkpoints (input_id TEXT NOT NULL, service TEXT NOT NULL, data TEXT NOT NULL,"
    " PRIMARY KEY (input_id, service))",
    "CREATE TABLE IF NOT EXISTS positions (output TEXT PRIMARY KEY, seq INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS keyed_tables (name TEXT PRIMARY KEY, owner TEXT NOT NULL)",
)
_TABLE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


def _physical(name: str) -> str:
    return f"kt_{name}"


class TableView:
    """Read access to one keyed table within one scope."""

    def __init__(self, conn: Callable[[], sqlite3.Connection], name: str, scope: str) -> None:
        self._conn = conn
        self.name = name
        self.scope = scope
        self._table = _physical(name)

    def get(self, key: str) -> Any | None:
        """The value stored under ``key``, or ``None``."""
        row = (
            self._conn()
            .execute(f"SELECT value FROM {self._table} WHERE scope = ? AND key = ?", (self.scope, key))  # noqa: S608
            .fetchone()
        )
        return None if row is None else _loads(row[0], Path(DB_NAME), f"row {key!r} of keyed table {self.name!r}")

    def keys_at(self, stamp: int) -> list[str]:
        """Every key whose stamp is exactly ``stamp`` (through the table's stamp index)."""
        rows = (
            self._conn()
            .execute(f"SELECT key FROM {self._table} WHERE scope = ? AND stamp = ?", (self.scope, stamp))  # noqa: S608
            .fetchall()
        )
        return [str(row[0]) for row in rows]

    def with_prefix(self, prefix: str) -> list[tuple[str, Any]]:
        """Every ``(key, value)`` whose key starts with ``prefix`` (a range of the primary key, not a scan)."""
        rows = (
            self._conn()
            .execute(
                f"SELECT key, value FROM {self._table} WHERE scope = ? AND key >= ? AND key < ? ORDER BY key",  # noqa: S608
                (self.scope, prefix, prefix + "\U0010ffff"),
            )
            .fetchall()
        )
        return [(key, _loads(value, Path(DB_NAME), f"row {key!r} of keyed table {self.name!r}")) for key, value in rows]

    def stamped_below(self, below: int, limit: int) -> list[tuple[str, Any]]:
        """At most ``limit`` ``(key, value)`` rows whose stamp is below ``below`` (through the stamp index)."""
        rows = (
            self._conn()
            .execute(
                f"SELECT key, value FROM {self._table} WHERE scope = ? AND stamp < ? ORDER BY stamp, key LIMIT ?",  # noqa: S608
                (self.scope, below, limit),
            )
            .fetchall()
        )
        return [(key, _loads(value, Path(DB_NAME), f"row {key!r} of keyed table {self.name!r}")) for key, value in rows]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None

    def items(self) -> Iterator[tuple[str, Any]]:
        """Every ``(key, value)`` in key order, read in slices (memory stays flat on a large table)."""
        after = ""
        while True:
            rows = (
                self._conn()
                .execute(
                    f"SELECT key, value FROM {self._table} WHERE scope = ? AND key > ? ORDER BY key LIMIT 1000",  # noqa: S608
                    (self.scope, after),
                )
                .fetchall()
            )
            if not rows:
                return
            for key, value in rows:
                yield key, _loads(value, Path(DB_NAME), f"row {key!r} of keyed table {self.name!r}")
            after = rows[-1][0]

    def __len__(self) -> int:
        row = (
            self._conn()
            .execute(f"SELECT COUNT(*) FROM {self._table} WHERE scope = ?", (self.scope,))  # noqa: S608
            .fetchone()
        )
        return int(row[0])


class KeyedTable(TableView):
    """A keyed table inside a transaction: reads see the transaction's own writes."""

    def put(self, key: str, value: Any, *, stamp: int | None = None) -> None:
        """Store ``value`` (JSON) under ``key``; ``stamp`` is an optional integer :meth:`prune` compares."""
        self._conn().execute(
            f"INSERT INTO {self._table} (scope, key, value, stamp) VALUES (?, ?, ?, ?) "  # noqa: S608
            "ON CONFLICT(scope, key) DO UPDATE SET value = excluded.value, stamp = excluded.stamp",
            (self.scope, key, json.dumps(value, sort_keys=True, separators=(",", ":")), stamp),
        )

    def put_many(self, keys: Sequence[str], value: Any, *, stamp: int | None = None) -> None:
        """:meth:`put` of one ``value`` under each of ``keys`` (one statement for them all)."""
        text = json.dumps(value, sort_keys=True, separators=(",", ":"))
        self._conn().executemany(
            f"INSERT INTO {self._table} (scope, key, value, stamp) VALUES (?, ?, ?, ?) "  # noqa: S608
            "ON CONFLICT(scope, key) DO UPDATE SET value = excluded.value, stamp = excluded.stamp",
            [(self.scope, key, text, stamp) for key in keys],
        )

    def delete(self, key: str) -> bool:
        """Remove ``key``; whether it was there."""
        cur = self._conn().execute(
            f"DELETE FROM {self._table} WHERE scope = ? AND key = ?",  # noqa: S608
            (self.scope, key),
        )
        return cur.rowcount > 0

    def prune(self, below: int) -> int:
        """Remove the rows whose stamp is below ``below``; how many."""
        cur = self._conn().execute(
            f"DELETE FROM {self._table} WHERE scope = ? AND stamp < ?",  # noqa: S608
            (self.scope, below),
        )
        return cur.rowcount

    def clear(self) -> None:
        """Remove every row of this scope."""
        self._conn().execute(f"DELETE FROM {self._table} WHERE scope = ?", (self.scope,))  # noqa: S608


class Transaction:
    """One unit of work: events, checkpoints and keyed-table writes that commit together.

    Events are serialised when added and inserted at commit, so a transaction that only carries events
    and a checkpoint holds SQLite's write lock for the inserts alone; the first keyed-table access takes
    the lock (reads must see the transaction's own writes).
    """

    def __init__(self, store: StateStore, conn: sqlite3.Connection, scope: str) -> None:
        self._store = store
        self._db = conn
        self.scope = scope
        self._begun = False
        self._rows: list[tuple[str, str, str, str | None, int | None]] = []
        self._checkpoints: dict[str, str] = {}

    def _conn(self) -> sqlite3.Connection:
        if not self._begun:
            self._db.execute("BEGIN IMMEDIATE")
            self._begun = True
        return self._db

    def add_events(self, service: str, events: Sequence[Event]) -> None:
        """Queue ``events`` of ``service`` for the outbox (serialised now, inserted at commit)."""
        source = f"{self.scope}/{service}"
        self._rows += [
            (e.tag, e.to_json(), source, e.key, None if e.time is None else epoch_ms(e.time)) for e in events
        ]

    def save_checkpoint(self, service: str, checkpoint: JSON) -> None:
        """Store ``service``'s checkpoint (the last one saved in the transaction wins)."""
        self._checkpoints[service] = json.dumps(checkpoint, sort_keys=True)

    def table(self, name: str) -> KeyedTable:
        """The declared keyed table ``name`` in this transaction's scope."""
        self._store.require(name)
        return KeyedTable(self._conn, name, self.scope)

    def committed(self, name: str) -> TableView:
        """Read keyed table ``name`` without taking the write lock (a stage that calls out before it writes
        holds nobody up): what is committed, plus this transaction's writes once it has begun."""
        self._store.require(name)
        return TableView(lambda: self._db, name, self.scope)

    def _commit(self) -> None:
        conn = self._conn()
        if self._rows:
            conn.executemany(
                "INSERT INTO events (tag, body, source, record_key, event_time) VALUES (?, ?, ?, ?, ?)",
                self._rows,
            )
        for service, data in self._checkpoints.items():
            conn.execute(
                "INSERT INTO checkpoints (input_id, service, data) VALUES (?, ?, ?) "
                "ON CONFLICT(input_id, service) DO UPDATE SET data = excluded.data",
                (self.scope, service, data),
            )
        conn.execute("COMMIT")

    def _rollback(self) -> None:
        if self._begun:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")


class StateStore:
    """The state database. Safe to share between threads (one connection per thread)."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.path = state_dir / DB_NAME
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        #: Declared keyed tables and the service that owns each (whose reset clears it).
        self._declared: dict[str, str] = {}
        try:
            state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not self.path.exists():  # a first run: built beside, then moved into place whole
                self._create()
            self._check()
            with self._transaction() as conn:
                _upgrade(conn, self.path)
            rows = self._conn().execute("SELECT name, owner FROM keyed_tables").fetchall()
            self._declared = {str(r[0]): str(r[1]) for r in rows}
        except StateError:
            self.close()
            raise
        except sqlite3.Error as exc:
            self.close()
            raise classify(exc, self.path, "the open") from exc
        except OSError as exc:
            self.close()
            raise StateError(
                f"cannot open the state database {self.path}: {exc}",
                code=500,
                fix="make the state directory writable by this user and check the disk has free space",
            ) from exc

    def _create(self) -> None:
        """A new database with the current schema, created under a temporary name and renamed into place,
        so a crash during the first start never leaves an empty file behind."""
        fresh = self.path.with_name(f"{DB_NAME}.new")
        for leftover in (fresh, fresh.with_name(f"{fresh.name}-wal"), fresh.with_name(f"{fresh.name}-shm")):
            leftover.unlink(missing_ok=True)
        os.close(os.open(fresh, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600))
        conn = sqlite3.connect(fresh, isolation_level=None)
        try:
            conn.execute(f"PRAGMA page_size={PAGE_SIZE}")  # before anything is written: fixed from then on
            # The schema is committed with a rollback journal, so it is in the file itself once COMMIT returns (a
            # full disk fails right here); committed in WAL mode it sat in the -wal file until the close's
            # checkpoint, which a full disk let fail silently: the file renamed into place was empty (error 501 on
            # every later start; test_disk found it once 16 KiB pages made the schema outgrow its tmpfs).
            conn.execute("BEGIN IMMEDIATE")
            _upgrade(conn, fresh)
            conn.execute("COMMIT")
            conn.execute("PRAGMA journal_mode=WAL")
        finally:
            conn.close()
        os.replace(fresh, self.path)
        directory = os.open(self.state_dir, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def _check(self) -> None:
        """An empty file, or ``PRAGMA quick_check`` failing (every page is read once): refused before any use."""
        if self.path.stat().st_size == 0:
            raise StateError(
                f"the state database {self.path} is empty (0 bytes): it was truncated or replaced, so its "
                "checkpoints and undelivered events are gone; the collector will not start over silently",
                code=501,
                fix=corrupt_fix(self.path),
            )
        rows = self._conn().execute("PRAGMA quick_check").fetchall()
        problems = [str(r[0]) for r in rows if str(r[0]) != "ok"]
        if problems:
            raise StateError(
                f"the state database {self.path} is corrupt: {'; '.join(problems[:3])}",
                code=501,
                fix=corrupt_fix(self.path),
            )

    # ------------------------------------------------------------------ connections and transactions

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield conn
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise self._rejected(exc) from exc
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise

    def _rejected(self, exc: sqlite3.Error) -> StateError:
        return classify(exc, self.path, "a write")

    @contextlib.contextmanager
    def transaction(self, scope: str) -> Iterator[Transaction]:
        """A unit of work in ``scope`` (the input id): everything done through it commits on a clean exit
        and is rolled back on any exception."""
        tx = Transaction(self, self._conn(), scope)
        try:
            yield tx
            tx._commit()
        except sqlite3.Error as exc:
            tx._rollback()
            raise self._rejected(exc) from exc
        except BaseException:
            tx._rollback()
            raise

    def close(self) -> None:
        """Close every connection opened by any thread."""
        with self._lock:
            for conn in self._connections:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            self._connections.clear()
        self._local = threading.local()

    # ------------------------------------------------------------------ keyed tables

    def declare(self, name: str, owner: str) -> None:
        """Create keyed table ``name`` once (idempotent); ``owner`` is the service whose reset clears it (a table
        declared again with another owner changes hands: a stage may declare another service's table)."""
        if self._declared.get(name) == owner:
            return
        if not _TABLE_NAME.match(name):
            raise StateError(
                f"keyed table name {name!r} is not lowercase letters, digits and _", code=505, fix="rename it"
            )
        table = _physical(name)
        with self._transaction() as conn:
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {table} (scope TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,"
                " stamp INTEGER, PRIMARY KEY (scope, key)) WITHOUT ROWID"
            )
            conn.execute(f"CREATE INDEX IF NOT EXISTS {table}_stamp ON {table} (scope, stamp)")
            conn.execute(
                "INSERT INTO keyed_tables (name, owner) VALUES (?, ?)"
                " ON CONFLICT(name) DO UPDATE SET owner = excluded.owner",
                (name, owner),
            )
        self._declared[name] = owner

    def require(self, name: str) -> None:
        """Raise unless keyed table ``name`` was declared."""
        if name not in self._declared:
            raise StateError(
                f"keyed table {name!r} was used without being declared",
                code=505,
                fix="this is a bug: the service or stage must list it in its tables",
            )

    def table(self, scope: str, name: str) -> TableView:
        """Read-only view of a declared keyed table, outside any transaction (sees committed rows)."""
        self.require(name)
        return TableView(self._conn, name, scope)

    # ------------------------------------------------------------------ checkpoints

    def load_checkpoint(self, input_id: str, service: str) -> JSON | None:
        """The stored checkpoint of a service, or ``None``."""
        try:
            row = (
                self._conn()
                .execute("SELECT data FROM checkpoints WHERE input_id = ? AND service = ?", (input_id, service))
                .fetchone()
            )
        except sqlite3.Error as exc:
            raise classify(exc, self.path, f"a read of the checkpoint of {input_id}/{service}") from exc
        return None if row is None else self._checkpoint(input_id, service, row[0])

    def _checkpoint(self, input_id: str, service: str, text: str) -> JSON:
        data = _loads(text, self.path, f"the checkpoint of {input_id}/{service}")
        if not isinstance(data, dict):
            raise StateError(
                f"the checkpoint of {input_id}/{service} in the state database {self.path} is not an object",
                code=502,
                fix=f"restore {self.path.name} from a backup, or `qualys-collector state reset --service {service}` "
                "(that service pulls again from its start_time_utc)",
            )
        return data

    def checkpoints(self) -> list[tuple[str, str, JSON]]:
        """Every stored checkpoint: (input id, service, data); 502 if one is unreadable."""
        try:
            rows = (
                self._conn()
                .execute("SELECT input_id, service, data FROM checkpoints ORDER BY input_id, service")
                .fetchall()
            )
        except sqlite3.Error as exc:
            raise classify(exc, self.path, "a read of the checkpoints") from exc
        return [(r[0], r[1], self._checkpoint(r[0], r[1], r[2])) for r in rows]

    def commit(self, input_id: str, service: str, events: Sequence[Event], checkpoint: JSON) -> None:
        """Insert ``events`` and store ``checkpoint`` in one transaction."""
        with self.transaction(input_id) as tx:
            tx.add_events(service, events)
            tx.save_checkpoint(service, checkpoint)

    def reset_checkpoint(self, input_id: str, service: str) -> bool:
        """Forget a service's checkpoint and the rows of the keyed tables it owns. Returns whether a
        checkpoint existed."""
        with self._transaction() as conn:
            owned = conn.execute("SELECT name FROM keyed_tables WHERE owner = ?", (service,)).fetchall()
            for (name,) in owned:
                conn.execute(f"DELETE FROM {_physical(name)} WHERE scope = ?", (input_id,))  # noqa: S608
            cur = conn.execute("DELETE FROM checkpoints WHERE input_id = ? AND service = ?", (input_id, service))
            return cur.rowcount > 0


def _upgrade(conn: sqlite3.Connection, path: Path) -> None:
    """Bring the schema to :data:`SCHEMA_VERSION` inside the caller's write transaction."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise StateError(
            f"the state database {path} has schema version {version}; this collector knows up to {SCHEMA_VERSION}",
            code=504,
            fix="run the qualys-collector version that wrote it, or point --state-dir at another directory",
        )
    if version == SCHEMA_VERSION:
        return
    for statement in _BASE:
        conn.execute(statement)
    columns = {row[1] for row in conn.execute("PRAGMA table_info(events)").fetchall()}
    if "record_key" not in columns:  # written by a version-0 collector
        conn.execute("ALTER TABLE events ADD COLUMN record_key TEXT")
    if "event_time" not in columns:
        conn.execute("ALTER TABLE events ADD COLUMN event_time INTEGER")
    for table, column in _DROPPED:  # written by a version-0 or version-1 collector
        if column in {row[1] for row in conn.execute(f"PRAGMA table_info({table})").fetchall()}:
            conn.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
