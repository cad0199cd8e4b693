"""The real collector on a configuration file, SIGKILLed right after the N-th page of host_list_detection
was committed (``python batch_crash_child.py CONFIG N``): a crash in the middle of a batched pull."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from qualys_collector.app import Collector
from qualys_collector.config import load_config
from qualys_collector.engine.cycle import CycleStats, Job
from qualys_collector.observability.observer import Observer


def main() -> None:
    config, kill_after = load_config(Path(sys.argv[1])), int(sys.argv[2])

    class Killer(Observer):
        def page(self, job: Job, stats: CycleStats) -> None:
            if job.spec.name == "host_list_detection" and stats.pages == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)

    collector = Collector(config, observer=Killer())
    collector.run_once()
    raise SystemExit("the pull ended before the kill point")


if __name__ == "__main__":
    main()
