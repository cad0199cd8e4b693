"""The pull engine: windows, boundary dedup, checkpoints, the outbox, and the cycle that ties them.

Nothing here speaks HTTP or opens sockets; Qualys clients and sinks are injected. Only ``store.py``
(and ``outbox.py``, its delivery side) touches SQLite.
"""

from __future__ import annotations
