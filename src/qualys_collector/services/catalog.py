"""Every service, in one explicit list: a new service is one module in ``services/`` plus one line here.

The configuration's ``services`` blocks are validated with each entry's options model (the input it
names, in this order), and the composition root builds each enabled service's page source from it.
"""

from __future__ import annotations

from qualys_collector.services import (
    fim_events,
    fim_incidents,
    host_list,
    host_list_detection,
    knowledge_base,
    user_activity,
    vm_scans,
)
from qualys_collector.services.options import InputName, ServiceEntry, ServiceOptions

SERVICES: tuple[ServiceEntry, ...] = (
    vm_scans.SERVICE,
    host_list.SERVICE,
    host_list_detection.SERVICE,
    user_activity.SERVICE,
    knowledge_base.SERVICE,
    fim_events.SERVICE,
    fim_incidents.SERVICE,
)

#: Each service by name.
BY_NAME: dict[str, ServiceEntry] = {entry.name: entry for entry in SERVICES}


def options_models(input_name: InputName) -> dict[str, type[ServiceOptions]]:
    """The services an input accepts, in list order, each with its options model."""
    return {entry.name: entry.options for entry in SERVICES if entry.input == input_name}
