"""HTTP API and a small upload page (FastAPI).

``POST /search`` (multipart field ``photo``, query ``k``) -> JSON products; ``GET /`` an upload page;
``POST /`` the same page with results; ``GET /photos/<path>`` stored photos; ``GET /health``.
Bad uploads get a 4xx with a clear message; nothing a client sends can stop the server.

What one client can hold is bounded (``api.*`` settings): a request body is counted as it streams,
whatever its framing, and refused past the upload limit before the form parser spools it
(:class:`BodyGuard`); a request head and a body must arrive in time (``serving.connections``,
:class:`BodyGuard`); idle keep-alive connections close; requests in flight and the connections one
client address holds are capped (503 beyond: ``serving.connections``).
Responses name no server paths: photos are ``/photos/<relative path>`` URLs, non-web product URLs
(``file://`` of an ingested folder) are left out, error messages have paths replaced.
"""

from __future__ import annotations

import asyncio
import html
import logging
import re
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

from core.errors import ShoesearchError
from serving.connections import RequestCap, connection_protocol
from serving.search import BadPhoto, check_photo, get_searcher, upload_limits

log = logging.getLogger(__name__)

# Image-store verdicts -> HTTP status of the refusal.
STATUS_FOR = {
    "empty": 400, "corrupt": 400, "too_small": 422,
    "not_image": 415, "too_large": 413, "bomb": 413,
}
READ_CHUNK = 1 << 20
MULTIPART_OVERHEAD_BYTES = 64 * 1024  # form framing allowed on top of the photo itself
MAX_PHOTO_PATH = 1024  # longest /photos/ path served (stored photos are "aa/<sha1>.ext", 47 characters)
HIT_FIELDS = ("rank", "product_id", "score", "confident", "title", "brand", "price", "url", "image_id", "photo_path")
ABSOLUTE_PATH = re.compile(r"(?<![\w:/.~-])/[^\s'\"]+")  # a server path in a message (not a URL's path)


class BodyRefused(HTTPException):
    """A request body refused while it streams (413 over the limit, 408 too slow); the connection closes."""

    def __init__(self, status: int, detail: str):
        super().__init__(status, detail, headers={"Connection": "close"})


class BodyGuard:
    """ASGI middleware bounding every request body as it streams, whatever its framing (Content-Length or
    chunked): past ``photo_limit`` + :data:`MULTIPART_OVERHEAD_BYTES` bytes -> 413, not complete
    ``timeout_s`` after the request head -> 408 (uvicorn has no read timeout), both with ``Connection:
    close``, so the rest of the body is never read. A declared Content-Length over the limit is refused
    before any of the body is read."""

    def __init__(self, app, photo_limit: int, timeout_s: float):
        self.app, self.photo_limit, self.timeout_s = app, photo_limit, timeout_s
        self.limit = photo_limit + MULTIPART_OVERHEAD_BYTES

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            refusal = BodyRefused(413, f"too_large: request of {int(length)} bytes > the "
                                       f"{self.photo_limit}-byte photo limit")
            return await _refuse(refusal, scope, receive, send)
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
            await _refuse(exc, scope, receive, send)

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
                raise BodyRefused(408, f"timeout: the request body did not arrive in {self.timeout_s:g} s") from None
            if message["type"] != "http.request":
                done = True
                return message
            received += len(message.get("body", b""))
            done = not message.get("more_body", False)
            if received > self.limit:
                raise BodyRefused(413, f"too_large: request body over the {self.photo_limit}-byte photo limit")
            return message

        return guarded


async def _refuse(exc: HTTPException, scope, receive, send) -> None:
    await JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)(scope, receive, send)


def _read_limited(upload: UploadFile, limit: int) -> bytes:
    """The upload's bytes, refusing (413) as soon as it exceeds ``limit`` without reading the rest."""
    chunks, total = [], 0
    while chunk := upload.file.read(READ_CHUNK):
        total += len(chunk)
        if total > limit:
            raise HTTPException(413, f"upload is larger than the {limit} byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def public_message(message: str, home: Path) -> str:
    """``message`` without server paths (the data home, then any other absolute path)."""
    return ABSOLUTE_PATH.sub("<path>", message.replace(str(home), "<home>"))


def match_verdict(hits, threshold: float | None) -> dict:
    """``confident_match``: the best result beats the index's calibrated threshold (None when the index has none)."""
    confident = None if threshold is None else bool(hits and hits[0].confident)
    return {"confident_match": confident, "match_threshold": threshold}


def public_hit(hit) -> dict:
    """A search hit as the API shows it: the served photo URL, and the product URL only if it is a web URL."""
    out = {name: getattr(hit, name) for name in HIT_FIELDS}
    if not (out["url"] or "").startswith(("http://", "https://")):
        out["url"] = None  # a file:// URL of an ingested folder names a server path and opens nothing
    out["photo_url"] = "/photos/" + quote(hit.photo_path)
    return out


def photo_target(root: Path, path: str) -> Path | None:
    """The stored photo that a ``/photos/`` path names, or None (absolute, ``..``, NUL or control
    characters, over-long, outside the images directory, missing): the filesystem is asked nothing
    about a malformed name, and nothing it answers becomes a 500."""
    parts = path.split("/")
    if (len(path) > MAX_PHOTO_PATH or "\\" in path
            or any(p in ("", ".", "..") or len(p.encode()) > 255 or not p.isprintable() for p in parts)):
        return None
    try:
        target = (root / path).resolve()
        return target if target.is_relative_to(root) and target.is_file() else None
    except (OSError, ValueError):
        return None


def search_upload(settings, limits, upload: UploadFile | None, k: int) -> dict:
    """The JSON answer for an uploaded photo: checked from its header, then decoded once (at most
    ``api.max_decodes`` at a time) and searched; refusals are HTTP errors without server paths."""
    if upload is None:
        raise HTTPException(400, "send the photo as multipart form field 'photo'")
    if not 1 <= k <= settings.api.max_k:
        raise HTTPException(422, f"k must be between 1 and {settings.api.max_k}")
    data = _read_limited(upload, limits.max_bytes)
    try:
        check_photo(data, limits)
        try:
            searcher = get_searcher(settings)
        except ShoesearchError as exc:
            log.warning("search unavailable: %s", exc)
            raise HTTPException(503, public_message(str(exc), settings.home)) from None
        query = searcher.photo_tensor(data, limits, settings.api.max_decodes)
    except BadPhoto as exc:
        raise HTTPException(STATUS_FOR.get(exc.status, 400), f"{exc.status}: {exc.reason}") from None
    hits = searcher.search(query, k)
    return {"index_id": searcher.index_id, "model_id": searcher.model_id, **match_verdict(hits, searcher.match_threshold),
            "results": [public_hit(h) for h in hits]}


def _load_at_start(settings, ready: threading.Event) -> None:
    """Load the current index and its model and run one warm-up search (``serving.search.serving``), then say
    ready; a home without a servable index is ready too (``/health`` then says why searches fail)."""
    from serving.search import serving

    started = time.perf_counter()
    try:
        state = serving(settings)
        log.info("ready in %.1f s: %s", time.perf_counter() - started,
                 f"index {state.searcher.index_id}" if state.searcher else state.problem)
    except Exception:  # noqa: BLE001 - a failed load is reported by /health and search, never kills the server
        log.exception("loading the index at start failed")
    finally:
        ready.set()


def create_app(settings) -> FastAPI:
    """The API for one data home; the index and model are loaded (and one warm-up search run) as the server
    starts, in the background: ``/health`` answers 503 ``starting`` until then, searches wait for it."""
    ready = threading.Event()

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        threading.Thread(target=_load_at_start, args=(settings, ready), name="load-index", daemon=True).start()
        yield

    app = FastAPI(title="shoesearch", description="Search shoe products by photo.", lifespan=lifespan)
    limits = upload_limits(settings)
    app.add_middleware(BodyGuard, photo_limit=limits.max_bytes, timeout_s=settings.api.body_timeout_s)
    app.add_middleware(RequestCap, limit=settings.api.max_connections)  # outermost: a refusal reads nothing
    images_root = settings.images_dir.resolve()

    def run_search(upload: UploadFile | None, k: int) -> dict:
        return search_upload(settings, limits, upload, k)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        if request.url.path == "/" and request.method == "POST":
            return HTMLResponse(_page(error=str(exc.detail)), status_code=exc.status_code,
                                headers=exc.headers)
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.get("/health")
    def health() -> JSONResponse:
        from serving.search import health as serving_health

        if not ready.is_set():
            return JSONResponse({"status": "starting", "index_id": None,
                                 "error": "loading the model and the index"}, status_code=503)
        status, body = serving_health(settings)  # loads the current index (once): "ok" means searches are served
        return JSONResponse({k: public_message(v, settings.home) if isinstance(v, str) else v
                             for k, v in body.items()}, status_code=status)

    @app.post("/search")
    def search_json(photo: UploadFile | None = File(None), k: int = Query(settings.index.search_k)) -> dict:
        return run_search(photo, k)

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return _page()

    @app.post("/", response_class=HTMLResponse)
    def page_search(photo: UploadFile | None = File(None), k: int = Query(settings.index.search_k)) -> str:
        return _page(result=run_search(photo, k))

    @app.get("/photos/{path:path}")
    def photo_file(path: str) -> FileResponse:
        target = photo_target(images_root, path)
        if target is None:
            raise HTTPException(404, "no such photo")
        return FileResponse(target)

    return app


def _page(result: dict | None = None, error: str | None = None) -> str:
    """The upload page, with results or an error when given."""
    body = []
    if error:
        body.append(f'<p class="error">{html.escape(error)}</p>')
    if result is not None:
        body.append(f"<p>index {html.escape(result['index_id'])} · model {html.escape(result['model_id'])}</p>")
        if not result["results"]:
            body.append("<p>No products found.</p>")
        elif result["confident_match"] is False:
            body.append(f'<p class="error">No confident match: the best score, {result["results"][0]["score"]:.3f}, '
                        f'is below {result["match_threshold"]:.3f} (what catalog photos score with a wrong product). '
                        "The closest products anyway:</p>")
        body.append('<div class="grid">')
        for hit in result["results"]:
            title = html.escape(hit["title"] or hit["product_id"])
            link = html.escape(hit["url"] or hit["photo_url"], quote=True)
            price = f"¥{hit['price']:.2f}" if hit["price"] is not None else ""
            body.append(
                f'<a class="hit" href="{link}"><img src="{html.escape(hit["photo_url"], quote=True)}" alt="">'
                f"<b>{hit['rank']}. {title}</b><span>{html.escape(hit['brand'] or '')} {price}</span>"
                f"<small>score {hit['score']:.3f}</small></a>"
            )
        body.append("</div>")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>shoesearch</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 70em; }}
.grid {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(12em, 1fr)); gap: 1em; }}
.hit {{ display: flex; flex-direction: column; border: 1px solid #ddd; padding: .5em; color: inherit; text-decoration: none; }}
.hit img {{ width: 100%; aspect-ratio: 1; object-fit: contain; background: #fafafa; }}
.error {{ color: #b00; font-weight: bold; }}
</style></head><body>
<h1>Search shoes by photo</h1>
<form method="post" action="/" enctype="multipart/form-data">
<input type="file" name="photo" accept="image/*" required> <button type="submit">Search</button>
</form>
{''.join(body)}
</body></html>"""


def server_config(settings, host: str | None = None, port: int | None = None, **extra):
    """The uvicorn configuration the API runs with (also what the tests serve): keep-alive, connection
    cap and request-head deadline from ``api.*``; ``extra`` goes to ``uvicorn.Config`` (e.g. log_level)."""
    import uvicorn

    a = settings.api
    return uvicorn.Config(create_app(settings), host=host or a.host, port=port or a.port,
                          http=connection_protocol(a.header_timeout_s, a.max_connections_per_client),
                          timeout_keep_alive=a.keep_alive_s, **{"log_level": "info", **extra})


def serve(settings, host: str | None = None, port: int | None = None) -> None:
    """Run the API with uvicorn until interrupted."""
    import uvicorn

    uvicorn.Server(server_config(settings, host, port)).run()
