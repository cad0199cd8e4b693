"""A delivery process for the file output's kill test: drains the outbox in ``argv[1]`` into the file
``argv[2]`` through the real file sink, ``argv[3]`` events per batch."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from qualys_collector.engine.outbox import Outbox
from qualys_collector.sinks.drain import Drainer
from qualys_collector.sinks.file import FileSink


def main() -> None:
    state, out, batch = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    outbox = Outbox(state)
    outbox.register_outputs(["file"])
    sink = FileSink("file", out)
    Drainer(outbox, sink, batch_size=batch).run(threading.Event(), until_empty=True)
    sink.close()
    outbox.close()


if __name__ == "__main__":
    main()
