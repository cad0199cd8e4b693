"""The parsing processes load the parser, the model and the detection conversion, not the collector."""

from __future__ import annotations

import json
import subprocess
import sys


def test_the_parsing_process_module_loads_no_http_client_config_or_console_library() -> None:
    probe = (
        "import json, sys, qualys_collector.qualys.parse_child; "  # CHILD_MODULE
        "print(json.dumps(sorted(k for k, v in sys.modules.items() if v is not None)))"  # None: blocked, not loaded
    )
    modules = json.loads(subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True).stdout)
    loaded = {m.split(".")[0] for m in modules}
    assert {"lxml", "orjson"} <= loaded  # the probe really imported the module
    assert not loaded & {"httpx", "httpcore", "pydantic", "yaml", "rich", "devo", "tenacity"}
    # Nor OpenSSL (hashlib loads libcrypto: 3.7 MB of every parsing process), nor the parent's process plumbing.
    assert not loaded & {"hashlib", "_hashlib", "ssl", "subprocess", "tempfile", "queue"}
    # The wire helpers live in qualys/ next to the HTTP clients: the process loads the helpers, not the clients.
    assert {"qualys_collector.qualys.vm_hosts", "qualys_collector.qualys.detections"} <= set(modules)
    heavy = {"config", "engine", "sinks", "qualys.vm", "qualys.fim", "qualys.http", "qualys.retry", "qualys.budget"}
    inside = [m.removeprefix("qualys_collector.") for m in modules if m.startswith("qualys_collector.")]
    assert not [m for m in inside if m in heavy or m.rsplit(".", 1)[0] in heavy]


def test_spool_directories_of_collectors_that_died_are_removed(tmp_path: object) -> None:
    """A collector killed with SIGKILL leaves its spool directory in TMPDIR; the next one removes it, never a
    running collector's, nor a directory of another shape."""
    import os
    from pathlib import Path

    from qualys_collector.services.hld_process import SPOOL_PREFIX, sweep_spools

    root = Path(str(tmp_path))
    dead = subprocess.run(["true"], check=True)
    gone = subprocess.Popen(["true"])
    gone.wait()
    del dead
    left = root / f"{SPOOL_PREFIX}{gone.pid}-abc"
    (left / "items.jsonl").parent.mkdir()
    (left / "items.jsonl").write_text("x")
    mine = root / f"{SPOOL_PREFIX}{os.getpid()}-def"
    mine.mkdir()
    other = root / f"{SPOOL_PREFIX}notapid"
    other.mkdir()
    assert sweep_spools(root) == 1
    assert not left.exists()
    assert mine.exists()
    assert other.exists()


def test_the_parsing_processes_run_the_module_held_to_those_imports() -> None:
    """The pool starts ``CHILD_MODULE`` (the module the test above probes, and the tests that look for parsing
    processes find them by), which parses an answer."""
    import psutil

    from qualys_collector.qualys import parse_child
    from qualys_collector.services.hld_process import CHILD_MODULE, ParsePool

    assert parse_child.__name__ == CHILD_MODULE
    pool = ParsePool(1)
    try:
        (process,) = pool.processes
        assert CHILD_MODULE in psutil.Process(process.proc.pid).cmdline()
    finally:
        pool.close()
