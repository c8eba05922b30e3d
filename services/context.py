"""The request id of the request being served, shared by the gate (``services/security.py``) that
sets it and the error mapping (``services/errors.py``) that quotes it; neither imports the other."""

from __future__ import annotations

import contextvars

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("rgops_request_id", default=None)


def current_request_id() -> str | None:
    """The id of the request being served in this context (None outside a request)."""
    return request_id_var.get()
