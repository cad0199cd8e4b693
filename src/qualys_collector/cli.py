"""Command line: parsing and exit codes only; the work happens in :mod:`qualys_collector.app`.

Exit codes: 0 success, 1 a cycle or delivery failed, 2 invalid configuration or usage.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import NoReturn

import click

from qualys_collector import __version__
from qualys_collector.config import load_config
from qualys_collector.config.schema import CollectorConfig
from qualys_collector.errors import BackfillError, CollectorError, ConfigError
from qualys_collector.observability.heap import return_large_blocks
from qualys_collector.observability.logging import setup_logging
from qualys_collector.redact import scrub

logger = logging.getLogger("qualys_collector")

EXIT_FAILURE = 1
EXIT_CONFIG = 2
#: What ``demo`` and ``simulate`` need beyond ``run`` (the ``demo`` extra in pyproject.toml).
DEMO_EXTRA = ("werkzeug", "trustme", "rich")

config_option = click.option(
    "-c", "--config", "config_path", required=True, type=click.Path(path_type=Path), help="YAML or JSON config."
)
state_option = click.option(
    "--state-dir", type=click.Path(path_type=Path), default=None, help="Override globals.persistence."
)
format_option = click.option(
    "--log-format", type=click.Choice(["seed", "json"]), default="seed", show_default=True, help="Log line format."
)


def _load(config_path: Path) -> CollectorConfig:
    try:
        return load_config(config_path, warn=lambda message: logger.warning("%s", message))
    except ConfigError as exc:
        logger.error("Invalid configuration: %s", exc)
        sys.exit(EXIT_CONFIG)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="qualys-collector")
def main() -> None:
    """Pull Qualys VM and FIM data and deliver it, complete and exactly once, into a SIEM."""


@main.command()
@config_option
@state_option
@format_option
@click.option("--once", is_flag=True, help="One cycle of every enabled service, then exit (0 only if all succeeded).")
def run(config_path: Path, state_dir: Path | None, log_format: str, once: bool) -> None:
    """Run the collector."""
    return_large_blocks()  # memory stays bounded by the page and batch byte bounds, not by freed event strings
    setup_logging(fmt=log_format)
    config = _load(config_path)
    setup_logging(fmt=log_format, debug=config.globals.debug)
    from qualys_collector.app import Collector

    try:
        collector = Collector(config, state_dir=state_dir)
    except ConfigError as exc:
        logger.error("Invalid configuration: %s", exc)
        sys.exit(EXIT_CONFIG)
    except CollectorError as exc:
        logger.error("%s", exc)
        sys.exit(EXIT_FAILURE)

    def _stop(signum: int, _frame: FrameType | None) -> None:
        logger.warning("Received %s: stopping after the current page", signal.Signals(signum).name)
        collector.stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        if once:
            ok = collector.run_once()
            sys.exit(0 if ok else EXIT_FAILURE)
        collector.run_forever()
        if collector.scheduler.fatal is not None:
            sys.exit(EXIT_FAILURE)
    finally:
        collector.close()


@main.command()
@config_option
@state_option
@format_option
@click.option("--service", required=True, help="A time-windowed service, e.g. host_list_detection.")
@click.option("--from", "start", required=True, help="Start of the range, included: 2024-01-01T00:00:00Z.")
@click.option("--to", "end", required=True, help="End of the range, excluded: 2024-02-01T00:00:00Z.")
def backfill(config_path: Path, state_dir: Path | None, log_format: str, service: str, start: str, end: str) -> None:
    """Pull a past range of one service with its own checkpoint, beside the live pull (exit 0 once complete)."""
    return_large_blocks()  # as run: freed event strings go back to the system
    setup_logging(fmt=log_format)
    config = _load(config_path)
    setup_logging(fmt=log_format, debug=config.globals.debug)
    from qualys_collector.backfill import run_backfill

    stop = threading.Event()

    def _stop(signum: int, _frame: FrameType | None) -> None:
        logger.warning("Received %s: stopping after the current page", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        run_backfill(config, state_dir, service, start, end, stop=stop)
    except BackfillError as exc:
        logger.error("%s", exc)
        sys.exit(EXIT_CONFIG if exc.code in BackfillError.USAGE else EXIT_FAILURE)
    except ConfigError as exc:
        logger.error("Invalid configuration: %s", exc)
        sys.exit(EXIT_CONFIG)
    except CollectorError as exc:
        logger.error("%s", exc)
        sys.exit(EXIT_FAILURE)


@main.command()
@config_option
def validate(config_path: Path) -> None:
    """Check a configuration without any network call."""
    setup_logging()
    config = _load(config_path)
    inputs = []
    for name in ("qualys", "qualys_fim"):
        block = getattr(config.inputs, name)
        if block is not None:
            enabled = [s for s, o in block.services.items() if o.enabled]
            inputs.append(f"{name} (id {block.id}): {', '.join(enabled) or 'no enabled service'}")
    outputs = ", ".join(f"{n} ({o.type})" for n, o in config.outputs.items()) or "file (default)"
    click.echo(f"Configuration {config_path} is valid.")
    click.echo(f"  inputs: {'; '.join(inputs)}")
    click.echo(f"  outputs: {outputs}")
    click.echo(f"  state directory: {config.state_dir()}")


@main.group()
def state() -> None:
    """Inspect or reset checkpoints."""


@state.command("show")
@config_option
@state_option
def state_show(config_path: Path, state_dir: Path | None) -> None:
    """Print every service's checkpoint and the outbox depth."""
    setup_logging()
    config = _load(config_path)
    from qualys_collector.engine.outbox import Outbox

    try:
        outbox = Outbox(config.state_dir(state_dir))
        try:
            rows = outbox.checkpoints()
            if not rows:
                click.echo("No checkpoints yet.")
            for input_id, service, data in rows:
                click.echo(f"{input_id}/{service}: {json.dumps(data, sort_keys=True)}")
                if "until_str" in data:  # a backfill: say how far it got
                    click.echo(_backfill_line(input_id, service, data))
            click.echo(f"outbox: {outbox.pending()} events pending, {outbox.size_bytes()} bytes")
        finally:
            outbox.close()
    except CollectorError as exc:
        logger.error("%s", exc)
        sys.exit(EXIT_FAILURE)


def _backfill_line(scope: str, service: str, data: dict[str, object]) -> str:
    from qualys_collector.engine.backfill import BACKFILL_SUFFIX, read_row

    found = read_row(scope.removesuffix(BACKFILL_SUFFIX), service, data)
    if found is None:
        return "  backfill: unreadable range"
    if found.complete:
        return f"  backfill {found.range}: complete"
    at = found.value.isoformat().replace("+00:00", "Z") if found.value else "its start"
    return f"  backfill {found.range}: {found.progress():.0%} pulled (at {at})"


@state.command("reset")
@config_option
@state_option
@click.option("--service", required=True, help="Service name, e.g. host_list_detection.")
@click.option("--input", "input_name", default=None, help="qualys or qualys_fim (needed only if ambiguous).")
@click.option("--backfill", "of_backfill", is_flag=True, help="Forget the service's backfill, not its checkpoint.")
def state_reset(
    config_path: Path, state_dir: Path | None, service: str, input_name: str | None, of_backfill: bool
) -> None:
    """Forget one service's checkpoint: its next cycle starts again from start_time_utc (with --backfill: forget
    its backfill instead; the live checkpoint stays)."""
    setup_logging()
    config = _load(config_path)
    from qualys_collector.engine.cycle import backfill_scope
    from qualys_collector.engine.outbox import Outbox
    from qualys_collector.engine.store import StateLock

    ids = [
        getattr(config.inputs, name).id
        for name in ("qualys", "qualys_fim")
        if getattr(config.inputs, name) is not None
        and (input_name in (None, name))
        and service in getattr(config.inputs, name).services
    ]
    if not ids:
        click.echo(f"No configured input has a service named {service!r}.", err=True)
        sys.exit(EXIT_CONFIG)
    try:
        lock = StateLock(config.state_dir(state_dir))  # never under a running collector
        try:
            outbox = Outbox(config.state_dir(state_dir))
            try:
                for input_id in ids:
                    scope = backfill_scope(input_id) if of_backfill else input_id
                    existed = outbox.reset_checkpoint(scope, service)
                    logger.warning(
                        "%s of %s/%s %s",
                        "Backfill" if of_backfill else "Checkpoint",
                        input_id,
                        service,
                        "reset" if existed else "did not exist; nothing to reset",
                    )
            finally:
                outbox.close()
        finally:
            lock.release()
    except CollectorError as exc:
        logger.error("%s", exc)
        sys.exit(EXIT_FAILURE)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8443, show_default=True, type=int)
@click.option("--seed", default=1, show_default=True, type=int)
@click.option("--hosts", default=50, show_default=True, type=int)
@click.option("--detections-per-host", default=5, show_default=True, type=int)
@click.option("--fim-events", default=500, show_default=True, type=int)
@click.option("--fim-incidents", default=20, show_default=True, type=int)
@click.option("--activity-rows", default=200, show_default=True, type=int)
@click.option("--scans", default=20, show_default=True, type=int)
@click.option("--username", default="demo", show_default=True)
@click.option("--password", default="demo", show_default=True)
@click.option("--concurrency-limit", default=2, show_default=True, type=int)
@click.option("--rate-limit", default=300, show_default=True, type=int, help="Calls per window per API.")
@click.option("--rate-window", default=3600, show_default=True, type=int, help="Seconds.")
@click.option(
    "--host-interval-minutes",
    default=1440,
    show_default=True,
    type=click.IntRange(1),
    help="How often each host is re-processed (its detections change state each time).",
)
@click.option("--fault", "faults", multiple=True, help="KIND[:key=value,...], e.g. 409:code=1965,times=2")
@click.option(
    "--shape",
    "shapes",
    multiple=True,
    help="Write answers in this odd shape of real payloads (comments, cdata, bom, warning...; see "
    "simulator/shapes.py); the default data's shapes when none is given, 'clean' for none.",
)
def simulate(
    host: str,
    port: int,
    seed: int,
    hosts: int,
    detections_per_host: int,
    fim_events: int,
    fim_incidents: int,
    activity_rows: int,
    scans: int,
    username: str,
    password: str,
    concurrency_limit: int,
    rate_limit: int,
    rate_window: int,
    host_interval_minutes: int,
    faults: tuple[str, ...],
    shapes: tuple[str, ...],
) -> None:
    """Serve a simulated Qualys subscription (VM API and FIM gateway) on one port."""
    setup_logging()
    try:
        from qualys_collector.simulator import Limits, SimConfig, Simulator
        from qualys_collector.simulator.faults import parse_fault
    except ImportError as exc:
        _missing_extra("simulate", exc)

    config = SimConfig(
        seed=seed,
        hosts=hosts,
        detections_per_host=detections_per_host,
        scans=scans,
        activity_rows=activity_rows,
        fim_events=fim_events,
        fim_incidents=fim_incidents,
        host_interval=timedelta(minutes=host_interval_minutes),
    )
    try:
        sim = Simulator(
            config,
            username=username,
            password=password,
            vm_limits=Limits(rate=rate_limit, window=rate_window, concurrency=concurrency_limit),
            shapes=[s for s in shapes if s != "clean"] if shapes else None,
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--shape") from None
    for spec in faults:
        try:
            sim.faults.arm(parse_fault(spec))
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--fault") from None
    url = sim.start(host, port)
    logger.info("Qualys simulator serving %s (VM API under /api/<version>/fo/, FIM gateway at /auth and /fim/)", url)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    sim.stop()


@main.command()
@click.option("--hosts", default=200, show_default=True, type=click.IntRange(1, 1_000_000))
@click.option(
    "--minutes",
    default=1440,
    show_default=True,
    type=click.IntRange(10, 60 * 24 * 90),
    help="Length of the simulated history to pull.",
)
@click.option("--dir", "directory", default="qualys-demo", show_default=True, type=click.Path(path_type=Path))
def demo(hosts: int, minutes: int, directory: Path) -> None:
    """Start the built-in simulator and pull all six services once into ./qualys-demo/."""
    try:
        from qualys_collector.demo import run_demo
    except ImportError as exc:
        _missing_extra("demo", exc)
    sys.exit(run_demo(directory, hosts=hosts, minutes=minutes))


def _missing_extra(command: str, exc: ImportError) -> NoReturn:
    """Exit 2 with the install command when ``command`` lacks the ``demo`` extra; re-raise any other ImportError."""
    if (exc.name or "").split(".")[0] not in DEMO_EXTRA:
        raise exc
    click.echo(
        f"qualys-collector {command} needs the optional 'demo' dependencies ({', '.join(DEMO_EXTRA)}), "
        f"which are not installed ({exc}). Fix: pip install 'qualys-collector[demo]' "
        "(from a clone: pip install -e '.[demo]')",
        err=True,
    )
    sys.exit(EXIT_CONFIG)


@main.command("check")
@config_option
@state_option
def check_command(config_path: Path, state_dir: Path | None) -> None:
    """Try each output's connection and each input's authentication, without pulling data."""
    setup_logging()
    config = _load(config_path)
    from qualys_collector.app import check

    results = check(config, state_dir)
    for name, ok, message in results:
        click.echo(scrub(f"{'OK    ' if ok else 'FAILED'} {name}: {message}"))
    sys.exit(0 if results and all(ok for _n, ok, _m in results) else EXIT_FAILURE)
