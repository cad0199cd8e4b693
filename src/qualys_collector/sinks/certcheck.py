"""Is a client certificate signed by a CA chain? Answered in a short-lived process.

The standard library cannot verify a certificate against a chain without a connection, so pyOpenSSL does it;
but importing pyOpenSSL loads cryptography, about 10 MB that would stay in the collector's memory for the
rest of its life for one check at start-up. The check runs in its own process instead (``python -m
qualys_collector.sinks.certcheck CHAIN CERT``), which prints one JSON line: ``null`` when the chain signs the
certificate, else ``["chain" | "file", message]``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from qualys_collector import children

#: Seconds the checking process may take (it imports pyOpenSSL and reads two small files).
TIMEOUT = 60


def chain_problem(chain: Path, cert: Path) -> tuple[str, str] | None:
    """``None`` when ``chain`` signs ``cert``; else ``("chain", why)``, ``("file", why)``, or ``("check", why)``
    when the checking process itself could not run (``why`` ends with the last line it wrote to stderr)."""
    done: subprocess.CompletedProcess[bytes] | None = None
    try:
        done = subprocess.run(  # noqa: S603 - our own interpreter and module (see qualys_collector.children)
            children.command("qualys_collector.sinks.certcheck", str(chain), str(cert)),
            env=children.environment(),
            capture_output=True,
            timeout=TIMEOUT,
            check=False,
        )
        answer = json.loads(done.stdout.decode("utf-8", "replace").strip().splitlines()[-1])
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError) as exc:
        said = done.stderr.decode("utf-8", "replace").strip().splitlines() if done is not None else []
        return "check", f"the certificate check could not run ({type(exc).__name__}{': ' + said[-1] if said else ''})"
    if answer is None:
        return None
    kind, message = answer
    return str(kind), str(message)


def _check(chain: Path, cert: Path) -> tuple[str, str] | None:
    from OpenSSL import crypto

    try:
        store = crypto.X509Store()
        for pem in _pem_blocks(chain.read_bytes()):
            store.add_cert(crypto.load_certificate(crypto.FILETYPE_PEM, pem))
        leaf = crypto.load_certificate(crypto.FILETYPE_PEM, cert.read_bytes())
        crypto.X509StoreContext(store, leaf).verify_certificate()
    except crypto.X509StoreContextError as exc:
        return "chain", str(exc)
    except (crypto.Error, OSError) as exc:
        return "file", str(exc)
    return None


def _pem_blocks(data: bytes) -> list[bytes]:
    marker = b"-----END CERTIFICATE-----"
    return [block + marker for block in data.split(marker) if b"-----BEGIN CERTIFICATE-----" in block]


if __name__ == "__main__":
    print(json.dumps(_check(Path(sys.argv[1]), Path(sys.argv[2]))))
