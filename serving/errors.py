"""The one error shape of the HTTP API: ``{"error": {"code": "<short word>", "message": "<one line>"}}``.

Every 4xx/5xx answer has it: the API's own refusals (:class:`ApiError`), FastAPI's and Starlette's (an unknown
route 404, a wrong method 405, a request that does not validate 422) and the refusals written below the app
(``serving.guards.BodyGuard``, ``serving.connections``). ``code`` is for programs (stable, a short word),
``message`` for people; neither names a server path (:func:`public_message`).
"""

from __future__ import annotations

import re
from pathlib import Path

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

ABSOLUTE_PATH = re.compile(r"(?<![\w:/.~-])/[^\s'\"]+")  # a server path in a message (not a URL's path)
# The code of an error raised with a bare status (FastAPI's, Starlette's, ours without one).
CODE_FOR_STATUS = {
    400: "bad_request", 403: "forbidden", 404: "not_found", 405: "method_not_allowed", 408: "timeout",
    413: "too_large", 415: "not_image", 422: "invalid", 429: "busy", 500: "internal", 503: "unavailable",
}
MESSAGE_FOR_STATUS = {
    404: "nothing here: the routes are listed on /docs",
    405: "this route does not take that method (the Allow header lists those it takes)",
    500: "the server failed to answer this request; it has been logged",
}


class ErrorDetail(BaseModel):
    code: str  # a short word, e.g. not_found, too_large, not_image, invalid, no_index
    message: str  # one line for people, no server path


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer of the API."""

    error: ErrorDetail


class ApiError(StarletteHTTPException):
    """A refusal with its code: answered as :class:`ErrorBody` (or an HTML page on the HTML routes)."""

    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(status, {"code": code, "message": message}, headers=headers)
        self.code, self.message = code, message


def error_body(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}


def public_message(message: str, home: Path | None = None) -> str:
    """``message`` without server paths (the data home, then any other absolute path), on one line."""
    if home is not None:
        message = message.replace(str(home), "<home>")
    return ABSOLUTE_PATH.sub("<path>", " ".join(str(message).split()))


def detail_of(exc: Exception) -> tuple[int, dict, dict | None]:
    """(status, ``{"code", "message"}``, headers) of any error the app answers."""
    if isinstance(exc, RequestValidationError):
        return 422, {"code": "invalid", "message": validation_message(exc)}, None
    if isinstance(exc, StarletteHTTPException):
        detail, status = exc.detail, exc.status_code
        if isinstance(detail, dict) and {"code", "message"} <= detail.keys():
            return status, {"code": detail["code"], "message": detail["message"]}, exc.headers
        text = MESSAGE_FOR_STATUS.get(status) or public_message(str(detail))
        return status, {"code": CODE_FOR_STATUS.get(status, "error"), "message": text}, exc.headers
    return 500, {"code": "internal", "message": MESSAGE_FOR_STATUS[500]}, None


def validation_message(exc: RequestValidationError) -> str:
    """FastAPI's validation errors as one line: ``query k: Input should be a valid integer`` (first two)."""
    parts = []
    for err in exc.errors()[:2]:
        where = " ".join(str(p) for p in err.get("loc", ()) if p != "body" or len(err.get("loc", ())) == 1)
        parts.append(f"{where}: {err.get('msg', 'invalid')}".strip(": "))
    return public_message("; ".join(parts) or "the request does not validate")


def json_error(status: int, detail: dict, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": detail}, status_code=status, headers=headers)
