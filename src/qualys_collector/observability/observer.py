"""One observer for everything the collector reports as it runs: metrics, health and progress displays.

The composition root builds one :class:`Observer` and passes it to the constructors that report: the
scheduler (pages and cycles), every Qualys client (answers, token renewals) and every drainer
(deliveries). Each of those declares only the methods it calls, as a protocol in its own module
(:class:`~qualys_collector.engine.scheduler.CycleObserver`,
:class:`~qualys_collector.qualys.http.ApiObserver`, :class:`~qualys_collector.sinks.drain.DeliveryObserver`),
so no layer imports this one. Every method here does nothing: subclass and override what you watch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qualys_collector.engine.cycle import CycleStats, Job


class Observer:
    """Does nothing; a subclass overrides the events it watches."""

    def page(self, job: Job, stats: CycleStats) -> None:
        """A page of ``job`` was committed; ``stats`` are the cycle's figures so far."""

    def cycle(self, job: Job, stats: CycleStats | None) -> None:
        """A cycle of ``job`` ended (``None``: it failed; ``stats.completed`` is False when it was stopped)."""

    def api_answer(self, api: str, status: int) -> None:
        """Qualys answered a call to ``api`` with HTTP ``status``."""

    def token_issued(self) -> None:
        """The FIM gateway issued an access token."""

    def delivery(self, output: str, count: int, ok: bool) -> None:
        """A batch of ``count`` events was confirmed by ``output`` (``ok``) or not."""

    def delivery_halted(self, output: str, reason: str) -> None:
        """``output`` stopped re-sending a batch its relay would not confirm (events stay in the outbox)."""


class Observers(Observer):
    """Several observers as one, called in order."""

    def __init__(self, *observers: Observer) -> None:
        self.observers = observers

    def page(self, job: Job, stats: CycleStats) -> None:
        for observer in self.observers:
            observer.page(job, stats)

    def cycle(self, job: Job, stats: CycleStats | None) -> None:
        for observer in self.observers:
            observer.cycle(job, stats)

    def api_answer(self, api: str, status: int) -> None:
        for observer in self.observers:
            observer.api_answer(api, status)

    def token_issued(self) -> None:
        for observer in self.observers:
            observer.token_issued()

    def delivery(self, output: str, count: int, ok: bool) -> None:
        for observer in self.observers:
            observer.delivery(output, count, ok)

    def delivery_halted(self, output: str, reason: str) -> None:
        for observer in self.observers:
            observer.delivery_halted(output, reason)
