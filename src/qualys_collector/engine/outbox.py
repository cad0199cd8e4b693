"""The outbox: the delivery side of the state store (:mod:`qualys_collector.engine.store`).

A page's events and the checkpoint that follows them are committed in one transaction of the store,
so a crash either keeps both or neither. Each configured output has its own position; a row is deleted
once every output has acknowledged it. Nothing is deleted on a failure path.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence

from qualys_collector.engine.store import DB_NAME, StateStore
from qualys_collector.errors import StateError
from qualys_collector.model import StoredEvent

logger = logging.getLogger(__name__)

__all__ = ["DB_NAME", "Outbox"]


class Outbox(StateStore):
    """The state store with the outputs' positions. Safe to share between threads."""

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

    def read(self, output: str, limit: int, max_bytes: int | None = None) -> list[StoredEvent]:
        """Up to ``limit`` events not yet acknowledged by ``output``, oldest first.

        With ``max_bytes``, the batch also ends before the first event that would take its bodies (UTF-8) past
        that many bytes; it always holds at least one event (which may alone be larger). Rows are read one at a
        time, so only the batch (and the one row that ended it) is in memory.
        """
        conn = self._conn()
        pos = conn.execute("SELECT seq FROM positions WHERE output = ?", (output,)).fetchone()
        if pos is None:
            raise StateError(
                f"output {output!r} has no outbox position", code=505, fix="this is a bug; please report it"
            )
        rows = conn.execute(
            "SELECT seq, tag, body, LENGTH(CAST(body AS BLOB)) FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
            (pos[0], limit),
        )
        batch: list[StoredEvent] = []
        size = 0
        for seq, tag, body, length in rows:
            if batch and max_bytes is not None and size + int(length) > max_bytes:
                break
            batch.append(StoredEvent(seq=seq, tag=tag, body=body))
            size += int(length)
        rows.close()
        return batch

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

    def pending_from(self, scope: str, service: str) -> int:
        """Events of one service in one state scope still in the outbox (not yet delivered to every output)."""
        row = self._conn().execute("SELECT COUNT(*) FROM events WHERE source = ?", (f"{scope}/{service}",)).fetchone()
        return int(row[0])

    def size_bytes(self) -> int:
        """Bytes used by live pages of the database (what back-pressure compares with its limit)."""
        conn = self._conn()
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        return int(page_size) * (int(pages) - int(free))
