"""Pages and delivery batches are bounded by bytes as well as by counts (issue 16 item 12): the logic, on real
parsers and a real SQLite outbox. The memory itself is measured by ``bench/memory.py``."""

from __future__ import annotations

import io
from pathlib import Path

from qualys_collector.engine.outbox import Outbox
from qualys_collector.model import Event
from qualys_collector.observability.heap import return_large_blocks
from qualys_collector.qualys.detections import converter
from qualys_collector.qualys.vm_hosts import answer_items
from qualys_collector.qualys.xml import ByteStream
from qualys_collector.sinks.drain import Drainer
from qualys_collector.sinks.memory import MemorySink


def _answer(hosts: int, results: int) -> bytes:
    body = "".join(
        f"<HOST><ID>{100 + n}</ID><DETECTION_LIST><DETECTION><UNIQUE_VULN_ID>{n}</UNIQUE_VULN_ID><QID>1</QID>"
        f"<RESULTS><![CDATA[{'r' * results}]]></RESULTS></DETECTION></DETECTION_LIST></HOST>"
        for n in range(hosts)
    )
    return (
        "<?xml version='1.0' encoding='UTF-8'?><HOST_LIST_VM_DETECTION_OUTPUT><RESPONSE>"
        f"<DATETIME>2026-01-01T00:00:00Z</DATETIME><HOST_LIST>{body}</HOST_LIST></RESPONSE>"
        "</HOST_LIST_VM_DETECTION_OUTPUT>"
    ).encode()


def _pages(items: list[tuple[str, object]]) -> list[int]:
    """The number of records between page boundaries (the last, open page included)."""
    sizes, count = [], 0
    for kind, _value in items:
        if kind == "r":
            count += 1
        elif kind == "p":
            sizes.append(count)
            count = 0
    return [*sizes, count]


def _chunks(data: bytes, size: int = 65536) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def test_a_page_ends_after_the_host_that_crosses_the_byte_bound() -> None:
    data = _answer(hosts=12, results=300_000)  # 12 hosts of ~300 KB
    items = list(answer_items(ByteStream(_chunks(data)), converter(None), 200, 1_000_000))
    pages = _pages(items)
    assert sum(pages) == 12
    assert max(pages) <= 4  # ~1 MB of answer per page (the parser reads ahead a little), never 12 hosts at once
    assert len(pages) >= 3
    boundaries = [value for kind, value in items if kind == "p"]
    assert boundaries == sorted(boundaries)  # each boundary is a host ID to resume after


def test_the_parsing_process_path_bounds_pages_by_the_file_offset() -> None:
    data = _answer(hosts=12, results=300_000)
    pages = _pages(list(answer_items(io.BytesIO(data), converter(None), 200, 1_000_000)))
    assert sum(pages) == 12
    assert max(pages) <= 4


def test_by_default_a_page_holds_about_2_mib_of_answer() -> None:
    """The default bound (``PAGE_BYTES``): hosts of ~20 KB (ten detections with results of a typical size)
    make pages of about 100 hosts, not 200: several pages are in memory at once, so this is the collector's RSS."""
    data = _answer(hosts=400, results=20_000)
    pages = _pages(list(answer_items(io.BytesIO(data), converter(None))))
    assert sum(pages) == 400
    assert max(pages) <= 2 * 2**20 // 20_000 + 2  # 2 MiB of answer, then the host that crossed it
    assert min(pages[:-1]) >= 2**20 // 20_000  # and not much less: the commits per page stay few


def test_small_hosts_still_page_by_count() -> None:
    data = _answer(hosts=450, results=100)
    pages = _pages(list(answer_items(ByteStream(_chunks(data)), converter(None))))
    assert pages == [200, 200, 50]


def test_an_outbox_batch_is_bounded_by_bytes_and_holds_at_least_one_event(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    try:
        outbox.register_outputs(["out"])
        sizes = [400_000, 400_000, 400_000, 3_000_000, 10, 10, "é" * 499_990]
        events = [Event(tag="a.b", body={"x": "y" * s} if isinstance(s, int) else {"x": s}) for s in sizes]
        outbox.commit("i", "s", events, {"@persistence_version": 1})
        batches = []
        while batch := outbox.read("out", 1000, max_bytes=1_000_000):
            batches.append(len(batch))
            outbox.ack("out", batch[-1].seq)
        # 2 x 400 KB; then 400 KB alone (3 MB would cross); 3 MB alone (larger than the bound, still delivered);
        # the two small ones; then 499,990 two-byte characters, which take them past 1 MB only counted as UTF-8 bytes
        assert batches == [2, 1, 1, 2, 1]
        assert outbox.pending() == 0
    finally:
        outbox.close()


def test_the_drainer_reads_batches_bounded_by_its_byte_bound(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    try:
        sink = MemorySink(name="out")
        outbox.register_outputs(["out"])
        outbox.commit("i", "s", [Event(tag="a.b", body={"x": "y" * 100_000}) for _ in range(30)], {})
        drainer = Drainer(outbox, sink, batch_size=1000, batch_bytes=450_000)
        while drainer.drain_once():
            pass
        assert [len(b) for b in sink.batches] == [4] * 7 + [2]
        assert len(sink.events) == 30
    finally:
        outbox.close()


def test_large_blocks_are_returned_to_the_system_on_glibc() -> None:
    assert return_large_blocks()  # this machine and the image are glibc: the threshold is fixed


def test_a_host_id_that_is_not_ascii_digits_ends_no_page_and_breaks_nothing() -> None:
    """``"²".isdigit()`` is true and ``int("²")`` fails: a host ID like it crashed the page boundary with a
    ValueError (found by review). IDs that are not ASCII digits are not numbers: no page ends after them."""
    body = "".join(
        f"<HOST><ID>{host_id}</ID><DETECTION_LIST><DETECTION><QID>1</QID></DETECTION></DETECTION_LIST></HOST>"
        for host_id in ("1", "\u00b2", "\u0661\u0662", "3")
    )
    data = f"<X><RESPONSE><HOST_LIST>{body}</HOST_LIST></RESPONSE></X>".encode()
    items = list(answer_items(io.BytesIO(data), converter(None), 1))
    assert [value for kind, value in items if kind == "p"] == [1, 3]
    assert sum(kind == "r" for kind, _ in items) == 4


def test_no_page_ends_after_a_host_out_of_id_order() -> None:
    """A page's token resumes after its last host, so once an answer is out of order (a real one is) no page may end:
    a resume from one would skip the lower IDs still to come. The answer is still read whole."""
    body = "".join(
        f"<HOST><ID>{host_id}</ID><DETECTION_LIST><DETECTION><QID>1</QID></DETECTION></DETECTION_LIST></HOST>"
        for host_id in (10, 20, 5, 30, 40)
    )
    data = f"<X><RESPONSE><HOST_LIST>{body}</HOST_LIST></RESPONSE></X>".encode()
    items = list(answer_items(io.BytesIO(data), converter(None), 1))
    assert [value for kind, value in items if kind == "p"] == [10, 20]
    assert sum(kind == "r" for kind, _ in items) == 5
