"""The KB cache's disk cost per QID: briefs of the simulator's KnowledgeBase committed into a state database.

    python bench/kb_cache.py            # 20,000 QIDs

Each brief is what :func:`~qualys_collector.qualys.kb.brief` keeps of a VULN the simulator serves (its shapes:
CVSS v3/v2, CVE lists, solutions from a sentence to several KiB). The figure is the database's growth
(after a WAL checkpoint) divided by the QIDs, so it includes SQLite's index and page overhead.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from qualys_collector.engine.store import DB_NAME, StateStore
from qualys_collector.qualys import kb
from qualys_collector.qualys.xml import ByteStream, element_to_value, iter_elements
from qualys_collector.simulator.data import Dataset, SimConfig
from qualys_collector.simulator.vm import kb_list


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qids", type=int, default=20_000)
    args = parser.parse_args()
    now = datetime(2026, 6, 1, tzinfo=UTC)
    # 30 QIDs per detection slot: enough slots for the QIDs asked for
    data = Dataset(SimConfig(detections_per_host=args.qids // 30 + 1, base=now))
    answer = "".join(kb_list(data, now, {"action": "list", "details": "All"})).encode()
    vulns = [kb.normalise(element_to_value(e)) for _t, e in iter_elements(ByteStream([answer]), {"VULN"})]
    briefs = [(str(v["QID"]), kb.brief(v)) for v in vulns[: args.qids]]
    with tempfile.TemporaryDirectory() as tmp:
        store = StateStore(Path(tmp))
        store.declare("kb_cache", "knowledge_base")
        path = Path(tmp) / DB_NAME

        def size() -> int:
            with sqlite3.connect(path) as conn:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            return path.stat().st_size

        before = size()
        for start in range(0, len(briefs), 500):
            with store.transaction("1") as tx:
                table = tx.table("kb_cache")
                for qid, brief in briefs[start : start + 500]:
                    table.put(qid, brief)
        grown = size() - before
        store.close()
    text = sum(len(json.dumps(b)) for _q, b in briefs) / len(briefs)
    print(f"{len(briefs):,} QIDs: database +{grown / 2**20:.1f} MiB = {grown / len(briefs):,.0f} bytes per QID")
    print(f"(brief JSON ~{text:,.0f} bytes on average; 512 solution characters and 200 CVE ids bound one to ~4.5 KiB)")
    print(f"kb_cache_bytes_per_qid={grown / len(briefs):.0f}")


if __name__ == "__main__":
    main()
