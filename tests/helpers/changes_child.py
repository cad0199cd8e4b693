"""A collector process for the kill -9 test of ``emit: changes``: the real collector, built from a config file,
on the simulator's clock; it pulls one cycle, then moves the simulator's clock on by ``step`` hours, until the
simulator's clock reaches ``end`` (that last window pulled too). The test SIGKILLs it at random moments and
starts it again.

python -m tests.helpers.changes_child CONFIG URL END_ISO STEP_HOURS
"""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

import httpx

from qualys_collector.app import Collector
from qualys_collector.config import load_config


def main() -> None:
    config_path, url, end_text, step = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    end = datetime.fromisoformat(end_text)

    def sim_now() -> datetime:
        now = httpx.get(f"{url}/__sim/stats", timeout=30).json()["now"]
        return datetime.fromisoformat(now.replace("Z", "+00:00"))

    config = load_config(Path(config_path))
    while True:
        collector = Collector(config, clock=sim_now)
        try:
            if not collector.run_once():
                sys.exit(1)
        finally:
            collector.close()
        if sim_now() >= end:  # the window that ends at `end` is pulled and delivered
            return
        httpx.post(f"{url}/__sim/clock", json={"advance": step * 3600}, timeout=30).raise_for_status()


if __name__ == "__main__":
    main()
