"""``/docs`` that works offline: Swagger UI served from the ``swagger_ui_bundle`` package, no CDN.

The bundled Swagger UI (4.x) renders OpenAPI 3.0 only, while FastAPI writes 3.1; the page therefore reads
``/docs/openapi.json``, the same schema said in 3.0 terms (:func:`openapi_30`: ``nullable`` for a null
alternative, ``format: binary`` for an upload, ``enum`` for ``const``). ``/openapi.json`` stays FastAPI's 3.1.
ReDoc is off (its bundle is not packaged).
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

ASSETS = "/docs-assets"
SPEC_30 = "/docs/openapi.json"
NULL = {"type": "null"}


def openapi_30(node):
    """An OpenAPI 3.1 document (or part) rewritten for a 3.0 reader."""
    if isinstance(node, list):
        return [openapi_30(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: openapi_30(value) for key, value in node.items()}
    if node.get("openapi", "").startswith("3.1"):
        node["openapi"] = "3.0.3"
    for key in ("anyOf", "oneOf"):
        options = node.get(key)
        if isinstance(options, list) and NULL in options:
            rest = [o for o in node.pop(key) if o != NULL]
            if len(rest) == 1 and "$ref" not in rest[0]:
                node = {**rest[0], **node}
            else:
                node["allOf" if len(rest) == 1 else key] = rest
            node["nullable"] = True
    if "const" in node and not isinstance(node.get("const"), dict):
        node["enum"] = [node.pop("const")]
    if node.get("type") == "string" and "contentMediaType" in node:
        node.pop("contentMediaType")
        node["format"] = "binary"
    return node


def add_docs(app: FastAPI, title: str) -> None:
    """Serve Swagger UI at ``/docs`` from the installed package (create the app with ``docs_url=None``)."""
    from swagger_ui_bundle import swagger_ui_path

    app.mount(ASSETS, StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=SPEC_30, title=f"{title} API",
                                   swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js", swagger_css_url=f"{ASSETS}/swagger-ui.css",
                                   swagger_favicon_url=f"{ASSETS}/favicon-32x32.png")

    @app.get(SPEC_30, include_in_schema=False)
    def spec_30() -> JSONResponse:
        return JSONResponse(openapi_30(app.openapi()))
