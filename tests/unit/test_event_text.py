"""Events built from a parsing process's JSON (strings joined, nothing decoded) are byte for byte the events
built from the record's dict, on the real Qualys samples, with every field the pipeline adds."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from qualys_collector.engine.obfuscate import compile_rules
from qualys_collector.engine.pipeline import EventBuilder, FitEvents, PageWork
from qualys_collector.model import Event, Page, Record
from qualys_collector.qualys.detections import QID_HINT, converter
from qualys_collector.qualys.parse_child import parse_answer, read_items
from qualys_collector.qualys.vm_hosts import answer_items
from qualys_collector.services.kb_enrich import NOT_FOUND, PENDING

SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "reference" / "qualys_vm" / "samples"
HLD_SAMPLES = [
    "hld_xml_qds_unique_vuln_id__elastic_stream_mock.xml",
    "hld_xml_two_hosts_eval_account__xsoar_qualysv2_test_data.xml",
    "hld_xml_2014_info_gathered_with_truncation_warning__paulsena_sn_readme.xml",
    "hld_xml_default_statuses__qualys_doc_center_sample1.xml",
    "hld_xml_unique_vuln_id_network__vm_pc_guide_v10_39_transcription.xml",
]
BUILDERS = [
    EventBuilder("vuln.qualys.hostdetections", 1795381718338),
    EventBuilder("vuln.qualys.hostdetections", 1, environment='prod "eu" ü\n', backfill=True),
]
BRIEFS: list[Any] = [
    PENDING,
    NOT_FOUND,
    {"status": "ok", "TITLE": 'Ünïcode <b>\t"quoted"</b>', "CVE_IDS": ["CVE-2024-1"], "PATCHABLE": True},
]


def both_ways(name: str, results_max_length: int | None, tmp_path: Path) -> list[tuple[Record, Record]]:
    """Each record of a sample as the worker threads make it (a dict) and as a parsing process hands it over."""
    document = (SAMPLES / name).read_bytes()
    in_thread = [v for k, v in answer_items(io.BytesIO(document), converter(results_max_length)) if k == "r"]
    source, out = tmp_path / "answer.xml", tmp_path / "items"
    source.write_bytes(document)
    assert parse_answer(str(source), str(out), results_max_length, 200) == (None, 0, ())
    with out.open("rb") as lines:
        items = list(read_items(lines))
    spooled = [v for k, v in items if k == "r"]
    assert [k for k, _v in items if k != "r"] == [
        k for k, _v in answer_items(io.BytesIO(document), converter(None)) if k != "r"
    ]
    assert len(spooled) == len(in_thread)
    return list(zip(in_thread, spooled, strict=True))


@pytest.mark.parametrize("name", HLD_SAMPLES)
@pytest.mark.parametrize("results_max_length", [None, 64])
def test_events_from_process_json_are_byte_identical(name: str, results_max_length: int | None, tmp_path: Path) -> None:
    pairs = both_ways(name, results_max_length, tmp_path)
    assert pairs, name
    for plain, spooled in pairs:
        assert spooled.raw is not None
        assert spooled.key == plain.key
        assert spooled.hints == {QID_HINT: plain.data["DETECTION"].get("QID")}
        for builder in BUILDERS:
            for brief in BRIEFS:
                expected = builder.build(plain)
                expected.add_field("KB", brief)
                joined = builder.build(spooled)
                assert joined.text is not None  # built by joining strings: nothing decoded
                joined.add_field("KB", brief)
                assert joined.to_json() == expected.to_json()
                assert (joined.key, joined.tag) == (expected.key, expected.tag)
                assert joined.hints is spooled.hints


def test_the_event_size_bound_cuts_both_the_same(tmp_path: Path) -> None:
    pairs = both_ways("hld_xml_2014_info_gathered_with_truncation_warning__paulsena_sn_readme.xml", None, tmp_path)
    builder = BUILDERS[1]
    texts = []
    for side in (0, 1):
        events = [builder.build(pair[side]) for pair in pairs]
        work = PageWork(page=Page([]), records=[], events=events)
        FitEvents(600, "host_list_detection").run(work, None)  # type: ignore[arg-type]  # it uses no table
        assert work.counts["events_shortened"] > 0
        texts.append([e.text for e in events])
    assert texts[0] == texts[1]


def test_reading_the_body_decodes_it_and_drops_the_json() -> None:
    event = Event("t", text='{"HOST":{"ID":"1"},"DETECTION":{"QID":"9"}}', key="1:9")
    event.add_field("KB", {"status": "ok"})
    assert event.body == {"HOST": {"ID": "1"}, "DETECTION": {"QID": "9"}, "KB": {"status": "ok"}}
    assert event.text is None  # the body may be changed now: its JSON is made again from it
    event.body["KB"]["status"] = "changed"
    assert event.to_json() == '{"HOST":{"ID":"1"},"DETECTION":{"QID":"9"},"KB":{"status":"changed"}}'


def test_a_field_added_to_an_empty_body() -> None:
    event = Event("t", text="{}")
    event.add_field("a", [1, "é"])
    assert event.text == '{"a":[1,"é"]}'
    assert event.body == {"a": [1, "é"]}
    built = EventBuilder("t", 5, environment="x").build(Record(raw="{}", key="k"))
    assert built.to_json() == '{"@devo_pulling_id":5,"environment":"x"}'


def test_obfuscation_decodes_the_json_and_gives_the_dict_path_event(tmp_path: Path) -> None:
    rules = compile_rules([("HOST.IP", "hash")], "salt")
    builder = EventBuilder("vuln.qualys.hostdetections", 7, obfuscation=rules)
    for plain, spooled in both_ways("hld_xml_qds_unique_vuln_id__elastic_stream_mock.xml", None, tmp_path):
        obfuscated = builder.build(spooled)
        assert obfuscated.to_json() == builder.build(plain).to_json()
        assert plain.data["HOST"]["IP"] not in obfuscated.to_json()


def test_records_and_events_compare_by_value() -> None:
    when = datetime(2026, 1, 1, tzinfo=UTC)
    assert Record(raw='{"a":1}', key="k", cursor=when) == Record(data={"a": 1}, key="k", cursor=when)
    joined = Event("t", text='{"a":1}', key="k")
    assert joined == Event("t", {"a": 1}, key="k")
    assert joined.text == '{"a":1}'  # comparing decoded nothing for good: the event keeps its JSON
    with pytest.raises(ValueError, match="needs"):
        Record(key="k")
    with pytest.raises(ValueError, match="needs"):
        Event("t")


def test_an_answer_that_breaks_half_way_hands_back_what_came_before(tmp_path: Path) -> None:
    """As when the answer is parsed while it streams: the pages before a bad host are delivered, then the error."""
    host = "<HOST><ID>{n}</ID><IP>10.0.0.{n}</IP><DETECTION_LIST>{d}</DETECTION_LIST></HOST>"
    good = "<DETECTION><UNIQUE_VULN_ID>{n}</UNIQUE_VULN_ID><QID>1</QID></DETECTION>"
    hosts = [host.format(n=n, d=good.format(n=n)) for n in range(1, 8)]
    hosts.insert(5, host.format(n=99, d="<DETECTION>oops</DETECTION>"))  # after two pages of two hosts
    document = "<HOST_LIST_VM_DETECTION_OUTPUT><RESPONSE><HOST_LIST>" + "".join(hosts)
    source, out = tmp_path / "answer.xml", tmp_path / "items"
    source.write_text(document + "</HOST_LIST></RESPONSE></HOST_LIST_VM_DETECTION_OUTPUT>")
    error, replaced, _logged = parse_answer(str(source), str(out), None, 2)
    assert error is not None
    assert "host 99" in error
    assert replaced == 0
    with out.open("rb") as lines:
        items = list(read_items(lines))
    assert [k for k, _v in items] == ["r", "r", "p", "r", "r", "p", "r"]
    assert [v.key for k, v in items if k == "r"] == ["1:1", "2:2", "3:3", "4:4", "5:5"]


def test_what_a_parsing_process_logs_is_kept_within_a_bound() -> None:
    """A parsing process hands what it logged back with its answer (the collector logs it); a hostile answer that
    made it log without end would have grown that list with the answer. It keeps the first KEPT and a count."""
    import logging

    from qualys_collector.qualys.parse_child import KEPT, Kept

    kept = Kept()
    log = logging.getLogger("qualys_collector.qualys.test_kept")
    log.addHandler(kept)
    log.propagate = False
    try:
        for n in range(KEPT + 7):
            log.warning("warning %d", n)
        first = kept.take()
        log.warning("next answer")
        second = kept.take()
    finally:
        log.removeHandler(kept)
    assert [m for _n, _l, m in first[:2]] == ["warning 0", "warning 1"]
    assert len(first) == KEPT + 1
    assert first[-1][2] == "... and 7 more such messages"
    assert second == (("qualys_collector.qualys.test_kept", logging.WARNING, "next answer"),)


def test_an_answer_with_forbidden_characters_is_read_again_cleaned_and_its_first_reading_forgotten(
    tmp_path: Path,
) -> None:
    """The parsing process reads an answer as it came and cleans it only once the parser refuses it: then the
    items are those of the cleaned answer, the count is the answer's, and what the first reading logged before the
    parser stopped (here the warning for hosts out of order) is said once, not twice."""
    import logging

    from qualys_collector.qualys.parse_child import Kept

    host = "<HOST><ID>{n}</ID><DNS>{dns}</DNS><DETECTION_LIST>{d}</DETECTION_LIST></HOST>"
    detection = "<DETECTION><UNIQUE_VULN_ID>{n}</UNIQUE_VULN_ID><QID>1</QID><RESULTS>{r}</RESULTS></DETECTION>"
    hosts = [
        host.format(n=n, dns=f"h{n}", d=detection.format(n=n, r="ok" if n != 2 else "bell\x07 &#x1; ref"))
        for n in (5, 3, 2, 9)  # 3 after 5: the answer is not sorted, logged once
    ]
    document = "<HOST_LIST_VM_DETECTION_OUTPUT><RESPONSE><HOST_LIST>" + "".join(hosts)
    source, out = tmp_path / "answer.xml", tmp_path / "items"
    source.write_text(document + "</HOST_LIST></RESPONSE></HOST_LIST_VM_DETECTION_OUTPUT>")
    kept = Kept()
    log = logging.getLogger("qualys_collector")
    log.addHandler(kept)
    try:
        error, replaced, _logged = parse_answer(str(source), str(out), None, 1, kept.take)
    finally:
        log.removeHandler(kept)
    assert error is None
    assert replaced == 2
    with out.open("rb") as lines:
        items = list(read_items(lines))
    records = [v for k, v in items if k == "r"]
    assert [r.key for r in records] == ["5:5", "3:3", "2:2", "9:9"]  # each once: the file was written anew
    assert "bell\ufffd \ufffd ref" in records[2].raw
    said = [message for _name, _level, message in kept.take()]
    assert sum("not sorted by host ID" in m for m in said) == 1
