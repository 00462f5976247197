"""HTTP API and a small upload page (FastAPI).

``POST /search`` (multipart field ``photo``, query ``k``) -> JSON products; ``GET /`` an upload page;
``POST /`` the same page with results; ``GET /photos/<path>`` stored photos; ``GET /health``.
Bad uploads get a 4xx with a clear message; nothing a client sends can stop the server.
"""

from __future__ import annotations

import html

from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

from shoesearch.errors import ShoesearchError
from tasks.search import BadPhoto, decode_photo, get_searcher, upload_limits

# Image-store verdicts -> HTTP status of the refusal.
STATUS_FOR = {
    "empty": 400, "corrupt": 400, "too_small": 422,
    "not_image": 415, "too_large": 413, "bomb": 413,
}
READ_CHUNK = 1 << 20


MULTIPART_OVERHEAD_BYTES = 64 * 1024  # form framing allowed on top of the photo itself

def _read_limited(upload: UploadFile, limit: int) -> bytes:
    """The upload's bytes, refusing (413) as soon as it exceeds ``limit`` without reading the rest."""
    chunks, total = [], 0
    while chunk := upload.file.read(READ_CHUNK):
        total += len(chunk)
        if total > limit:
            raise HTTPException(413, f"upload is larger than the {limit} byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(settings) -> FastAPI:
    """The API for one data home; the index and model are loaded on the first search."""
    app = FastAPI(title="shoesearch", description="Search shoe products by photo.")
    limits = upload_limits(settings)

    def run_search(upload: UploadFile | None, k: int) -> dict:
        if upload is None:
            raise HTTPException(400, "send the photo as multipart form field 'photo'")
        if not 1 <= k <= settings.api.max_k:
            raise HTTPException(422, f"k must be between 1 and {settings.api.max_k}")
        data = _read_limited(upload, limits.max_bytes)
        try:
            image = decode_photo(data, limits)
        except BadPhoto as exc:
            raise HTTPException(STATUS_FOR.get(exc.status, 400), f"{exc.status}: {exc.reason}") from None
        try:
            searcher = get_searcher(settings)
        except ShoesearchError as exc:
            raise HTTPException(503, str(exc)) from None
        hits = searcher.search(image, k)
        return {
            "index_id": searcher.index_id,
            "model_id": searcher.model_id,
            "results": [{**h.as_dict(), "photo_url": f"/photos/{h.photo_path}"} for h in hits],
        }

    @app.middleware("http")
    async def refuse_oversized_bodies(request: Request, call_next):
        length = request.headers.get("content-length", "")
        if request.method == "POST" and length.isdigit() and int(length) > limits.max_bytes + MULTIPART_OVERHEAD_BYTES:
            return JSONResponse({"error": f"too_large: request of {length} bytes > the {limits.max_bytes}-byte photo limit"},
                                status_code=413)
        return await call_next(request)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        if request.url.path == "/" and request.method == "POST":
            return HTMLResponse(_page(error=str(exc.detail)), status_code=exc.status_code)
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code)

    @app.get("/health")
    def health() -> dict:
        from tasks.search import current_index_id

        return {"status": "ok", "index_id": current_index_id(settings)}

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
        root = settings.images_dir.resolve()
        target = (root / path).resolve()
        if not target.is_relative_to(root) or not target.is_file():
            raise HTTPException(404, f"no photo {path!r}")
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


def serve(settings, host: str | None = None, port: int | None = None) -> None:
    """Run the API with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(create_app(settings), host=host or settings.api.host, port=port or settings.api.port,
                log_level="info")
