"""`qualys-collector demo`, small, in a real process: all six services pulled into the local file."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

TAGS = {
    "vuln.qualys.vulnerabilities",
    "vuln.qualys.hosts",
    "vuln.qualys.hostdetections",
    "vuln.qualys.useractivitylog",
    "monitor.qualys.fim.event",
    "monitor.qualys.fim.incident",
    "monitor.qualys.fim.incident_event",
    "vuln.qualys.collector.summary",
}


@pytest.mark.slow
def test_demo_runs_small(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "qualys_collector",
            "demo",
            "--hosts",
            "20",
            "--minutes",
            "120",
            "--dir",
            str(tmp_path / "demo"),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Done:" in done.stdout
    for service in ("vm_scans", "host_list", "host_list_detection", "user_activity", "fim_events", "fim_incidents"):
        assert service[:12] in done.stdout
    lines = [json.loads(x) for x in (tmp_path / "demo" / "events.jsonl").read_text().splitlines()]
    tags = Counter(line["tag"] for line in lines)
    assert set(tags) == TAGS
    assert tags["vuln.qualys.hostdetections"] == 200  # 20 hosts x 10 detections, all four statuses
    assert (tmp_path / "demo" / "config.yaml").exists()
    assert "Statistics for this pull cycle" in (tmp_path / "demo" / "collector.log").read_text()
