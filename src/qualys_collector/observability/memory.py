"""The seeds' memory line: ``[GC] global: 20.4% -> 20.4%, process: RSS(34.50MiB -> 34.08MiB), VMS(...)``,
measured before and after a full garbage collection."""

from __future__ import annotations

import gc

import psutil


def gc_line() -> str:
    """Collect garbage and describe memory before -> after, as the seeds log it every 5 minutes."""
    process = psutil.Process()
    before_global = psutil.virtual_memory().percent
    before = process.memory_info()
    gc.collect()
    after = process.memory_info()
    after_global = psutil.virtual_memory().percent
    mib = 1024 * 1024
    return (
        f"[GC] global: {before_global:.1f}% -> {after_global:.1f}%, process: "
        f"RSS({before.rss / mib:.2f}MiB -> {after.rss / mib:.2f}MiB), "
        f"VMS({before.vms / mib:.2f}MiB -> {after.vms / mib:.2f}MiB)"
    )
