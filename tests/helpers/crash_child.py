"""A collector process for crash tests: pulls N records page by page into a file sink, and SIGKILLs
itself at the point named on the command line (``before_commit:<page>``, ``after_write:<batch>``, or
``between_stages:<page>``: after a stage wrote keyed-table rows for the page, before the next stage)."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from qualys_collector.engine.cycle import Job, run_cycle
from qualys_collector.engine.outbox import Outbox
from qualys_collector.engine.pipeline import PageWork
from qualys_collector.engine.source import CursorMode, ServiceSpec
from qualys_collector.engine.store import Transaction
from qualys_collector.model import Page, Record, StoredEvent, Window
from qualys_collector.sinks.base import Ack
from qualys_collector.sinks.drain import Drainer
from qualys_collector.sinks.file import FileSink
from qualys_collector.sinks.memory import MemorySink

T0 = datetime(2024, 1, 1, tzinfo=UTC)
N = 50
PAGE = 10


class Source:
    def __init__(self, kill_page: int | None) -> None:
        self.kill_page = kill_page

    def pages(self, window: Window, token: dict[str, Any] | None, extra: dict[str, Any]) -> Iterator[Page]:
        index = int(token["page"]) if token else 0
        while index * PAGE < N:
            if index == self.kill_page:
                os.kill(os.getpid(), signal.SIGKILL)
            records = [
                Record(data={"id": f"r{i}"}, key=f"r{i}", cursor=T0 + timedelta(seconds=i))
                for i in range(index * PAGE, min(N, (index + 1) * PAGE))
            ]
            index += 1
            yield Page(records=records, token={"page": index} if index * PAGE < N else None)


class Remember:
    """A stage that writes one keyed-table row per event."""

    name = "remember"
    tables = ("seen",)

    def run(self, work: PageWork, tx: Transaction) -> None:
        for event in work.events:
            tx.table("seen").put(str(event.key), 1)


class KillOnPage:
    """A later stage that SIGKILLs the process on one page (the rows of the stage before are written)."""

    name = "kill"
    tables: tuple[str, ...] = ()

    def __init__(self, page: int | None) -> None:
        self.page = page
        self.calls = 0

    def run(self, work: PageWork, tx: Transaction) -> None:
        if self.calls == self.page:
            os.kill(os.getpid(), signal.SIGKILL)
        self.calls += 1


def killing_after_write(file_sink: FileSink, kill_batch: int | None) -> Callable[[Sequence[StoredEvent]], Ack]:
    """Writes each batch through the real file sink, then SIGKILLs the process after batch ``kill_batch``:
    written and fsynced, not acknowledged."""
    batches = [0]

    def handler(batch: Sequence[StoredEvent]) -> Ack:
        ack = file_sink.deliver(batch)
        if batches[0] == kill_batch:
            os.kill(os.getpid(), signal.SIGKILL)
        batches[0] += 1
        return ack

    return handler


def main() -> None:
    state, out, point = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    kind, _, number = point.partition(":")
    outbox = Outbox(state)
    spec = ServiceSpec("fim_events", "monitor.qualys.fim.event", "processedTime", CursorMode.RECORD, is_sorted=True)
    source = Source(int(number) if kind == "before_commit" else None)
    file_sink = FileSink("file", out)
    sink = MemorySink(
        killing_after_write(file_sink, int(number) if kind == "after_write" else None),
        name="file",
        confirmation=file_sink.confirmation,
    )
    outbox.register_outputs(["file"])
    drainer = Drainer(outbox, sink, batch_size=PAGE)
    drainer.run(threading.Event(), until_empty=True)  # pending first, as on every start
    job = Job(
        input_name="qualys_fim",
        input_id="1",
        spec=spec,
        source=source,
        tag=spec.default_tag,
        start_time=T0,
        enrich=(Remember(),),
        change_filter=(KillOnPage(int(number) if kind == "between_stages" else None),),
    )
    run_cycle(job, outbox, clock=lambda: T0 + timedelta(hours=1))
    drainer.run(threading.Event(), until_empty=True)
    file_sink.close()
    outbox.close()


if __name__ == "__main__":
    main()
