"""Soak: the real ``run`` (not ``--once``) for a long time against each misbehaving relay, side by side.

Each relay (``tests/helpers/soak.py``: no ``close_notify``; holds the connection open; refuses the client
certificate, three ways) gets its own collector process pulling from one simulator that keeps producing data.
At the end: extra copies at the relay (≤ one batch), events lost or left pending, ``/readyz`` and its reason,
the ``output_halted`` gauge, the numbered delivery errors logged, and the exit after SIGTERM. One line per relay;
the exit status is 1 when any expectation failed.

    python bench/soak_relays.py                      # 600 s per relay, all relays at once
    python bench/soak_relays.py --seconds 60 --relay holds-open
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.helpers.soak import RELAYS, SoakResult, soak, soak_simulation

from qualys_collector.simulator import Simulator


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=600.0, help="how long each collector runs (default 600)")
    parser.add_argument("--relay", action="append", choices=sorted(RELAYS), help="only these relays (repeatable)")
    parser.add_argument("--period", type=int, default=30, help="each service's request period in seconds")
    parser.add_argument("--stall", type=float, default=300.0, help="delivery_stall_seconds (the product's default)")
    parser.add_argument(
        "--confirm-timeout", type=float, default=30.0, help="confirm_timeout_seconds (the product's default)"
    )
    parser.add_argument("--keep", type=Path, help="work in this directory and keep it (logs, state, stored lines)")
    args = parser.parse_args()
    names = args.relay or sorted(RELAYS)
    simulator = Simulator(soak_simulation())
    url = simulator.start()
    scratch = None if args.keep else tempfile.TemporaryDirectory(prefix="soak-")
    root = args.keep or Path(scratch.name if scratch else ".")
    started = time.monotonic()
    try:
        with ThreadPoolExecutor(len(names)) as pool:
            futures = {
                name: pool.submit(
                    soak,
                    name,
                    root / name,
                    url,
                    args.seconds,
                    period=args.period,
                    stall=args.stall,
                    confirm_timeout=args.confirm_timeout,
                )
                for name in names
            }
            results: list[SoakResult] = [futures[name].result() for name in names]
    finally:
        simulator.stop()
        if scratch is not None:
            scratch.cleanup()
    wall = time.monotonic() - started
    print(
        f"soak: {len(names)} relays side by side, {args.seconds:.0f} s each, period {args.period} s, "
        f"confirm_timeout {args.confirm_timeout:.0f} s, delivery_stall {args.stall:.0f} s; "
        f"wall {wall:.0f} s"
    )
    failed = False
    for result in results:
        print(result.line())
        for failure in result.failures():
            failed = True
            print(f"    FAILED: {failure}")
        if result.failures():
            print("    log tail:\n" + result.log_tail)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
