"""The server's cross-request batching (`duorank.serve.batcher`): what is queued runs as one batch, each job
gets its own share, bad input fails only its own job, a full queue refuses at once."""

from __future__ import annotations

import threading
import time

import pytest

from duorank.serve.batcher import Batcher, Full


def test_queued_jobs_run_together_and_get_their_own_results():
    gate, seen = threading.Event(), []

    def run(key, items):
        gate.wait(10)
        seen.append((key, list(items)))
        return [x * 10 for x in items], {"work": 0.001 * len(items)}

    batches = []

    def on_batch(n, stages, waits):
        batches.append((n, stages, len(waits)))

    b = Batcher("t", run, max_batch=100, max_items=100, on_batch=on_batch)
    first = b.submit("k", [1])  # runs alone while the others queue behind it
    time.sleep(0.05)
    later = [b.submit("k", [i, i + 1]) for i in range(2, 8, 2)] + [b.submit("other", [9])]
    time.sleep(0.05)
    gate.set()
    assert first.result(10).results == [10]
    done = [f.result(10) for f in later]
    assert [d.results for d in done] == [[20, 30], [40, 50], [60, 70], [90]]
    assert seen[1] == ("k", [2, 3, 4, 5, 6, 7]) and seen[2] == ("other", [9])  # one batch per key
    # each job knows how long it waited and the stages of the batch it ran in
    assert all(d.queue_s >= 0.05 for d in done) and done[0].batch == 6 and done[3].batch == 1
    assert done[0].stages == {"work": 0.006}
    assert batches == [(1, {"work": 0.001}, 1), (6, {"work": 0.006}, 3), (1, {"work": 0.001}, 1)]
    b.close()


def test_a_bad_job_fails_alone_and_a_full_queue_refuses():
    gate = threading.Event()

    def run(key, items):
        gate.wait(10)
        if any(x < 0 for x in items):
            raise ValueError(f"negative item in {items}")
        return items, {}

    b = Batcher("t", run, max_batch=100, max_items=3)
    b.submit("k", [0])
    time.sleep(0.05)
    good, bad = b.submit("k", [1]), b.submit("k", [-1])
    with pytest.raises(Full, match="at most 3"):
        b.submit("k", [2, 3])
    cancelled = b.submit("k", [5])
    assert b.queued == 3
    assert cancelled.cancel()  # its caller went away before the batch started: dropped at once
    assert b.queued == 2 and b.dropped == 1
    b.submit("k", [6]).cancel()  # room again for one more
    gate.set()
    assert good.result(10).results == [1]
    with pytest.raises(ValueError, match="negative"):
        bad.result(10)
    b.close()
    assert b.dropped == 2 and b.queued == 0
    with pytest.raises(ValueError, match="must be >= 1"):
        Batcher("t", run, max_batch=0, max_items=1)
