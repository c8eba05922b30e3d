"""Request metrics in Prometheus text format, counted by route *template*, never by requested path.

BentoML's own metrics label every requested path (300 requests to made-up paths added 6,000 series),
so the service turns them off and the gate counts here: the known routes by name, every other path
in the one bucket ``other``. The label set is therefore bounded by routes x statuses x methods.
"""

from __future__ import annotations

import threading
from collections import defaultdict

BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
OTHER = "other"


class RequestMetrics:
    """Counts and latency histograms per ``(route, method, status)``."""

    def __init__(self, routes: frozenset[str]) -> None:
        self.routes = routes
        self._lock = threading.Lock()
        self._count: dict[tuple[str, str, int], int] = defaultdict(int)
        self._sum: dict[tuple[str, str, int], float] = defaultdict(float)
        self._buckets: dict[tuple[str, str, int], list[int]] = {}

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

    def render(self) -> bytes:
        """The Prometheus exposition text."""
        lines = ["# HELP rgops_requests_total Requests answered, by route template, method and status.",
                 "# TYPE rgops_requests_total counter"]
        with self._lock:
            keys = sorted(self._count)
            for route, method, status in keys:
                lines.append(f'rgops_requests_total{{route="{route}",method="{method}",status="{status}"}} '
                             f"{self._count[(route, method, status)]}")
            lines += ["# HELP rgops_request_seconds Request latency in seconds.",
                      "# TYPE rgops_request_seconds histogram"]
            for key in keys:
                route, method, status = key
                labels = f'route="{route}",method="{method}",status="{status}"'
                for bound, n in zip(BUCKETS_S, self._buckets[key]):
                    lines.append(f'rgops_request_seconds_bucket{{{labels},le="{bound}"}} {n}')
                lines.append(f'rgops_request_seconds_bucket{{{labels},le="+Inf"}} {self._count[key]}')
                lines.append(f"rgops_request_seconds_sum{{{labels}}} {self._sum[key]:.6f}")
                lines.append(f"rgops_request_seconds_count{{{labels}}} {self._count[key]}")
        return ("\n".join(lines) + "\n").encode()
