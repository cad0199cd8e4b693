"""Every output type, in one explicit list: a new output is one module in ``sinks/`` plus one line here.

The configuration's ``outputs`` schema is composed from this list (each type's block model is a member
of a union tagged by ``type``), and :func:`build_sink` turns a validated block into its sink.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Union

from pydantic import Field

from qualys_collector.sinks import devo, devo_http, file, stdout
from qualys_collector.sinks.base import BuildContext, OutputBlock, OutputType, Sink

OUTPUT_TYPES: tuple[OutputType, ...] = (file.OUTPUT, stdout.OUTPUT, devo.OUTPUT, devo_http.OUTPUT)

_BY_NAME = {output.name: output for output in OUTPUT_TYPES}

if TYPE_CHECKING:
    Output = OutputBlock
else:  # the tagged union pydantic validates ``outputs.<name>`` with
    Output = Annotated[Union[tuple(o.block for o in OUTPUT_TYPES)], Field(discriminator="type")]  # noqa: UP007


def output_type_names() -> tuple[str, ...]:
    """The accepted values of ``outputs.<name>.type``, in list order."""
    return tuple(_BY_NAME)


def build_sink(name: str, output: OutputBlock, context: BuildContext) -> Sink:
    """The sink of one validated ``outputs.<name>`` block."""
    return _BY_NAME[output.type].build(name, output, context)
