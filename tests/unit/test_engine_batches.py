"""The engine's batch scheduler on plain pull functions: what it yields, commits, splits and raises."""

from __future__ import annotations

import errno
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from qualys_collector.engine.batches import Batches, BatchProgress, pull_batches
from qualys_collector.errors import PullError, PullTimeoutError
from qualys_collector.model import Page, Record


def pages_of(batch: list[int], token: Any, *, step: int = 2) -> Iterator[Page]:
    """Records ``low..high``, ``step`` per page, each page's token the next ID."""
    low = token["next"] if token else batch[0]
    while low <= batch[1]:
        high = min(batch[1], low + step - 1)
        yield Page(
            [Record(data={"id": i}, key=str(i)) for i in range(low, high + 1)],
            token={"next": high + 1} if high < batch[1] else None,
        )
        low = high + 1


def remaining(batch: list[int], token: Any) -> list[int]:
    return [token["next"], batch[1]]


def test_given_a_worker_failing_with_a_foreign_error_then_the_window_fails_naming_the_batch() -> None:
    def pull(batch: list[int], token: Any) -> Iterator[Page]:
        if batch[0] == 20:
            raise OSError(errno.ENOSPC, "No space left on device")
        return pages_of(batch, token)

    progress = BatchProgress(plan=[[0, 9], [10, 19], [20, 29]])
    got: list[int] = []

    def consume() -> None:
        for item in pull_batches(Batches(pull, remaining, workers=1, what="IDs"), progress):
            assert item.page is not None
            got.extend(int(r.key) for r in item.page.records)

    with pytest.raises(PullError) as caught:
        consume()
    assert caught.value.code == 301
    assert "batch 3 of 3 (IDs 20-29) failed: OSError" in str(caught.value)
    assert isinstance(caught.value.__cause__, OSError)
    assert 2 not in progress.done
    assert set(got) <= set(range(20))


def test_given_a_timeout_after_committed_pages_then_only_what_is_left_is_split() -> None:
    calls: list[tuple[list[int], Any]] = []

    def pull(batch: list[int], token: Any) -> Iterator[Page]:
        calls.append((list(batch), token))
        pages = pages_of(batch, token)
        if batch == [0, 9]:
            yield next(pages)
            yield next(pages)
            raise PullTimeoutError("read timeout")
        yield from pages

    progress = BatchProgress(plan=[[0, 9]])
    seen = [
        int(r.key)
        for item in pull_batches(Batches(pull, remaining, workers=2), progress)
        for r in (item.page.records if item.page else [])
    ]
    assert sorted(seen) == list(range(10))  # nothing twice, nothing lost
    assert progress.plan == [[0, 9], [4, 6], [7, 9]]
    assert progress.splits == 1
    assert sorted(progress.done) == [0, 1, 2]
    assert progress.batches == 2


def test_given_stop_while_workers_are_blocked_then_the_progress_so_far_comes_back() -> None:
    stop = threading.Event()
    release = threading.Event()

    def pull(batch: list[int], token: Any) -> Iterator[Page]:
        if batch[0] == 0:
            yield from pages_of(batch, token)
        else:
            release.wait(30)  # a worker stuck in a slow answer
            yield from pages_of(batch, token)

    progress = BatchProgress(plan=[[0, 3], [4, 7]])
    items = pull_batches(Batches(pull, remaining, workers=2), progress, stop)
    first = [next(items), next(items)]
    assert [item.index for item in first] == [0, 0]
    stop.set()
    marker = next(items)
    assert marker.page is None
    assert marker.progress["done"] == [0]
    with pytest.raises(PullError):  # a caller going on after a stop page
        next(items)
    release.set()


def test_progress_round_trips_through_json() -> None:
    progress = BatchProgress(plan=[[1, 5], [6, 9]], done=[1], partial={"0": {"next": 3}}, splits=0)
    assert BatchProgress.from_json(progress.to_json()) == progress
    assert progress.unfinished() == [0]
