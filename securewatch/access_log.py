"""The HTTP access log as structlog events: one `http.access` event per request answered.

Plugged into aiohttp's runner (`access_log_class`), so it sees every response,
redirects and errors included, with the time aiohttp measured from the request's
first byte to the response sent.
"""

from __future__ import annotations

import re

import structlog
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from .context import PRINCIPAL

log = structlog.get_logger("securewatch.access")

MAX_PATH_CHARS = 512                    # characters of path and query logged (a URL may be 8 KiB)
MASK = "********"
# Query keys whose values never reach the log, whatever endpoint they are sent to.
SECRET_KEY = re.compile(r"token|secret|pass|key|auth|csrf|session|sig|code", re.IGNORECASE)


def loggable_target(request: web.BaseRequest) -> str:
    """The request's path and query, values of secret-looking query keys masked."""
    query = "&".join(f"{k}={MASK if SECRET_KEY.search(k) else v}" for k, v in request.query.items())
    target = f"{request.path}?{query}" if query else request.path
    return target if len(target) <= MAX_PATH_CHARS else target[:MAX_PATH_CHARS] + "..."


class StructlogAccessLogger(AbstractAccessLogger):
    """aiohttp's access log hook writing one structlog event per request (its `logger` is unused)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        principal = request.get(PRINCIPAL)
        log.info("http.access", method=request.method, path=loggable_target(request), status=response.status,
                 duration_ms=round(time * 1000, 2), remote=request.remote,
                 user=getattr(principal, "name", None))
