"""A Qualys subscription on loopback: the VM fo API and the FIM gateway, with faults on demand.

It stands apart from the collector: nothing here imports the collector's code, and nothing in the
collector imports this package except the ``simulate`` and ``demo`` commands.
"""

from __future__ import annotations

from qualys_collector.simulator.app import Limits, Simulator
from qualys_collector.simulator.data import SimConfig

__all__ = ["Limits", "SimConfig", "Simulator"]
