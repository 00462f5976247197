"""HTTP API and the search pages (FastAPI): the app and its routes.

JSON (typed in ``/openapi.json``, ``serving.schemas``; browsable offline at ``/docs``):
``POST /search`` (multipart field ``photo``, query ``k``) -> products with a match level; ``GET /products/{id}``
(JSON unless the request accepts ``text/html``) -> the product, its gallery with each photo's denoise decision,
its lineage; ``GET /health``; ``POST /products/{id}/photos/{image_id}/decision`` (a correction by hand, with
``api.write_token``). Files: ``GET /photos/<path>`` stored photos, ``GET /thumbs/<sha1>.webp`` thumbnails.
HTML (``serving.pages``): ``GET /`` the search page, ``POST /`` the page with results, ``GET /products/{id}``
from a browser. Every error is ``{"error": {"code", "message"}}`` (``serving.errors``), a friendly page on the
HTML routes. What one client can hold is bounded (``serving.guards``, ``serving.connections``); responses name
no server paths (photos are ``/photos/<relative path>`` URLs, ``file://`` product URLs are left out).
"""

from __future__ import annotations

import base64
import logging
import secrets
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI, File, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.errors import ShoesearchError
from serving import pages
from serving.apidocs import add_docs
from serving.connections import RequestCap, connection_protocol
from serving.errors import ApiError, ErrorBody, detail_of, json_error, public_message
from serving.guards import BodyGuard, is_form_post, read_limited
from serving.products import money, product_view, thumb_url, web_url
from serving.schemas import DecisionRequest, DecisionResponse, Health, Product, SearchResponse
from serving.search import BadPhoto, check_photo, decode_slots, get_searcher, match_level, upload_limits
from serving.thumbs import CACHE_CONTROL, SHA1, NoThumb, thumbnail

log = logging.getLogger(__name__)

# Image-store verdicts -> HTTP status of the refusal (the verdict is the error code).
STATUS_FOR = {
    "empty": 400, "corrupt": 400, "too_small": 422,
    "not_image": 415, "too_large": 413, "bomb": 413,
}
MAX_PHOTO_PATH = 1024  # longest /photos/ path served (stored photos are "aa/<sha1>.ext", 47 characters)
JSON_ONLY = ("/search", "/health", "/openapi.json", "/photos/", "/thumbs/", "/docs")
HTML = {"content": {"text/html": {}}}


def errors(*statuses: int) -> dict:
    """OpenAPI ``responses`` for these error statuses, each an :class:`ErrorBody` (422 replaces FastAPI's own)."""
    return {status: {"model": ErrorBody} for status in statuses}


def public_hit(hit) -> dict:
    """A search hit as the API shows it: score to 4 places, price to 2, the shop's URL only when it is a web URL,
    the served photo, its thumbnail and this server's product page."""
    sha1 = Path(hit.photo_path).stem
    photo = "/photos/" + quote(hit.photo_path)
    return {
        "rank": hit.rank, "product_id": hit.product_id, "score": round(float(hit.score), 4),
        "level": getattr(hit, "level", None), "title": hit.title, "brand": hit.brand, "price": money(hit.price),
        "url": web_url(hit.url), "product_url": "/products/" + quote(hit.product_id, safe=":"),
        "image_id": hit.image_id, "photo_path": hit.photo_path, "photo_url": photo,
        "thumb_url": thumb_url(sha1) if SHA1.fullmatch(sha1) else photo,
    }


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


def no_index(settings) -> bool:
    """True when the home has no current index (or no home): nothing was built yet, nothing is broken."""
    from index.store import current_index_row
    from serving.products import warehouse_of
    from warehouse import MissingHome

    try:
        return current_index_row(warehouse_of(settings)) is None
    except MissingHome:
        return True
    except Exception:  # noqa: BLE001 - an unreadable indexes table: something is broken, not missing
        return False


def unavailable(settings, problem: Exception) -> ApiError:
    """The 503 of a search with no servable index: ``no_index`` (none built yet) or ``unavailable`` (broken)."""
    code = "no_index" if no_index(settings) else "unavailable"
    return ApiError(503, code, public_message(str(problem), settings.home))


def search_upload(settings, limits, upload: UploadFile | None, k: int) -> tuple[dict, bytes]:
    """(the JSON answer, the photo's bytes) for an uploaded photo: checked from its header, then decoded once (at
    most ``api.max_decodes`` at a time) and searched; refusals are :class:`ApiError` without server paths."""
    if upload is None:
        raise ApiError(400, "no_photo", "send the photo as multipart form field 'photo'")
    if not 1 <= k <= settings.api.max_k:
        raise ApiError(422, "invalid", f"k must be between 1 and {settings.api.max_k}")
    data = read_limited(upload, limits.max_bytes)
    try:
        check_photo(data, limits)
        try:
            searcher = get_searcher(settings)
        except ShoesearchError as exc:
            log.warning("search unavailable: %s", exc)
            raise unavailable(settings, exc) from None
        query = searcher.photo_tensor(data, limits, settings.api.max_decodes)
    except BadPhoto as exc:
        raise ApiError(STATUS_FOR.get(exc.status, 400), exc.status, public_message(exc.reason)) from None
    hits = searcher.search(query, k)
    levels = getattr(searcher, "match_levels", None)
    answer = {"index_id": searcher.index_id, "model_id": searcher.model_id, "match_level": match_level(hits),
              "levels": levels, "results": [public_hit(h) for h in hits]}
    return answer, data


def query_thumb(settings, data: bytes) -> str | None:
    """The query photo as a small ``data:`` URL for the results page (bounded decode), or None."""
    from serving.thumbs import photo_thumbnail

    try:
        webp = photo_thumbnail(data, upload_limits(settings), decode_slots(settings.api.max_decodes))
    except NoThumb:
        return None
    return "data:image/webp;base64," + base64.b64encode(webp).decode()


def health_answer(settings, ready: threading.Event) -> tuple[int, dict]:
    """(status, :class:`Health`) of ``GET /health``: ``ready`` only when an index is loaded."""
    from serving.search import serving

    def down(status: str, message: str) -> tuple[int, dict]:
        return 503, {"status": status, "index_id": None, "model_id": None,
                     "error": {"code": status, "message": public_message(message, settings.home)}}

    if not ready.is_set():
        return down("starting", "loading the model and the index")
    state = serving(settings)  # loads the current index (once): "ready" means searches are served
    if state.searcher is None:
        return down("no_index" if no_index(settings) else "unhealthy", str(state.problem))
    body = {"status": "ready", "index_id": state.searcher.index_id, "model_id": state.searcher.model_id}
    if state.problem is not None:
        body.update(status="degraded", problem=public_message(str(state.problem), settings.home))
    return 200, body


def _load_at_start(settings, ready: threading.Event) -> None:
    """Load the current index and its model and run one warm-up search (``serving.search.serving``), then say
    ready; a home without a servable index is ready too (``/health`` then says why searches fail)."""
    from serving.search import serving

    started = time.perf_counter()
    try:
        state = serving(settings)
        log.info("ready in %.1f s: %s", time.perf_counter() - started,
                 f"index {state.searcher.index_id}" if state.searcher else state.problem)
    except Exception:  # a failed load is reported by /health and search, never kills the server
        log.exception("loading the index at start failed")
    finally:
        ready.set()


def wants_html(request: Request) -> bool:
    """Whether an error answers a page: the search form's post, a form posted by a browser, or a browser's GET."""
    if is_form_post(request.scope):
        return True
    accept, path = request.headers.get("accept", ""), request.url.path
    if "text/html" not in accept or path.startswith(JSON_ONLY):
        return False
    return request.method in ("GET", "HEAD") or "form" in request.headers.get("content-type", "")


def create_app(settings) -> FastAPI:
    """The API for one data home; the index and model are loaded (and one warm-up search run) as the server
    starts, in the background: ``/health`` answers 503 ``starting`` until then, searches wait for it."""
    ready = threading.Event()

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        threading.Thread(target=_load_at_start, args=(settings, ready), name="load-index", daemon=True).start()
        yield

    app = FastAPI(title="shoesearch", description="Search shoe products by photo. Every error is "
                  '`{"error": {"code": "...", "message": "..."}}`.', lifespan=lifespan, docs_url=None,
                  redoc_url=None)
    limits = upload_limits(settings)

    def form_page(status: int, detail: dict) -> str:
        return pages.render_search(None, error=detail, max_upload_bytes=limits.max_bytes, status=status)

    app.add_middleware(BodyGuard, photo_limit=limits.max_bytes, timeout_s=settings.api.body_timeout_s,
                       html_error=form_page)
    app.add_middleware(RequestCap, limit=settings.api.max_connections, html_error=form_page)  # outermost
    add_docs(app, "shoesearch")

    async def error(request: Request, exc: Exception):  # an unexpected exception is logged by the server too
        status, detail, headers = detail_of(exc)
        if not wants_html(request):
            return json_error(status, detail, headers)
        page = (form_page(status, detail) if is_form_post(request.scope)
                else pages.render_error(status, detail, max_upload_bytes=limits.max_bytes))
        return HTMLResponse(page, status_code=status, headers=headers)

    for kind in (StarletteHTTPException, RequestValidationError, Exception):
        app.add_exception_handler(kind, error)
    _routes(app, settings, limits, ready)
    return app


def _routes(app: FastAPI, settings, limits, ready: threading.Event) -> None:
    images_root = settings.images_dir.resolve()

    @app.get("/health", response_model=Health, responses={503: {"model": Health}})
    def health() -> JSONResponse:
        status, body = health_answer(settings, ready)
        return JSONResponse(Health(**body).model_dump(), status_code=status)

    @app.post("/search", response_model=SearchResponse, responses=errors(400, 413, 415, 422, 503))
    def search_json(photo: UploadFile | None = File(None), k: int = Query(settings.index.search_k)) -> dict:
        return search_upload(settings, limits, photo, k)[0]

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return pages.render_search(None, None, max_upload_bytes=limits.max_bytes)

    @app.post("/", response_class=HTMLResponse, include_in_schema=False)
    def page_search(photo: UploadFile | None = File(None), k: int = Query(settings.index.search_k)) -> str:
        result, data = search_upload(settings, limits, photo, k)
        result["query_thumb"] = query_thumb(settings, data)
        return pages.render_search(result, None, max_upload_bytes=limits.max_bytes, restore=True)

    @app.get("/products/{product_id}", response_model=Product, responses={200: HTML, **errors(404, 422, 503)})
    def product(product_id: str, request: Request):
        view = read_product(settings, product_id)
        if view is None:
            raise ApiError(404, "no_product", "no current product has this id")
        if "text/html" in request.headers.get("accept", ""):
            return HTMLResponse(pages.render_product({**view, "writable": bool(settings.api.write_token)}))
        return view

    @app.get("/photos/{path:path}", response_class=FileResponse,
             responses={200: {"content": {"image/*": {}}}, **errors(404, 422)})
    def photo_file(path: str) -> FileResponse:
        target = photo_target(images_root, path)
        if target is None:
            raise ApiError(404, "not_found", "no such photo")
        return FileResponse(target)

    @app.get("/thumbs/{name}", response_class=Response,
             responses={200: {"content": {"image/webp": {}}}, **errors(404, 422)})
    def thumb(name: str) -> Response:
        """A 256 px WebP of the stored photo whose content hash (sha1) is ``name`` without ``.webp``."""
        try:
            webp = thumbnail(settings, name.removesuffix(".webp"), decode_slots(settings.api.max_decodes))
        except NoThumb as exc:
            raise ApiError(404, "not_found", public_message(f"no thumbnail: {exc}", settings.home)) from None
        return Response(webp, media_type="image/webp", headers={"Cache-Control": CACHE_CONTROL})

    _write_routes(app, settings)


def _write_routes(app: FastAPI, settings) -> None:
    from serving.schemas import DECISION_BODY

    @app.post("/products/{product_id}/photos/{image_id}/decision", response_model=DecisionResponse,
              responses={200: HTML, **errors(400, 403, 404, 422)}, openapi_extra=DECISION_BODY)
    async def decide(product_id: str, image_id: str, request: Request):
        """Correct a photo's denoise decision by hand (``warehouse.overrides``): JSON or a form with ``decision``
        keep|drop, ``reason``, ``who``; the token ``api.write_token`` as ``Authorization: Bearer`` or form field
        ``token``. Writes are off while ``api.write_token`` is empty (403)."""
        form = "form" in request.headers.get("content-type", "")
        try:
            body = dict(await request.form()) if form else await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise ApiError(400, "bad_request", "send a JSON object or a form")
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip() or body.get("token") or ""
        check_token(settings.api.write_token, str(given))
        decision = DecisionRequest.checked(body)
        run_id, view = await run_in_threadpool(record, settings, product_id, image_id, decision)
        photo = next(p for p in view["photos"] if p["image_id"] == image_id)
        if form and "text/html" in request.headers.get("accept", ""):
            done = f"Photo {photo['position'] + 1} is now {'kept' if photo['kept'] else 'dropped'}, by {decision.who}."
            return HTMLResponse(pages.render_product({**view, "writable": True}, message=done))
        return {"run_id": run_id, "photo": photo}


def read_product(settings, product_id: str) -> dict | None:
    """:func:`serving.products.product_view`; a warehouse it cannot read is a 503 naming the file, not a 500."""
    try:
        return product_view(settings, product_id)
    except ShoesearchError as exc:
        log.warning("product %s unavailable: %s", product_id, exc)
        raise ApiError(503, "unavailable", public_message(str(exc), settings.home)) from None


def check_token(token: str, given: str) -> None:
    if not token:
        raise ApiError(403, "writes_disabled", "writes are disabled on this server (set api.write_token to allow them)")
    if not secrets.compare_digest(given.encode(), token.encode()):
        raise ApiError(403, "forbidden", "a write needs the server's write token")


def record(settings, product_id: str, image_id: str, decision) -> tuple[str, dict]:
    """Record a correction of photo ``image_id`` of ``product_id``; (run id, the product after it)."""
    from warehouse.overrides import BadOverride, record_override

    view = read_product(settings, product_id)
    if view is None or not any(p["image_id"] == image_id for p in view["photos"]):
        raise ApiError(404, "no_product" if view is None else "not_found", "no such photo of a current product")
    try:
        run_id = record_override(settings, image_id, decision.decision == "keep", decision.who, decision.reason,
                                 flow="api")
    except BadOverride as exc:
        raise ApiError(422, "invalid", public_message(str(exc), settings.home)) from None
    return run_id, read_product(settings, product_id)


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
