"""The tests use the package's local relay (a real rsyslogd with mutual TLS)."""

from __future__ import annotations

from qualys_collector.relay import LINE, Certs, Rsyslog, free_port

__all__ = ["LINE", "Certs", "Rsyslog", "free_port"]
