from __future__ import annotations

import re

from qualys_collector.observability.memory import gc_line


def test_gc_line_has_the_seed_shape() -> None:
    line = gc_line()
    pattern = (
        r"^\[GC\] global: \d+\.\d% -> \d+\.\d%, process: RSS\(\d+\.\d\dMiB -> \d+\.\d\dMiB\), "
        r"VMS\(\d+\.\d\dMiB -> \d+\.\d\dMiB\)$"
    )
    assert re.match(pattern, line), line
