"""The outbox: events and checkpoints in one SQLite database in the state directory.

A page's events and the checkpoint that follows them are committed in one transaction, so a crash
either keeps both or neither. Each configured output has its own position; a row is deleted once every
output has acknowledged it. Nothing is deleted on a failure path.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from qualys_collector.errors import StateError
from qualys_collector.model import JSON, Event, StoredEvent

logger = logging.getLogger(__name__)

DB_NAME = "qualys-collector.sqlite3"

_SCHEMA = """
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


class Outbox:
    """SQLite-backed outbox. Safe to share between threads (one connection per thread)."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.path = state_dir / DB_NAME
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        try:
            state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not self.path.exists():
                fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
                os.close(fd)
            conn = self._conn()
            conn.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StateError(
                f"cannot open the state database {self.path}: {exc}",
                fix="make the state directory writable by this user and check the disk has free space",
            ) from exc

    # ------------------------------------------------------------------ connection handling

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
            raise StateError(
                f"state database {self.path} rejected a write: {exc}",
                fix="check free disk space and that the state directory is writable; nothing was lost",
            ) from exc
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        """Close every connection opened by any thread."""
        with self._lock:
            for conn in self._connections:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            self._connections.clear()
        self._local = threading.local()

    # ------------------------------------------------------------------ checkpoints

    def load_checkpoint(self, input_id: str, service: str) -> JSON | None:
        """The stored checkpoint of a service, or ``None``."""
        row = (
            self._conn()
            .execute("SELECT data FROM checkpoints WHERE input_id = ? AND service = ?", (input_id, service))
            .fetchone()
        )
        return None if row is None else dict(json.loads(row[0]))

    def checkpoints(self) -> list[tuple[str, str, JSON, float]]:
        """Every stored checkpoint: (input id, service, data, updated epoch seconds)."""
        rows = (
            self._conn()
            .execute("SELECT input_id, service, data, updated FROM checkpoints ORDER BY input_id, service")
            .fetchall()
        )
        return [(r[0], r[1], dict(json.loads(r[2])), float(r[3])) for r in rows]

    def commit(self, input_id: str, service: str, events: Sequence[Event], checkpoint: JSON) -> None:
        """Insert ``events`` and store ``checkpoint`` in one transaction."""
        now = time.time()
        source = f"{input_id}/{service}"
        rows = [(e.tag, e.to_json(), source, now) for e in events]  # serialised before the write lock is taken
        state = json.dumps(checkpoint, sort_keys=True)
        with self._transaction() as conn:
            if rows:
                conn.executemany("INSERT INTO events (tag, body, source, created) VALUES (?, ?, ?, ?)", rows)
            conn.execute(
                "INSERT INTO checkpoints (input_id, service, data, updated) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(input_id, service) DO UPDATE SET data = excluded.data, updated = excluded.updated",
                (input_id, service, state, now),
            )

    def reset_checkpoint(self, input_id: str, service: str) -> bool:
        """Forget a service's checkpoint. Returns whether one existed."""
        with self._transaction() as conn:
            cur = conn.execute("DELETE FROM checkpoints WHERE input_id = ? AND service = ?", (input_id, service))
            return cur.rowcount > 0

    # ------------------------------------------------------------------ delivery side

    def register_outputs(self, names: Sequence[str]) -> None:
        """Make sure each output has a position; forget outputs no longer configured."""
        with self._transaction() as conn:
            first = conn.execute("SELECT COALESCE(MIN(seq), 1) FROM events").fetchone()[0]
            for name in names:
                conn.execute("INSERT OR IGNORE INTO positions (output, seq) VALUES (?, ?)", (name, int(first) - 1))
            placeholders = ",".join("?" for _ in names) or "''"
            gone = conn.execute(
                f"SELECT output FROM positions WHERE output NOT IN ({placeholders})",  # noqa: S608
                tuple(names),
            ).fetchall()
            for (name,) in gone:
                logger.warning("Output %s is no longer configured; its outbox position was dropped", name)
                conn.execute("DELETE FROM positions WHERE output = ?", (name,))
            self._purge(conn)

    def read(self, output: str, limit: int) -> list[StoredEvent]:
        """Up to ``limit`` events not yet acknowledged by ``output``, oldest first."""
        conn = self._conn()
        pos = conn.execute("SELECT seq FROM positions WHERE output = ?", (output,)).fetchone()
        if pos is None:
            raise StateError(f"output {output!r} has no outbox position", fix="this is a bug; please report it")
        rows = conn.execute(
            "SELECT seq, tag, body FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (pos[0], limit)
        ).fetchall()
        return [StoredEvent(seq=r[0], tag=r[1], body=r[2]) for r in rows]

    def ack(self, output: str, upto_seq: int) -> None:
        """Record that ``output`` delivered everything up to ``upto_seq``; delete rows all outputs have."""
        with self._transaction() as conn:
            conn.execute("UPDATE positions SET seq = MAX(seq, ?) WHERE output = ?", (upto_seq, output))
            self._purge(conn)

    @staticmethod
    def _purge(conn: sqlite3.Connection) -> None:
        low = conn.execute("SELECT MIN(seq) FROM positions").fetchone()[0]
        if low is not None:
            conn.execute("DELETE FROM events WHERE seq <= ?", (low,))

    def pending(self, output: str | None = None) -> int:
        """Events not yet acknowledged (by ``output``, or by the slowest output)."""
        conn = self._conn()
        if output is None:
            row = conn.execute("SELECT COUNT(*) FROM events").fetchone()
        else:
            row = conn.execute(
                "SELECT COUNT(*) FROM events WHERE seq > (SELECT seq FROM positions WHERE output = ?)", (output,)
            ).fetchone()
        return int(row[0])

    def size_bytes(self) -> int:
        """Bytes used by live pages of the database (what back-pressure compares with its limit)."""
        conn = self._conn()
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        return int(page_size) * (int(pages) - int(free))
