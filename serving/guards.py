"""What one request body may cost: counted as it streams, refused past the upload limit or the body deadline.

:class:`BodyGuard` (ASGI middleware) bounds every request body, whatever its framing, before the form parser
spools it; :func:`read_limited` bounds the photo read from a parsed form. Refusals have the API's one error shape
(``serving.errors``); one to the search form (``POST /``) is the page's HTML error instead of JSON.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from fastapi import UploadFile
from fastapi.responses import HTMLResponse

from serving.errors import ApiError, json_error

READ_CHUNK = 1 << 20
MULTIPART_OVERHEAD_BYTES = 64 * 1024  # form framing allowed on top of the photo itself


class BodyRefused(ApiError):
    """A request body refused while it streams (413 over the limit, 408 too slow); the connection closes."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(status, code, message, headers={"Connection": "close"})


def is_form_post(scope) -> bool:
    """The search page's form submission (``POST /``): its refusals are pages, never JSON."""
    return scope.get("method") == "POST" and scope.get("path") == "/"


class BodyGuard:
    """ASGI middleware bounding every request body as it streams, whatever its framing (Content-Length or
    chunked): past ``photo_limit`` + :data:`MULTIPART_OVERHEAD_BYTES` bytes -> 413, not complete
    ``timeout_s`` after the request head -> 408 (uvicorn has no read timeout), both with ``Connection:
    close``, so the rest of the body is never read. A declared Content-Length over the limit is refused
    before any of the body is read. ``html_error(status, detail) -> str`` renders the refusal of a form post."""

    def __init__(self, app, photo_limit: int, timeout_s: float,
                 html_error: Callable[[int, dict], str] | None = None):
        self.app, self.photo_limit, self.timeout_s = app, photo_limit, timeout_s
        self.limit = photo_limit + MULTIPART_OVERHEAD_BYTES
        self.html_error = html_error

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            refusal = BodyRefused(413, "too_large", f"the request of {int(length)} bytes is over the "
                                                    f"{self.photo_limit}-byte photo limit")
            return await self._refuse(refusal, scope, receive, send)
        started = False

        async def sending(message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, self._guarded(receive), sending)
        except BodyRefused as exc:  # raised where no handler turned it into a response
            if started:
                raise
            await self._refuse(exc, scope, receive, send)

    async def _refuse(self, exc: ApiError, scope, receive, send) -> None:
        detail = {"code": exc.code, "message": exc.message}
        if self.html_error is not None and is_form_post(scope):
            response = HTMLResponse(self.html_error(exc.status_code, detail), status_code=exc.status_code,
                                    headers=exc.headers)
        else:
            response = json_error(exc.status_code, detail, exc.headers)
        await response(scope, receive, send)

    def _guarded(self, receive):
        """``receive`` counting body bytes against the limit and waiting no longer than the body deadline."""
        loop = asyncio.get_running_loop()
        deadline, received, done = loop.time() + self.timeout_s, 0, False

        async def guarded():
            nonlocal received, done
            if done:  # the body is in: later receives wait for a disconnect, for as long as it takes
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.001))
            except asyncio.TimeoutError:
                raise BodyRefused(408, "timeout", f"the request body did not arrive in {self.timeout_s:g} s") from None
            if message["type"] != "http.request":
                done = True
                return message
            received += len(message.get("body", b""))
            done = not message.get("more_body", False)
            if received > self.limit:
                raise BodyRefused(413, "too_large", f"the request body is over the {self.photo_limit}-byte photo limit")
            return message

        return guarded


def read_limited(upload: UploadFile, limit: int) -> bytes:
    """The upload's bytes, refusing (413) as soon as it exceeds ``limit`` without reading the rest."""
    chunks, total = [], 0
    while chunk := upload.file.read(READ_CHUNK):
        total += len(chunk)
        if total > limit:
            raise ApiError(413, "too_large", f"the photo is larger than the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)
