"""The tests use the package's local relay (a real rsyslogd with mutual TLS)."""

from __future__ import annotations

from qualys_collector.relay import LINE, READY_TAG, Certs, Rsyslog, free_port

__all__ = ["LINE", "READY_TAG", "Certs", "Rsyslog", "free_port"]
