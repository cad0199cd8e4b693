"""The parsing processes load the parser, the model and the detection conversion, not the collector."""

from __future__ import annotations

import json
import subprocess
import sys


def test_the_parsing_process_module_loads_no_http_client_config_or_console_library() -> None:
    probe = (
        "import json, sys, qualys_collector.services.hld_process; "
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    loaded = set(json.loads(subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True).stdout))
    assert {"lxml", "orjson"} <= loaded  # the probe really imported the module
    assert not loaded & {"httpx", "httpcore", "pydantic", "yaml", "rich", "devo", "tenacity"}
