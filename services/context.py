"""Per-request state shared by the gate (``services/security.py``) that creates it, the error mapping
(``services/errors.py``) that quotes its id and the APIs that note the model version they used; none
of them imports another for it.

The state is a small mutable object in a context variable: BentoML runs a sync API in a worker thread
with a copy of the request's context, so the object (not the variable) carries what the API notes
back to the gate's log line. The service's health (``/readyz``) is published here too.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rgops.serving.workers import WorkerGroup


@dataclass
class RequestState:
    request_id: str
    model: str | None = None


request_state_var: contextvars.ContextVar[RequestState | None] = contextvars.ContextVar("rgops_request",
                                                                                        default=None)

#: ``() -> (ready, JSON body)`` installed by the service once its model slots exist.
HEALTH: list[Callable[[], tuple[bool, dict[str, Any]]]] = []
#: route -> a check that raises ServiceUnavailable while that route's model is not loaded (the gate
#: answers 503 before reading the body; a batched API cannot return an error response itself).
NEEDS_MODEL: dict[str, Callable[[], object]] = {}
#: route -> ``(JSON body) -> JSON answer``: a route the gate answers itself, in a worker thread, without
#: BentoML's request path (its routing, validation, tracing and response layers cost several times the
#: model call: bench/serve.py). Installed by the service; the handler validates with the route's own
#: input model and raises RgopsError for the gate's error mapping.
DIRECT: dict[str, Callable[[bytes], Any]] = {}


def current_request_id() -> str | None:
    """The id of the request being served in this context (None outside a request)."""
    state = request_state_var.get()
    return state.request_id if state else None


def note_model(name: str, version: str) -> None:
    """Record the model version a request used, for its log line."""
    state = request_state_var.get()
    if state is not None:
        state.model = f"{name}:{version}"


@functools.cache
def worker_group(workers: int) -> WorkerGroup | None:
    """This worker's :class:`WorkerGroup` when the server runs ``workers`` > 1 processes (else None):
    one per process, shared by the gate (``/metrics``) and the service (``/admin/reload``)."""
    if workers <= 1:
        return None
    group = WorkerGroup.for_this_server()
    group.join()
    return group
