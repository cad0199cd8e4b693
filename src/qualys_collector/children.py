"""How the collector starts its own helper processes (the parsing processes, the certificate check).

Each runs one of this package's modules with the collector's interpreter: ``python -P -m MODULE``. ``-P`` keeps
the working directory off the module path, so a ``qualys_collector`` package there (a clone, another version) does
not run instead of ours. But a collector run from a source checkout (``python -m qualys_collector`` in ``src/``,
nothing installed) imports this package from that very directory, and ``-P`` would leave its helpers without it:
the parsing processes exited at start and every batch failed. So the directory this package was imported from goes
first on the helper's ``PYTHONPATH``, unless it is one of the interpreter's own site directories (an installed
collector: the helper finds the package there anyway). Either way the helper runs the collector's own tree.
"""

from __future__ import annotations

import os
import site
import sys
from pathlib import Path

#: The directory holding this package (``…/site-packages`` when installed, ``…/src`` in a checkout).
PACKAGE_ROOT = Path(__file__).resolve().parent.parent


def command(module: str, *args: str) -> list[str]:
    """``python -P -m module args…`` with the collector's interpreter."""
    return [sys.executable, "-P", "-m", module, *args]


def environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """The helper's environment: ``base`` (the collector's own by default), with :data:`PACKAGE_ROOT` first on
    ``PYTHONPATH`` when the interpreter would not find this package there by itself."""
    env = dict(os.environ if base is None else base)
    if not _is_site_directory(PACKAGE_ROOT):
        env["PYTHONPATH"] = os.pathsep.join([str(PACKAGE_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


def _is_site_directory(directory: Path) -> bool:
    sites = [*site.getsitepackages(), site.getusersitepackages()]
    return any(_same(directory, Path(entry)) for entry in sites)


def _same(a: Path, b: Path) -> bool:
    try:
        return a == b.resolve()
    except OSError:
        return False
