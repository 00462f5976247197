"""What one client can hold on the API server's connections (the ``api.*`` limits that act below the app).

* :func:`connection_protocol`: uvicorn's h11 protocol with a request-head deadline (uvicorn has none) and a
  cap on the connections one client address holds open, counted from the moment a connection opens
  (before it has sent anything), so one client holding incomplete heads is refused, not everyone else.
* :class:`RequestCap`: ASGI middleware capping the requests in flight (a complete head received, the
  response not finished) server-wide. uvicorn's own ``limit_concurrency`` counts every open connection,
  also those still sending their head, so one client's half-sent heads turned every other client away.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)


def _refusal(status: int, reason: str, code: str, message: str) -> bytes:
    """A complete ``Connection: close`` JSON response in the API's error shape, written raw (no request was read)."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n").encode() + body


class ConnectionLimits(H11Protocol):
    """uvicorn's h11 protocol with two bounds on connections (configured by :func:`connection_protocol`):

    * a connection whose request head (request line and headers) is not complete ``header_timeout_s``
      after it opened or after the head's first byte arrived is closed (uvicorn's keep-alive timer,
      which closes idle connections between requests, stops at the first byte received, so a client
      sending half a head, or nothing, would otherwise hold the connection for ever);
    * a client address with ``max_per_client`` connections open gets 503 and a close on the next one."""

    header_timeout_s: float = 10.0
    max_per_client: int = 8
    open_per_client: Counter  # client address -> connections open (one per server)
    refusal: bytes = b""
    head_timer: asyncio.TimerHandle | None = None
    address: str | None = None  # counted against this client address while open

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        address = self.client[0] if self.client else None
        if address is not None and self.open_per_client[address] >= self.max_per_client:
            self.logger.warning("refusing a connection from %s: %d connections open (api.max_connections_"
                                "per_client)", address, self.max_per_client)
            transport.write(self.refusal)
            transport.close()
            return
        if address is not None:
            self.address = address
            self.open_per_client[address] += 1
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self.head_timer is None and self._between_requests():  # the first byte of a new head
            self._arm()
        super().data_received(data)

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:  # a head arrived: the app has the request (BodyGuard times its body)
            self._disarm()

    def connection_lost(self, exc) -> None:
        self._disarm()
        if self.address is not None:
            self.open_per_client[self.address] -= 1
            if self.open_per_client[self.address] <= 0:
                del self.open_per_client[self.address]
            self.address = None
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self.head_timer = self.loop.call_later(self.header_timeout_s, self._expire)

    def _disarm(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def _between_requests(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _expire(self) -> None:
        self.head_timer = None
        if self._between_requests() and not self.transport.is_closing():
            self.logger.info("closing a connection from %s: no complete request head within %g s",
                             self.address, self.header_timeout_s)
            try:
                self.conn.send(h11.ConnectionClosed())
            except h11.LocalProtocolError:
                pass
            self.transport.close()


def connection_protocol(header_timeout_s: float, max_per_client: int) -> type:
    """The :class:`ConnectionLimits` protocol of one server: these bounds, its own per-address counts."""
    refusal = _refusal(503, "Service Unavailable", "too_many_connections", f"this address has {max_per_client} "
                       "connections open; close one and retry")
    return type("ConnectionLimits", (ConnectionLimits,), {
        "header_timeout_s": header_timeout_s, "max_per_client": max_per_client,
        "open_per_client": Counter(), "refusal": refusal})


class RequestCap:
    """ASGI middleware: at most ``limit`` HTTP requests in flight (head received, response not finished);
    one beyond gets 503 with ``Connection: close``. Connections still sending their head, or idle between
    requests, hold no slot (the head deadline and the keep-alive timeout bound them). ``html_error(status,
    detail) -> str`` renders the refusal of the search form (``POST /``) as a page instead of JSON."""

    def __init__(self, app, limit: int, html_error=None):
        self.app, self.limit, self.active, self.html_error = app, limit, 0, html_error

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.active >= self.limit:  # one event loop: no lock needed between the test and the increment
            from fastapi.responses import HTMLResponse, JSONResponse

            log.warning("refusing a request: %d requests in flight (api.max_connections)", self.active)
            detail = {"code": "busy", "message": f"{self.limit} requests in flight; retry shortly"}
            headers = {"Connection": "close", "Retry-After": "1"}
            if self.html_error is not None and scope.get("method") == "POST" and scope.get("path") == "/":
                response = HTMLResponse(self.html_error(503, detail), status_code=503, headers=headers)
            else:
                response = JSONResponse({"error": detail}, status_code=503, headers=headers)
            return await response(scope, receive, send)
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1
