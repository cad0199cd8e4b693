"""One window pulled as batches side by side: the plan, the worker threads, the hand-over queue and stop.

A service that can cut a window into independent integer ranges (host detection: ranges of host IDs)
describes them with :class:`Batches` (a function that pulls the pages of one range from a resume
token, what is left of a range after a token, how many ranges at a time) and :func:`pull_batches`
does the rest:

* workers take batch indexes from a queue and hand their pages over, at most ``ahead`` at a time; only
  the calling thread changes the :class:`BatchProgress`, and it yields the progress with each page, so
  what is committed with a page never runs ahead of the pages committed before it;
* the progress is plain JSON (the plan, the finished batches, each unfinished batch's last page token,
  the splits): committed with every page, a crash resumes at the unfinished batches from their last
  committed page and pulls nothing finished again;
* a batch that times out (:class:`~qualys_collector.errors.PullTimeoutError`) is split in two: what is
  left of it after its last committed page, so nothing committed is pulled twice;
* any other exception in a worker fails the window with a numbered error naming the batch (its
  traceback logged through the collector's logging); the batch stays unfinished for the next cycle;
* ``stop`` (SIGTERM) ends the wait at once: the caller gets one :class:`BatchPage` without a page,
  carrying the progress so far, and the workers are told to stop and waited for at most a second: they
  hold nothing that needs them (only the calling thread commits), and they are daemon threads.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from qualys_collector.errors import CollectorError, PullError, PullTimeoutError
from qualys_collector.model import JSON, Page

logger = logging.getLogger("qualys_collector.puller")

#: How often a waiting thread looks at ``stop``, in seconds.
POLL = 0.2
#: How long the workers are waited for once the batches end (or stop), in seconds.
JOIN_SECONDS = 1.0


@dataclass(frozen=True)
class Batches:
    """What a service says about its batches."""

    #: The pages of one range ``[low, high]``, from a resume token (``None``: from the start); the last
    #: page of a range has ``token=None``.
    pull: Callable[[list[int], Any], Iterator[Page]]
    #: What is left of a range after a page whose token is given: the part a split divides.
    remaining: Callable[[list[int], Any], list[int]]
    #: Ranges in flight at once.
    workers: int
    #: What a range holds, for messages ("host IDs").
    what: str = "IDs"
    #: Pages a worker may hand over before the calling thread has taken them.
    ahead: int = 2


@dataclass
class BatchProgress:
    """The plan of ranges and how far each got; JSON in the page token."""

    plan: list[list[int]]
    done: list[int] = field(default_factory=list)
    #: Index (as a string, JSON keys are) -> token of the batch's last committed page.
    partial: dict[str, Any] = field(default_factory=dict)
    splits: int = 0

    @classmethod
    def from_json(cls, data: JSON) -> BatchProgress:
        """The progress stored in a page token."""
        return cls(
            plan=[list(b) for b in data["plan"]],
            done=list(data.get("done", [])),
            partial=dict(data.get("partial", {})),
            splits=int(data.get("splits", 0)),
        )

    def to_json(self) -> JSON:
        """A copy as JSON (the caller may keep it while the progress moves on)."""
        return {
            "plan": [list(b) for b in self.plan],
            "done": list(self.done),
            "partial": dict(self.partial),
            "splits": self.splits,
        }

    def unfinished(self) -> list[int]:
        """Indexes of the batches still to pull, in plan order."""
        done = set(self.done)
        return [i for i in range(len(self.plan)) if i not in done]

    @property
    def batches(self) -> int:
        """Batches of the plan, a split batch counted once (its halves are its parts)."""
        return len(self.plan) - self.splits


@dataclass(frozen=True)
class BatchPage:
    """A page of one batch and the progress to commit with it; ``page`` is ``None`` when stop was requested
    (nothing new: commit the progress and stop)."""

    page: Page | None
    progress: JSON
    index: int = -1


def pull_batches(batches: Batches, progress: BatchProgress, stop: threading.Event | None = None) -> Iterator[BatchPage]:
    """Pages of every unfinished batch of ``progress`` as they arrive, each with the progress after it.

    Raises the numbered error of a batch that failed; returns when every batch has ended.
    """
    unfinished = set(progress.unfinished())
    if not unfinished:
        return
    todo: queue.Queue[int] = queue.Queue()
    for index in sorted(unfinished):
        todo.put(index)
    out: queue.Queue[tuple[str, int, Any]] = queue.Queue(maxsize=max(1, batches.ahead))
    halt = threading.Event()
    plan = list(progress.plan)  # the workers read ranges from this copy; only this thread appends
    threads = [
        threading.Thread(
            target=_worker,
            args=(batches, plan, dict(progress.partial), todo, out, halt),
            name=f"Batch-worker-{n}",
            daemon=True,
        )
        for n in range(max(1, min(batches.workers, len(unfinished))))
    ]
    for thread in threads:
        thread.start()
    try:
        while unfinished:
            try:
                kind, index, payload = out.get(timeout=POLL)
            except queue.Empty:
                if stop is not None and stop.is_set():
                    yield BatchPage(None, progress.to_json())
                    raise PullError(  # only if the caller went on after a stop page
                        "stop requested: the window stays open", code=301, retryable=True
                    ) from None
                if not any(thread.is_alive() for thread in threads):  # pragma: no cover - workers report all
                    raise PullError("the batch workers ended with batches unfinished", code=301) from None
                continue
            if kind == "page":
                page: Page = payload
                if page.token is None:
                    progress.done.append(index)
                    progress.partial.pop(str(index), None)
                    unfinished.discard(index)
                else:
                    progress.partial[str(index)] = page.token
                yield BatchPage(page, progress.to_json(), index)
                continue
            exc: BaseException = payload
            left = _left(batches, progress, index)
            if isinstance(exc, PullTimeoutError) and left[1] > left[0]:
                middle = (left[0] + left[1]) // 2
                logger.warning(
                    "Batch %d-%d timed out; splitting what is left of it (%d-%d) in two",
                    progress.plan[index][0],
                    progress.plan[index][1],
                    left[0],
                    left[1],
                )
                first = len(progress.plan)
                for half in ([left[0], middle], [middle + 1, left[1]]):
                    progress.plan.append(half)
                    plan.append(half)
                progress.done.append(index)
                progress.partial.pop(str(index), None)
                progress.splits += 1
                unfinished.discard(index)
                unfinished.update((first, first + 1))
                todo.put(first)
                todo.put(first + 1)
                continue
            raise _failure(batches, progress, index, exc)
    finally:
        halt.set()
        with contextlib.suppress(queue.Empty):
            while True:
                out.get_nowait()
        deadline = time.monotonic() + JOIN_SECONDS
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))


def _left(batches: Batches, progress: BatchProgress, index: int) -> list[int]:
    batch = progress.plan[index]
    token = progress.partial.get(str(index))
    return list(batch) if token is None else batches.remaining(batch, token)


def _failure(batches: Batches, progress: BatchProgress, index: int, exc: BaseException) -> CollectorError:
    """The numbered error that fails the window for a batch that failed with ``exc``.

    A collector error keeps its number and fix, with the batch named; anything else (a body that fails to
    decode, a full disk under a spool) is logged with its traceback through the collector's logging and
    becomes a PullError 301.
    """
    batch = progress.plan[index]
    where = f"batch {index + 1} of {len(progress.plan)} ({batches.what} {batch[0]}-{batch[1]})"
    if isinstance(exc, CollectorError):
        exc.message = f"{exc.message} [{where}]"
        return exc
    logger.error("%s failed unexpectedly", where, exc_info=exc)
    failure = PullError(
        f"{where} failed: {type(exc).__name__}: {exc}",
        code=301,
        retryable=True,
        fix="nothing is lost: the window stays open and the next cycle pulls this batch from its last committed page",
    )
    failure.__cause__ = exc
    return failure


def _worker(
    batches: Batches,
    plan: list[list[int]],
    resume: dict[str, Any],
    todo: queue.Queue[int],
    out: queue.Queue[tuple[str, int, Any]],
    halt: threading.Event,
) -> None:
    """Pull batches until ``halt``; every outcome, any exception included, goes to ``out``.

    ``resume`` holds the committed tokens of the batches unfinished at the start (halves start afresh).
    """

    def put(item: tuple[str, int, Any]) -> bool:
        while not halt.is_set():
            try:
                out.put(item, timeout=POLL)
            except queue.Full:
                continue
            return True
        return False

    while not halt.is_set():
        try:
            index = todo.get(timeout=POLL)
        except queue.Empty:
            continue
        pages: Iterator[Page] = iter(())
        try:
            ended = False
            pages = iter(batches.pull(plan[index], resume.get(str(index))))
            for page in pages:
                if halt.is_set() or not put(("page", index, page)):
                    return
                ended = page.token is None
            if not ended and not put(("page", index, Page([], token=None, requests=0))):
                return
        except Exception as exc:  # noqa: BLE001 - any failure is the window's: reported, never lost in a thread
            if halt.is_set() or not put(("error", index, exc)):
                return
        finally:
            close = getattr(pages, "close", None)  # a generator's HTTP answer is closed here, not by the GC
            if close is not None:
                with contextlib.suppress(Exception):  # closing is best effort; the outcome was reported
                    close()


__all__ = ["BatchPage", "BatchProgress", "Batches", "pull_batches"]
