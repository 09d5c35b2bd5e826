"""Batching across requests: jobs from many requests wait in one bounded queue, and one worker thread runs
whatever is queued as one batch (no fixed wait: while a batch runs the queue fills, and the next batch takes
what is there, up to its budget).

A job is a list of items with a key; only jobs of equal keys share a batch (an embedding's side, a
search's parameters). The worker calls `run(key, items) -> (results, stages)` with the items of all jobs
of the batch (`stages`: seconds per named stage of that batch, e.g. tokenize and inference) and hands each
job a `Done`: its share of the results, in order, with the time it waited and the batch's stages. The
queue holds at most `max_items` items: beyond it `submit` raises `Full` at once (a server answers 429). A
job whose caller gave up (its future cancelled) before its batch starts is dropped and counted.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("duorank.serve")


class Full(Exception):
    """The queue holds `max_items` items already: try again later."""


@dataclass(frozen=True)
class Done:
    """One job's answer: its results (one per item), the seconds it waited in the queue, and the seconds
    per stage of the batch it ran in, with that batch's size in items."""

    results: list[Any]
    queue_s: float
    stages: dict[str, float]
    batch: int


Run = Callable[[Hashable, list[Any]], tuple[Sequence[Any], dict[str, float]]]
OnBatch = Callable[[int, dict[str, float], list[float]], None]  # items, stages, each job's wait


@dataclass(eq=False)  # a job is itself: removing it from the queue compares identity
class _Job:
    key: Hashable
    items: Sequence[Any]
    future: Future[Done] = field(default_factory=Future)
    queued_at: float = field(default_factory=time.perf_counter)


class Batcher:
    """One queue and one worker thread around `run(key, items) -> (results, stages)` (one result per
    item); `on_batch(items, stages, waits)` is called after each batch that ran (a server's metrics), with
    the seconds each of its jobs waited."""

    def __init__(
        self,
        name: str,
        run: Run,
        *,
        max_batch: int,
        max_items: int,
        on_batch: OnBatch | None = None,
    ) -> None:
        if max_batch < 1 or max_items < 1:
            raise ValueError(f"max_batch {max_batch} and max_items {max_items} must be >= 1")
        self.name, self.run, self.max_batch, self.max_items = name, run, max_batch, max_items
        self.on_batch = on_batch
        self.queued = 0  # items waiting
        self.running = 0  # items of the batch running now
        self.batches = 0  # batches run
        self.dropped = 0  # items of jobs whose caller gave up before their batch started
        self._jobs: collections.deque[_Job] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name=f"duorank-{name}", daemon=True)
        self._thread.start()

    def submit(self, key: Hashable, items: Sequence[Any]) -> Future[Done]:
        """Queue one job; its future gets the job's `Done` or the batch's error."""
        job = _Job(key, list(items))
        with self._cond:
            if self._closed:
                raise RuntimeError(f"the {self.name} queue is closed")
            if self.queued and self.queued + len(job.items) > self.max_items:
                raise Full(f"{self.queued} {self.name} items queued (at most {self.max_items})")
            self._jobs.append(job)
            self.queued += len(job.items)
            self._cond.notify()
        job.future.add_done_callback(lambda f: self._forget(job) if f.cancelled() else None)
        return job.future

    def _forget(self, job: _Job) -> None:
        """A job cancelled while it waits leaves the queue at once: its items no longer count against
        max_items (clients that time out must not fill the queue for the ones that follow)."""
        with self._cond:
            try:
                self._jobs.remove(job)
            except ValueError:  # already taken into a batch: the worker counts it as dropped
                return
            self.queued -= len(job.items)
            self.dropped += len(job.items)

    def close(self) -> None:
        """Run what is queued, then stop the worker."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()

    def _take(self) -> list[_Job] | None:
        """The next batch: the first queued job and the queued jobs of its key, up to max_batch items."""
        with self._cond:
            while not self._jobs and not self._closed:
                self._cond.wait()
            if not self._jobs:
                return None
            first = self._jobs.popleft()
            batch, n = [first], len(first.items)
            rest: collections.deque[_Job] = collections.deque()
            while self._jobs:
                job = self._jobs.popleft()
                if job.key == first.key and n + len(job.items) <= self.max_batch:
                    batch.append(job)
                    n += len(job.items)
                else:
                    rest.append(job)
            self._jobs.extendleft(reversed(rest))
            self.queued -= n
            return batch

    def _work(self) -> None:
        while (batch := self._take()) is not None:
            live = []
            for j in batch:
                if j.future.set_running_or_notify_cancel():
                    live.append(j)
                else:
                    self.dropped += len(j.items)
            if not live:
                continue
            self.running = sum(len(j.items) for j in live)
            try:
                self._answer(live)
            finally:
                self.running = 0

    def _answer(self, live: list[_Job]) -> None:
        """Run one batch and settle each job's future."""
        started = time.perf_counter()
        waits = [started - j.queued_at for j in live]
        try:
            results, stages = self._run(live, waits)
        except Exception:
            if len(live) == 1:
                self._fail(live)
                return
            # one job's bad input must not fail the others: each job alone, each with its own answer
            for j, wait in zip(live, waits):
                try:
                    alone, stages = self._run([j], [wait])
                    j.future.set_result(Done(alone, wait, stages, len(j.items)))
                except Exception:
                    self._fail([j])
            return
        n, start = len(results), 0
        for j, wait in zip(live, waits):
            j.future.set_result(Done(results[start : start + len(j.items)], wait, stages, n))
            start += len(j.items)

    def _run(self, jobs: list[_Job], waits: list[float]) -> tuple[list[Any], dict[str, float]]:
        items = [x for j in jobs for x in j.items]
        got, stages = self.run(jobs[0].key, items)
        results = list(got)
        self.batches += 1
        if len(results) != len(items):
            raise RuntimeError(f"{self.name}: {len(results)} results for {len(items)} items")
        if self.on_batch is not None:
            self.on_batch(len(items), stages, waits)
        return results, stages

    @staticmethod
    def _fail(jobs: list[_Job]) -> None:
        import sys

        e = sys.exc_info()[1]
        assert e is not None
        for j in jobs:
            j.future.set_exception(e)
