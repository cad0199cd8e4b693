"""Configuration: the seeds' YAML/JSON shapes, validated before anything touches the network."""

from __future__ import annotations

from qualys_collector.config.load import build_config, load_config
from qualys_collector.config.schema import CollectorConfig

__all__ = ["CollectorConfig", "build_config", "load_config"]
