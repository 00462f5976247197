"""One product as its page and ``GET /products/{id}`` show it: fields, whole gallery with each photo's denoise
decision, and the runs behind it.

Read from the warehouse's current views (``products_current``, ``images_current``, ``denoise_current``,
``denoise_overrides_current``: docs/warehouse-and-sql.md) with a WHERE on the product's integer key, so a page
reads that product's rows only (the materialised views are sorted by it). The warehouse of a home is opened once
per process (its DuckDB connection is cached and follows new commits).
"""

from __future__ import annotations

import math
import threading
from datetime import datetime
from urllib.parse import quote, urlsplit

from warehouse import open_warehouse
from warehouse.conform import key_of
from warehouse.models_table import find_model

MAX_ID_CHARS = 300  # a longer product id is no product's: answered "not found" without a query
_WAREHOUSES: dict[str, object] = {}
_LOCK = threading.Lock()

PRODUCT_SQL = """SELECT product_id, title, brand, category, shop_name, price, list_price, url, sku, source,
    crawled_at, run_id FROM products_current WHERE product_key = ? AND product_id = ?"""
PHOTOS_SQL = """SELECT i.image_id, i.position, i.status, i.sha1, i.path, i.width, i.height,
    d.kept, d.distance, d.reason AS rule_reason, d.run_id AS denoise_run,
    o.kept AS person_kept, o.who, o.decided_at, o.reason AS person_reason, o.run_id AS override_run
FROM images_current i
LEFT JOIN denoise_current d ON d.image_key = i.image_key AND d.sha1 IS NOT DISTINCT FROM i.sha1
LEFT JOIN denoise_overrides_current o ON o.image_key = i.image_key AND o.sha1 IS NOT DISTINCT FROM i.sha1
WHERE i.product_key = ? AND i.product_id = ?
ORDER BY i.position, i.image_id"""

# The current index, the run that built it and the run that made it current (each writes an ``indexes`` row).
INDEX_SQL = """SELECT c.index_id, c.model_id, c.run_id AS switched_by,
    (SELECT min(b.run_id) FROM indexes b WHERE b.index_id = c.index_id AND b.status = 'built') AS built_by
FROM indexes_current c"""


def warehouse_of(settings):
    """The home's warehouse, opened once per process (a missing home is refused: ``MissingHome``)."""
    with _LOCK:
        wh = _WAREHOUSES.get(str(settings.home))
        if wh is None:
            wh = _WAREHOUSES[str(settings.home)] = open_warehouse(settings, must_exist=True)
        return wh


def photo_url(path: str | None) -> str | None:
    return "/photos/" + quote(path) if path else None


def thumb_url(sha1: str | None) -> str | None:
    return f"/thumbs/{sha1}.webp" if sha1 else None


def money(value) -> float | None:
    return round(float(value), 2) if isinstance(value, (int, float)) and math.isfinite(value) else None


def web_url(url) -> str | None:
    """The shop's page when a shopper's browser can open it: an http(s) URL on another machine. An ingested
    folder's ``file://`` URL names a server path, and a loopback host (the demo shop, stopped once the demo
    ends) opens nothing anywhere else: None."""
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        return None
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return None
    loopback = host == "localhost" or host.endswith(".localhost") or host == "::1" or host.startswith("127.") \
        or host == "0.0.0.0"
    return None if loopback or not host else url


def _when(value) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else value


def product_view(settings, product_id: str) -> dict | None:
    """The product ``product_id`` as a plain dict (``serving.schemas.Product``), or None when no current
    product has that id. Its photos in gallery order, each with the decision in force (``kept``: None when not
    denoised), the rule's distance to the reference photo (position 0) and who decided; ``lineage``: the runs
    that wrote it and the index and model that serve the catalog."""
    if not product_id or len(product_id) > MAX_ID_CHARS:
        return None
    wh = warehouse_of(settings)
    params = [key_of(product_id), product_id]
    rows = wh.query(PRODUCT_SQL, params).to_pylist()
    if not rows:
        return None
    product = rows[0]
    photos = [_photo(row) for row in wh.query(PHOTOS_SQL, params).to_pylist()]
    denoise_runs = sorted({run for photo in photos if (run := photo.pop("denoise_run"))})
    return {
        **{k: product[k] for k in ("product_id", "title", "brand", "category", "shop_name", "sku", "source")},
        "price": money(product["price"]), "list_price": money(product["list_price"]),
        "url": web_url(product["url"]), "crawled_at": _when(product["crawled_at"]),
        "photos": photos,
        "lineage": _lineage(wh, product["run_id"], denoise_runs),
    }


def _photo(row: dict) -> dict:
    ok = row["status"] == "ok"
    person = row["person_kept"] is not None
    override = ({"decision": "keep" if row["person_kept"] else "drop", "kept": row["person_kept"],
                 "who": row["who"], "when": _when(row["decided_at"]),
                 "reason": row["person_reason"], "run_id": row["override_run"]} if person else None)
    kept = row["person_kept"] if person else row["kept"]
    distance = row["distance"]
    return {
        "image_id": row["image_id"], "position": row["position"], "status": row["status"],
        "photo_url": photo_url(row["path"]) if ok else None, "thumb_url": thumb_url(row["sha1"]) if ok else None,
        "width": row["width"], "height": row["height"], "kept": kept,
        "distance": round(float(distance), 4) if distance is not None and math.isfinite(distance) else None,
        "rule_reason": row["rule_reason"],
        "decided_by": "person" if person else ("rule" if row["kept"] is not None else None),
        "override": override, "denoise_run": row["denoise_run"],
    }


def _lineage(wh, catalog_run: str, denoise_runs: list[str]) -> list[dict]:
    """The runs behind the product: the crawl or ingest that wrote it, the denoise run(s) that judged its photos,
    the current index (the run that built it, the switch that made it current) and the model that embeds its
    photos (a trained model's train run; none for the ImageNet descriptor)."""
    index = wh.query(INDEX_SQL).to_pylist()
    model = find_model(wh, index[0]["model_id"]) if index else None
    entries = [("catalog", catalog_run, None)] + [("denoise", run, None) for run in denoise_runs]
    if index:
        entries += [("index", index[0]["built_by"], index[0]["index_id"]),
                    ("switch", index[0]["switched_by"], index[0]["index_id"]),
                    ("model", model["run_id"] if model else None, index[0]["model_id"])]
    ids = [run for _, run, _ in entries if run]
    runs = {r["run_id"]: r for r in wh.query(
        "SELECT run_id, step, finished_at FROM runs WHERE run_id IN (SELECT unnest(?))", [ids]).to_pylist()}
    return [{"role": role, "run_id": run, "step": runs.get(run, {}).get("step"),
             "finished_at": _when(runs.get(run, {}).get("finished_at")), "name": name}
            for role, run, name in entries]
