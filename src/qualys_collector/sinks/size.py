"""Events over an output's ``max_event_bytes``: shortened, never split or dropped.

A receiver cuts a message longer than its limit into fragments (rsyslog's and syslog-ng's
``maxMessageSize``/``log-msg-size``), none of which is valid JSON. So an event whose message would
exceed the output's limit has its largest string fields shortened until the message fits, stays one
valid JSON object, and says what was cut: ``"@truncated_fields": {"<field path>": <original length>}``
(:mod:`qualys_collector.fit`, which the outbox's ``globals.event_max_bytes`` uses too).
"""

from __future__ import annotations

from qualys_collector.fit import TRUNCATED, shorten

#: The default for syslog outputs: what the receivers in the test matrix accept (rsyslog ``maxMessageSize``
#: 256k, syslog-ng ``log-msg-size(262144)``).
SYSLOG_MAX_EVENT_BYTES = 256 * 1024

__all__ = ["SYSLOG_MAX_EVENT_BYTES", "TRUNCATED", "shorten"]
