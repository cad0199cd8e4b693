"""Configuration: the seeds' YAML/JSON shapes, validated before anything touches the network."""

from __future__ import annotations

from qualys_collector.config.load import build_config, load_config
from qualys_collector.config.schema import DEFAULT_TAGS, CollectorConfig

__all__ = ["DEFAULT_TAGS", "CollectorConfig", "build_config", "load_config"]
