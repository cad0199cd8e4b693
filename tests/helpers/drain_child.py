"""A delivery process for the kill test: drains the outbox in ``argv[1]`` to the relay on port ``argv[2]``."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from qualys_collector.engine.outbox import Outbox
from qualys_collector.sinks.devo import DevoSink
from qualys_collector.sinks.drain import Drainer


def main() -> None:
    state, port, certs = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    outbox = Outbox(state)
    outbox.register_outputs(["devo"])
    sink = DevoSink(
        "devo",
        "127.0.0.1",
        port,
        chain=certs / "chain.crt",
        cert=certs / "client.crt",
        key=certs / "client.key",
        timeout=10.0,
    )
    Drainer(outbox, sink, batch_size=1000).run(threading.Event(), until_empty=True)
    outbox.close()


if __name__ == "__main__":
    main()
