"""Bad input never crashes the process nor moves a checkpoint: property-based configs, mutated real
payloads (XML, JSON, CSV), an XML bomb and an external-entity document."""

from __future__ import annotations

import contextlib
import io
import json
import resource
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qualys_collector.config import build_config
from qualys_collector.errors import ConfigError, DataError
from qualys_collector.qualys.fim_common import search_pages
from qualys_collector.qualys.xml import ByteStream, element_to_value, iter_elements
from qualys_collector.services import fim_events, host_list_detection, user_activity

pytestmark = pytest.mark.reliability
SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "reference"
HLD = (SAMPLES / "qualys_vm" / "samples" / "hld_xml_qds_unique_vuln_id__elastic_stream_mock.xml").read_bytes()
CSV = (
    SAMPLES / "qualys_vm" / "samples" / "activity_log_csv_full_response_untruncated__elastic_issue_10183.csv"
).read_text()
FIM = json.loads((SAMPLES / "qualys_fim" / "samples" / "events_search_v2_response__xsoar_list_events.json").read_text())
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-10, 10**7),
    st.text(max_size=30),
    st.lists(st.text(max_size=8), max_size=3),
    st.dictionaries(st.text(max_size=8), st.integers(), max_size=2),
)
option_keys = st.sampled_from(
    [
        "request_period_in_seconds",
        "start_time_utc",
        "override_tag",
        "filters",
        "enabled",
        "truncation_limit",
        "api_version",
        "results_max_length",
        "obfuscation",
        "bogus",
    ]
)


@FUZZ
@given(
    service=st.sampled_from(["vm_scans", "host_list", "host_list_detection", "user_activity", "x"]),
    options=st.dictionaries(option_keys, values, max_size=4),
    input_id=values,
)
def test_any_config_value_is_either_valid_or_a_config_error(
    service: str, options: dict[str, Any], input_id: Any
) -> None:
    raw = {
        "inputs": {
            "qualys": {
                "id": input_id,
                "credentials": {"hostname": "qualysapi.qualys.eu", "username": "u", "password": "Fuzz-Pass-1"},
                "services": {service: options},
            }
        }
    }
    outcome: Any
    try:
        outcome = build_config(raw, warnings=[])
    except ConfigError as exc:
        outcome = exc
    if isinstance(outcome, ConfigError):
        assert "Fuzz-Pass-1" not in str(outcome)
        assert str(outcome).strip()
    else:
        assert outcome.inputs.qualys is not None


def parse_hld(data: bytes) -> int:
    convert = host_list_detection.converter(None)
    count = 0
    for _tag, element in iter_elements(ByteStream([data]), {"HOST"}):
        count += len(convert(element_to_value(element)))
    return count


mutations = st.one_of(
    st.tuples(st.just("cut"), st.integers(0, len(HLD))),
    st.tuples(st.just("flip"), st.integers(0, len(HLD) - 1), st.integers(0, 255)),
    st.tuples(st.just("insert"), st.integers(0, len(HLD)), st.binary(min_size=1, max_size=20)),
)


@FUZZ
@given(steps=st.lists(mutations, min_size=1, max_size=4))
def test_mutated_detection_xml_parses_or_is_a_data_error(steps: list[tuple[Any, ...]]) -> None:
    data = bytearray(HLD)
    for step in steps:
        if step[0] == "cut":
            del data[step[1] :]
        elif step[0] == "flip" and step[1] < len(data):
            data[step[1]] = step[2]
        elif step[0] == "insert":
            data[step[1] : step[1]] = step[2]
    try:
        parse_hld(bytes(data))
    except DataError:
        pass
    except KeyError as exc:  # a HOST without ID must not crash the process either
        pytest.fail(f"unhandled KeyError {exc}")


@FUZZ
@given(cut=st.integers(0, len(CSV)), noise=st.text(max_size=30), at=st.integers(0, len(CSV)))
def test_mutated_activity_csv_parses_or_is_a_data_error(cut: int, noise: str, at: int) -> None:
    text = (CSV[:at] + noise + CSV[at:])[: cut + len(noise)]
    with contextlib.suppress(DataError):
        list(user_activity.parse_activity_csv(io.StringIO(text, newline="")))


class Answer:
    """Stands in for FimClient.post: the gateway answers ``payload`` once (a unit may fake a function)."""

    def __init__(self, payload: Any) -> None:
        self.payload = payload

    def post(self, path: str, body: dict[str, Any], what: str) -> Any:
        return self.payload


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=10)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=12,
)


@FUZZ
@given(payload=st.one_of(json_values, st.just(FIM), st.lists(st.fixed_dictionaries({"data": json_values}), max_size=3)))
def test_any_gateway_answer_gives_records_or_a_data_error(payload: Any) -> None:
    try:
        for events, _last in search_pages(
            Answer(payload),
            "/fim/v2/events/search",
            "",
            [],
            1000,
            None,  # type: ignore[arg-type]
            "events",
        ):
            for event in events:
                fim_events.to_record(event)
    except DataError:
        pass


BOMB = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY l1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY l2 "&l1;&l1;&l1;&l1;&l1;&l1;&l1;&l1;&l1;&l1;"><!ENTITY l3 "&l2;&l2;&l2;&l2;&l2;&l2;&l2;&l2;&l2;&l2;">
<!ENTITY l4 "&l3;&l3;&l3;&l3;&l3;&l3;&l3;&l3;&l3;&l3;"><!ENTITY l5 "&l4;&l4;&l4;&l4;&l4;&l4;&l4;&l4;&l4;&l4;">
<!ENTITY l6 "&l5;&l5;&l5;&l5;&l5;&l5;&l5;&l5;&l5;&l5;"><!ENTITY l7 "&l6;&l6;&l6;&l6;&l6;&l6;&l6;&l6;&l6;&l6;">
<!ENTITY l8 "&l7;&l7;&l7;&l7;&l7;&l7;&l7;&l7;&l7;&l7;"><!ENTITY l9 "&l8;&l8;&l8;&l8;&l8;&l8;&l8;&l8;&l8;&l8;">]>
<HOST_LIST_VM_DETECTION_OUTPUT><RESPONSE><HOST_LIST><HOST><ID>1</ID><OS>&l9;</OS>
<DETECTION_LIST><DETECTION><QID>1</QID></DETECTION></DETECTION_LIST></HOST></HOST_LIST></RESPONSE>
</HOST_LIST_VM_DETECTION_OUTPUT>"""


def test_an_xml_bomb_is_a_numbered_error_not_an_expansion() -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(DataError, match="malformed or truncated XML") as info:
        parse_hld(BOMB)
    assert info.value.code == 301
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # KiB; a billion "lol"s is 3 GB


def test_an_external_entity_is_never_read(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-CONTENT")
    document = f"""<?xml version="1.0"?><!DOCTYPE r [<!ENTITY xxe SYSTEM "file://{secret}">
<!ENTITY net SYSTEM "http://127.0.0.1:9/x">]>
<HOST_LIST_VM_DETECTION_OUTPUT><RESPONSE><HOST_LIST><HOST><ID>2</ID><OS>&xxe;&net;</OS><DETECTION_LIST>
<DETECTION><QID>5</QID></DETECTION></DETECTION_LIST></HOST></HOST_LIST></RESPONSE></HOST_LIST_VM_DETECTION_OUTPUT>"""
    records = []
    for _tag, element in iter_elements(ByteStream([document.encode()]), {"HOST"}):
        records += host_list_detection.converter(None)(element_to_value(element))
    assert records
    assert "TOP-SECRET-CONTENT" not in json.dumps([r.data for r in records])


@pytest.mark.parametrize(
    "host",
    [
        b"<HOST><IP>10.0.0.1</IP></HOST>",
        b"<HOST><ID></ID></HOST>",
        b"<HOST><ID>3</ID><DETECTION_LIST>x</DETECTION_LIST></HOST>",
    ],
)
def test_a_host_without_id_or_with_a_broken_detection_list_is_a_data_error(host: bytes) -> None:
    document = (
        b"<HOST_LIST_VM_DETECTION_OUTPUT><RESPONSE><HOST_LIST>" + host + b"</HOST_LIST></RESPONSE>"
        b"</HOST_LIST_VM_DETECTION_OUTPUT>"
    )
    with pytest.raises(DataError):
        parse_hld(document)
