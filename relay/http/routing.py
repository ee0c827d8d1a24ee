"""A route: its method, path and handler, and what the OpenAPI document says of it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from aiohttp import web
from pydantic import BaseModel

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# What an ingest route can refuse: bad input, another app's credential, a slow or oversized
# body, a dead token, an unsupported Content-Encoding (or, on /v1/, Content-Type), an Expect
# other than 100-continue, expired on arrival, a full device queue or rate, a pending cap or drain.
INGEST_ERRORS = (400, 403, 408, 410, 413, 415, 417, 422, 429, 503)


@dataclass(frozen=True)
class Route:
    """One operation. `answers`: each success status and the model of its body (None: not
    JSON); `errors`: the statuses it may answer with a problem (a secured route also 401 and
    429, added by the document); `public`: served without a credential."""

    method: str
    path: str
    handler: Handler
    operation_id: str
    summary: str
    answers: Mapping[int, type[BaseModel] | None]
    body: type[BaseModel] | None = None
    errors: tuple[int, ...] = ()
    public: bool = False
    query: tuple[str, ...] = ()  # required query parameters, named as PATH_PARAMETERS names them
    links: Mapping[str, object] = field(default_factory=dict)
