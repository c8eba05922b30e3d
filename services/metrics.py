"""Request metrics in Prometheus text format, counted by route *template*, never by requested path.

BentoML's own metrics label every requested path (300 requests to made-up paths added 6,000 series),
so the service turns them off and the gate counts here: the known routes by name, every other path
in the one bucket ``other``. The label set is therefore bounded by routes x statuses x methods.

With several workers (``serve.workers``) each one counts its own requests and writes a snapshot to
the server's shared folder (:class:`rgops.serving.workers.WorkerGroup`) within 50 ms of a change;
the worker that answers ``/metrics`` asks every worker for a fresh snapshot, waits at most
``SYNC_WAIT_S`` for them, and sums all of them, so a scrape sees the whole server.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from typing import Any

from rgops.serving.workers import WorkerGroup

BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
OTHER = "other"
TOPIC = "metrics"
SYNC_WAIT_S = 0.5
FLUSH_S = 0.05

Key = tuple[str, str, int]


class RequestMetrics:
    """Counts and latency histograms per ``(route, method, status)``."""

    def __init__(self, routes: frozenset[str], group: WorkerGroup | None = None) -> None:
        self.routes = routes
        self.group = group
        self._lock = threading.Lock()
        self._count: dict[Key, int] = defaultdict(int)
        self._sum: dict[Key, float] = defaultdict(float)
        self._buckets: dict[Key, list[int]] = {}
        self._dirty = threading.Event()
        if group is not None:
            threading.Thread(target=self._flush_loop, name="rgops-metrics-flush", daemon=True).start()

    def route_of(self, path: str) -> str:
        """The label of a requested path: itself when it is a known route, else ``other``."""
        return path if path in self.routes else OTHER

    def observe(self, path: str, method: str, status: int, seconds: float) -> None:
        method = method if method in ("GET", "POST", "HEAD", "OPTIONS") else OTHER
        key = (self.route_of(path), method, int(status))
        with self._lock:
            self._count[key] += 1
            self._sum[key] += seconds
            counts = self._buckets.setdefault(key, [0] * len(BUCKETS_S))
            for i, bound in enumerate(BUCKETS_S):
                if seconds <= bound:
                    counts[i] += 1
        self._dirty.set()

    # -- several workers ------------------------------------------------------------------------------

    def _series(self) -> list[list[Any]]:
        with self._lock:
            return [[*key, self._count[key], self._sum[key], list(self._buckets[key])] for key in self._count]

    def _flush_loop(self) -> None:
        assert self.group is not None
        synced = None
        while True:
            time.sleep(FLUSH_S)
            wanted = self.group.latest(TOPIC)
            if self._dirty.is_set() or wanted != synced:
                self._dirty.clear()
                synced = wanted
                try:
                    self.group.write_snapshot(TOPIC, {"sync": wanted or "", "series": self._series()})
                except OSError:  # the folder is gone: the server is stopping
                    return

    def _totals(self) -> tuple[dict[Key, int], dict[Key, float], dict[Key, list[int]]]:
        """This worker's counters, plus every other worker's (fresh snapshots, waited for briefly)."""
        count: dict[Key, int] = defaultdict(int)
        total: dict[Key, float] = defaultdict(float)
        buckets: dict[Key, list[int]] = {}
        rows = self._series()
        if self.group is not None:
            token = self.group.announce(TOPIC)
            deadline = time.monotonic() + SYNC_WAIT_S
            others = set(self.group.live_pids()) - {self.group.pid}
            while True:
                snaps = self.group.snapshots(TOPIC)
                if all(snaps.get(pid, {}).get("sync", "") >= token for pid in others) \
                        or time.monotonic() >= deadline:
                    break
                time.sleep(0.01)
            rows += [row for snap in snaps.values() for row in snap.get("series", [])]
        for route, method, status, n, seconds, counts in rows:
            key = (str(route), str(method), int(status))
            count[key] += int(n)
            total[key] += float(seconds)
            merged = buckets.setdefault(key, [0] * len(BUCKETS_S))
            for i, c in enumerate(counts[: len(BUCKETS_S)]):
                merged[i] += int(c)
        return count, total, buckets

    def render(self) -> bytes:
        """The Prometheus exposition text (the whole server's, with several workers)."""
        count, total, buckets = self._totals()
        lines = ["# HELP rgops_requests_total Requests answered, by route template, method and status.",
                 "# TYPE rgops_requests_total counter"]
        keys = sorted(count)
        for route, method, status in keys:
            lines.append(f'rgops_requests_total{{route="{route}",method="{method}",status="{status}"}} '
                         f"{count[(route, method, status)]}")
        lines += ["# HELP rgops_request_seconds Request latency in seconds.",
                  "# TYPE rgops_request_seconds histogram"]
        for key in keys:
            route, method, status = key
            labels = f'route="{route}",method="{method}",status="{status}"'
            for bound, n in zip(BUCKETS_S, buckets[key]):
                lines.append(f'rgops_request_seconds_bucket{{{labels},le="{bound}"}} {n}')
            lines.append(f'rgops_request_seconds_bucket{{{labels},le="+Inf"}} {count[key]}')
            lines.append(f"rgops_request_seconds_sum{{{labels}}} {total[key]:.6f}")
            lines.append(f"rgops_request_seconds_count{{{labels}}} {count[key]}")
        return ("\n".join(lines) + "\n").encode()
