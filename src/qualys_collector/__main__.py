"""``python -m qualys_collector`` runs the CLI."""

from __future__ import annotations

from qualys_collector.cli import main

if __name__ == "__main__":
    main()
