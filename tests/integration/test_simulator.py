"""The simulator on the wire: parameters, paging paths, headers, limits and faults, as a client sees them."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from lxml import etree

from qualys_collector.simulator import Limits, Simulator
from qualys_collector.simulator.faults import parse_fault
from tests.conftest import SimFactory
from tests.helpers.vmsim import NOW

pytestmark = pytest.mark.integration
HLD = "/api/5.0/fo/asset/host/vm/detection/"
HOSTS = "/api/5.0/fo/asset/host/"
SCANS = "/api/3.0/fo/scan/"
ACTIVITY = "/api/2.0/fo/activity_log/"


@pytest.fixture
def sim(make_sim: SimFactory) -> Iterator[tuple[Simulator, httpx.Client]]:
    simulator = make_sim(
        seed=4,
        hosts=30,
        detections_per_host=4,
        scans=12,
        activity_rows=60,
        fim_events=40,
        fim_incidents=4,
        base=NOW - timedelta(days=2),
        span=timedelta(days=2),
        vm_limits=Limits(rate=50, window=60, concurrency=2),
    )
    simulator.frozen = NOW
    url = simulator.start()
    client = httpx.Client(base_url=url, auth=("demo", "demo"), headers={"X-Requested-With": "pytest"}, timeout=30)
    yield simulator, client
    client.close()


def xml(response: httpx.Response) -> Any:
    return etree.fromstring(response.content, etree.XMLParser(resolve_entities=False, no_network=True))


def post(client: httpx.Client, path: str, **params: str) -> httpx.Response:
    return client.post(path, data={"action": "list", **params})


def test_every_version_prefix_is_served(sim: tuple[Simulator, httpx.Client]) -> None:
    _sim, client = sim
    for version in ("2.0", "3.0", "4.0", "5.0"):
        assert post(client, f"/api/{version}/fo/asset/host/").status_code == 200


def test_auth_and_x_requested_with(sim: tuple[Simulator, httpx.Client]) -> None:
    _simulator, client = sim
    missing = httpx.post(f"{client.base_url}{HOSTS}", data={"action": "list"}, auth=("demo", "demo"))
    assert missing.status_code == 400
    assert xml(missing).findtext("RESPONSE/CODE") == "1903"
    bad = httpx.post(
        f"{client.base_url}{HOSTS}", data={"action": "list"}, auth=("demo", "x"), headers={"X-Requested-With": "t"}
    )
    assert bad.status_code == 401
    assert xml(bad).findtext("RESPONSE/TEXT") == "Bad Login/Password"
    assert "X-RateLimit-Limit" not in bad.headers  # no limit headers when authentication fails


def test_limit_headers_and_409_rate_limit(sim: tuple[Simulator, httpx.Client]) -> None:
    _simulator, client = sim
    first = post(client, SCANS)
    assert [first.headers[h] for h in ("X-RateLimit-Limit", "X-RateLimit-Window-Sec", "X-Concurrency-Limit-Limit")] == [
        "50",
        "60",
        "2",
    ]
    assert first.headers["X-RateLimit-Remaining"] == "49"
    for _ in range(49):
        post(client, SCANS)
    blocked = post(client, SCANS)
    assert blocked.status_code == 409
    assert xml(blocked).findtext("RESPONSE/CODE") == "1965"
    assert blocked.headers["X-RateLimit-Remaining"] == "0"
    assert int(blocked.headers["X-RateLimit-ToWait-Sec"]) > 0
    assert post(client, HOSTS).status_code == 200  # limits are per API


@pytest.mark.slow
def test_concurrency_limit_gives_1960_without_rate_headers(sim: tuple[Simulator, httpx.Client]) -> None:
    simulator, client = sim
    simulator.faults.arm(parse_fault("slow:delay=0.3,times=2,path=detection"))
    results: list[httpx.Response] = []
    threads = [
        threading.Thread(target=lambda: results.append(post(client, HLD, truncation_limit="0"))) for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    import time

    time.sleep(0.15)
    third = post(client, HLD)
    for thread in threads:
        thread.join()
    assert third.status_code == 409
    assert xml(third).findtext("RESPONSE/CODE") == "1960"
    assert "X-RateLimit-ToWait-Sec" not in third.headers
    assert simulator.max_concurrency("asset/host/vm/detection") == 2


def test_hld_parameters_and_truncation(sim: tuple[Simulator, httpx.Client]) -> None:
    simulator, client = sim
    page = xml(post(client, HLD, truncation_limit="7", status="Fixed", show_reopened_info="1"))
    hosts = page.findall("RESPONSE/HOST_LIST/HOST")
    assert len(hosts) == 7
    assert {d.findtext("STATUS") for d in page.iter("DETECTION")} == {"Fixed"}
    warning = page.find("RESPONSE/WARNING")
    assert warning.findtext("CODE") == "1980"
    url = warning.findtext("URL").strip()
    assert "status=Fixed" in url
    assert "id_min=" in url
    next_id = int(url.rsplit("id_min=", 1)[1])
    assert next_id > int(hosts[-1].findtext("ID"))
    ids = xml(post(client, HLD, ids="100003,100009-100015", status="New,Active,Fixed,Re-Opened"))
    assert {h.findtext("ID") for h in ids.iter("HOST")} == {"100003", "100009", "100012", "100015"}
    capped = xml(post(client, HLD, id_min="100030", id_max="100036", status="New,Active,Fixed,Re-Opened"))
    assert {h.findtext("ID") for h in capped.iter("HOST")} == {"100030", "100033", "100036"}
    tags = xml(post(client, HLD, show_tags="1", show_asset_id="1", truncation_limit="1"))
    assert tags.find("RESPONSE/HOST_LIST/HOST/TAGS/TAG/NAME") is not None
    assert tags.find("RESPONSE/HOST_LIST/HOST/ASSET_ID") is not None
    no_results = xml(post(client, HLD, show_results="0", truncation_limit="2"))
    assert no_results.find(".//RESULTS") is None
    window = xml(
        post(
            client,
            HLD,
            vm_processed_after="2026-05-31T00:00:00Z",
            vm_processed_before="2026-05-31T12:00:00Z",
            status="New,Active,Fixed,Re-Opened",
        )
    )
    expected = simulator.truth(
        "host_list",
        simulator.data.config.base.replace(day=31, hour=0, minute=0, second=1),
        simulator.data.config.base.replace(day=31, hour=12),
    )
    assert {h.findtext("ID") for h in window.iter("HOST")} == expected
    updated = xml(post(client, HLD, detection_updated_since="2030-01-01"))
    assert updated.find("RESPONSE/HOST_LIST") is None  # empty: RESPONSE holds only DATETIME
    assert [c.tag for c in updated.find("RESPONSE")] == ["DATETIME"]


def test_bad_parameters_are_qualys_errors(sim: tuple[Simulator, httpx.Client]) -> None:
    _sim, client = sim
    unknown = post(client, HLD, colour="blue")
    assert (unknown.status_code, xml(unknown).findtext("RESPONSE/CODE")) == (400, "1901")
    bad_date = post(client, HOSTS, vm_processed_after="yesterday")
    assert xml(bad_date).findtext("RESPONSE/CODE") == "1905"
    bad_ids = post(client, HLD, ids="abc123")
    assert "neither a positive integer nor a range" in xml(bad_ids).findtext("RESPONSE/TEXT")
    no_action = client.post(HOSTS, data={})
    assert xml(no_action).findtext("RESPONSE/CODE") == "1903"


def test_host_list_details_none_gives_an_id_set(sim: tuple[Simulator, httpx.Client]) -> None:
    _sim, client = sim
    page = xml(post(client, HOSTS, details="None", truncation_limit="0"))
    assert len(page.findall("RESPONSE/ID_SET/ID")) == 30
    assert page.find("RESPONSE/WARNING") is None


def test_scan_list_filters(sim: tuple[Simulator, httpx.Client]) -> None:
    simulator, client = sim
    finished = xml(post(client, SCANS, state="Finished"))
    assert {s.findtext("STATUS/STATE") for s in finished.iter("SCAN")} == {"Finished"}
    simulator.frozen = NOW - timedelta(hours=1)
    running = xml(post(client, SCANS, state="Running"))
    assert {s.findtext("STATUS/STATE") for s in running.iter("SCAN")} == {"Running"}
    simulator.frozen = NOW
    window = xml(
        post(
            client,
            SCANS,
            launched_after_datetime="2026-05-31T00:00:00Z",
            launched_before_datetime="2026-05-31T12:00:00Z",
        )
    )
    launched = [s.findtext("LAUNCH_DATETIME") for s in window.iter("SCAN")]
    assert launched
    assert all("2026-05-31T00:00:00Z" <= t <= "2026-05-31T12:00:00Z" for t in launched)
    assert launched == sorted(launched, reverse=True)
    with_op = xml(post(client, SCANS, show_op="1"))
    assert with_op.find(".//OPTION_PROFILE/TITLE") is not None


def test_activity_log_pages_back_with_id_max(sim: tuple[Simulator, httpx.Client]) -> None:
    simulator, client = sim
    seen: list[str] = []
    params: dict[str, str] = {"truncation_limit": "25"}
    for _ in range(10):
        response = post(client, ACTIVITY, **params)
        assert response.headers["Content-Type"].startswith("text/csv")
        text = response.text
        body = text.split("----BEGIN_RESPONSE_BODY_CSV\n", 1)[1].split("----END_RESPONSE_BODY_CSV", 1)[0]
        seen += body.splitlines()[1:]
        if "BEGIN_RESPONSE_FOOTER_CSV" not in text:
            break
        params["id_max"] = text.rsplit("id_max=", 1)[1].split('"', 1)[0]
    assert len(seen) == len(simulator.data.activity(simulator.now(), None, None))
    dates = [line.split(",", 1)[0] for line in seen]
    assert dates == sorted(dates, reverse=True)
    rejected = post(client, ACTIVITY, since_datetime="2026-05-31 00:00:00")
    assert xml(rejected).findtext("RESPONSE/CODE") == "1905"


@pytest.mark.parametrize(
    ("spec", "status", "marker"),
    [
        ("409:code=1960", 409, b"<CODE>1960</CODE>"),
        ("503", 503, b"503"),
        ("999", 500, b'number="999"'),
        ("400:code=1905", 400, b"<CODE>1905</CODE>"),
    ],
)
def test_status_faults(sim: tuple[Simulator, httpx.Client], spec: str, status: int, marker: bytes) -> None:
    simulator, client = sim
    simulator.faults.arm(parse_fault(f"{spec}{',' if ':' in spec else ':'}times=1"))
    response = post(client, HOSTS)
    assert response.status_code == status
    assert marker in response.content
    assert post(client, HOSTS).status_code == 200


def test_body_faults(sim: tuple[Simulator, httpx.Client]) -> None:
    simulator, client = sim
    simulator.faults.arm(parse_fault("cut:after=500,times=1"))
    with pytest.raises(httpx.RemoteProtocolError):
        post(client, HLD, truncation_limit="0")
    simulator.faults.arm(parse_fault("malformed:after=500,times=1"))
    broken = post(client, HLD, truncation_limit="0")
    assert broken.status_code == 200
    with pytest.raises(etree.XMLSyntaxError):
        etree.fromstring(broken.content)


def gateway(client: httpx.Client) -> tuple[str, dict[str, str]]:
    token = httpx.post(f"{client.base_url}/auth", data={"username": "demo", "password": "demo", "token": "true"})
    assert token.status_code == 201
    return str(client.base_url), {"Authorization": f"Bearer {token.text}"}


def test_gateway_auth_search_sort_and_windows(sim: tuple[Simulator, httpx.Client]) -> None:
    _simulator, client = sim
    base, headers = gateway(client)
    assert httpx.post(f"{base}/auth", data={"username": "demo", "password": "no"}).status_code == 401
    assert httpx.post(f"{base}/fim/v2/events/search", json={}).status_code == 401
    as_string = httpx.post(
        f"{base}/fim/v2/events/search", headers=headers, json={"pageSize": 100, "sort": '[{"processedTime":"desc"}]'}
    ).json()
    as_array = httpx.post(
        f"{base}/fim/v2/events/search", headers=headers, json={"pageSize": 100, "sort": [{"processedTime": "desc"}]}
    ).json()
    assert as_string == as_array
    values = [h["sortValues"][0] for h in as_string]
    assert values == sorted(values, reverse=True)
    count = httpx.post(f"{base}/fim/v2/events/count", headers=headers, json={}).json()
    assert count == {"count": 40}
    ranged = httpx.post(
        f"{base}/fim/v2/events/search",
        headers=headers,
        json={"pageSize": 100, "filter": "processedTime: ['2026-05-31T00:00:00.000Z'..'2026-05-31T12:00:00.000Z']"},
    ).json()
    assert ranged
    assert all("2026-05-31T00" <= h["data"]["processedTime"][:23] <= "2026-05-31T12:00:00.000" for h in ranged)
    assert (
        httpx.post(
            f"{base}/fim/v2/events/search", headers=headers, json={"pageSize": 1000, "pageNumber": 10}
        ).status_code
        == 416
    )
    incidents = httpx.post(
        f"{base}/fim/v3/incidents/search",
        headers=headers,
        json={"pageSize": 10, "filter": "status: 'CLOSED'", "sort": [{"lastUpdatedBy.date": "asc"}, {"id": "asc"}]},
    ).json()
    assert incidents
    assert {i["data"]["status"] for i in incidents} == {"CLOSED"}
    first = incidents[0]["data"]["id"]
    events = httpx.post(f"{base}/fim/v2/incidents/{first}/events/search", headers=headers, json={"pageSize": 10})
    assert events.status_code == 200
    assert all(e["data"]["incidentId"] == first for e in events.json())
    assert httpx.post(f"{base}/fim/v2/incidents/count", headers=headers, json={}).json() == {"count": 4}


def test_gateway_search_after_pages_without_gaps(sim: tuple[Simulator, httpx.Client]) -> None:
    _simulator, client = sim
    base, headers = gateway(client)
    sort = [{"processedTime": "asc"}, {"id": "asc"}]
    after: list[Any] = []
    ids: list[str] = []
    while True:
        page = httpx.post(
            f"{base}/fim/v2/events/search",
            headers=headers,
            json={"pageSize": 7, "sort": json.dumps(sort), "searchAfter": after},
        ).json()
        ids += [h["data"]["id"] for h in page]
        if len(page) < 7:
            break
        after = page[-1]["sortValues"]
    assert len(ids) == len(set(ids)) == 40


def test_gateway_faults(sim: tuple[Simulator, httpx.Client]) -> None:
    simulator, client = sim
    base, headers = gateway(client)
    simulator.faults.arm(parse_fault("429:times=1,wait=7"))
    limited = httpx.post(f"{base}/fim/v2/events/search", headers=headers, json={})
    assert (limited.status_code, limited.headers["X-RateLimit-ToWait-Sec"]) == (429, "7")
    simulator.faults.arm(parse_fault("expire_token:times=1"))
    assert httpx.post(f"{base}/fim/v2/events/search", headers=headers, json={}).status_code == 401
    simulator.faults.arm(parse_fault("forbidden:times=-1"))
    _base, fresh = gateway(client)
    forbidden = httpx.post(f"{base}/fim/v2/events/search", headers=fresh, json={})
    assert forbidden.status_code == 403
    assert forbidden.json() == {"message": "Unable to get Subscription details "}


def test_admin_endpoints(sim: tuple[Simulator, httpx.Client]) -> None:
    simulator, client = sim
    assert client.post("/__sim/faults", json=["503:times=1"]).status_code == 200
    assert post(client, HOSTS).status_code == 503
    before = simulator.now()
    client.post("/__sim/clock", json={"advance": 3600})
    assert simulator.now() - before == timedelta(hours=1)
    stats = client.get("/__sim/stats").json()
    assert stats["requests"][HOSTS] == 1
    truth = client.get("/__sim/truth", params={"service": "vm_scans"}).json()
    assert set(truth) == simulator.truth("vm_scans")
    with pytest.raises(ValueError, match="unknown fault kind"):
        parse_fault("explode")
