"""rgops.serving.batching: concurrent requests share model calls, each gets its own results in order,
an error reaches only the requests of its batch, and nothing waits for a batch to fill."""

from __future__ import annotations

import threading
import time

import pytest

from rgops.errors import ServiceUnavailable
from rgops.serving.batching import GreedyBatcher


def test_concurrent_requests_share_calls_and_get_their_own_results() -> None:
    gate = threading.Event()
    calls: list[int] = []

    def fn(items: list[int]) -> list[int]:
        if not calls:
            gate.wait(5)  # hold the first call so that the others queue up behind it
        calls.append(len(items))
        return [i * 10 for i in items]

    b = GreedyBatcher(fn, max_items=100)
    out: dict[int, list[int]] = {}
    first = threading.Thread(target=lambda: out.__setitem__(-1, b.submit([0])))
    first.start()
    time.sleep(0.2)
    threads = [threading.Thread(target=lambda k=k: out.__setitem__(k, b.submit([k, k + 1000]))) for k in range(1, 9)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    gate.set()
    for t in [first, *threads]:
        t.join(10)
    assert out[-1] == [0]
    assert all(out[k] == [k * 10, (k + 1000) * 10] for k in range(1, 9))
    assert calls[0] == 1 and sum(calls) == 17 and len(calls) < 9  # the 8 waiting requests shared calls
    b.close()


def test_max_items_bounds_a_call_and_one_request_alone_does_not_wait() -> None:
    sizes: list[int] = []
    b = GreedyBatcher(lambda items: (sizes.append(len(items)), items)[1], max_items=4)
    t0 = time.perf_counter()
    assert b.submit(["a"]) == ["a"]
    assert time.perf_counter() - t0 < 0.5  # greedy: no wait for a batch to fill
    assert b.submit([]) == []
    assert b.submit(list(range(6))) == list(range(6))  # a request above max_items runs alone, whole
    assert max(sizes) == 6 and sizes[0] == 1
    b.close()


def test_an_error_reaches_the_requests_of_its_batch_and_the_batcher_keeps_serving() -> None:
    def fn(items: list[int]) -> list[int]:
        if -1 in items:
            raise ValueError("bad batch")
        return items

    b = GreedyBatcher(fn, max_items=8)
    with pytest.raises(ValueError, match="bad batch"):
        b.submit([-1])
    assert b.submit([1, 2]) == [1, 2]
    wrong = GreedyBatcher(lambda items: items[:-1], max_items=8)
    with pytest.raises(RuntimeError, match="returned 1 results for 2 items"):
        wrong.submit([1, 2])
    b.close()
    wrong.close()
    with pytest.raises(ServiceUnavailable, match="shutting down"):
        b.submit([1])


def test_a_request_that_waits_too_long_gets_503() -> None:
    b = GreedyBatcher(lambda items: (time.sleep(1.0), items)[1], max_items=8)
    with pytest.raises(ServiceUnavailable, match="did not answer within 0.1 s"):
        b.submit([1], timeout=0.1)
    b.close()
