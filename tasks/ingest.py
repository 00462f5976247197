"""Load a local catalogue folder into ``products`` and ``images`` (for users with their own photos).

Layout (see docs/ARCHITECTURE.md): ``DIR/<product>/<photos>``; the file that sorts first is
photo 0. Optional ``labels.csv`` (image,group_id[,domain[,is_noise]]) and ``products.json``
(title, brand, price ... per product folder). Photos are validated and stored by content hash
like crawled ones. Re-ingesting skips products whose content (metadata + photo bytes) is unchanged.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from datetime import datetime, timezone
from pathlib import Path

from prefect import task
from tqdm import tqdm

from core.errors import ShoesearchError
from photos.imagestore import ImageLimits, store_image
from warehouse import open_warehouse, start_run
from warehouse.locks import step_lock

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"}
ROWS_PER_PART = 20_000  # images staged per Parquet part: bounded memory on big catalogues


def read_labels(catalog_dir: Path) -> dict[str, dict]:
    """``labels.csv`` as {relative image path: {"group_id", "domain", "is_noise"}} (empty if absent)."""
    path = catalog_dir / "labels.csv"
    if not path.exists():
        return {}
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or "image" not in reader.fieldnames:
            raise ShoesearchError(f"{path}: the first column must be 'image' (got {reader.fieldnames})")
        out = {}
        for line, row in enumerate(reader, start=2):
            noise = (row.get("is_noise") or "").strip().lower()
            if noise not in ("", "0", "1", "true", "false"):
                raise ShoesearchError(f"{path}:{line}: is_noise must be 0/1, got {row.get('is_noise')!r}")
            out[row["image"].strip()] = {
                "group_id": (row.get("group_id") or "").strip() or None,
                "domain": (row.get("domain") or "").strip() or None,
                "is_noise": None if noise == "" else noise in ("1", "true"),
            }
        return out


def catalog_products(catalog_dir: Path) -> list[tuple[str, list[Path]]]:
    """[(folder name, sorted photo paths)] for every product folder that has photos."""
    if not catalog_dir.is_dir():
        raise ShoesearchError(f"catalogue folder {catalog_dir} does not exist")
    products = []
    for folder in sorted(p for p in catalog_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        photos = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if photos:
            products.append((folder.name, photos))
    if not products:
        raise ShoesearchError(f"{catalog_dir} has no product folders with photos (expected DIR/<product>/<photos>)")
    return products


def catalog_name(catalog_dir: Path, name: str | None) -> str:
    raw = name or catalog_dir.resolve().name
    clean = re.sub(r"[^A-Za-z0-9_.-]+", "-", raw).strip("-")
    if not clean:
        raise ShoesearchError(f"cannot derive a catalogue name from {raw!r}: pass name=")
    return clean


def ingest_catalog(settings, catalog_dir: str | Path, name: str | None = None) -> str:
    """Load ``catalog_dir`` into products/images; returns the run id (the dataset version).

    One ingest at a time per home: a second one waits for the first, then finds what it loaded
    unchanged (two at once would each write every product they both saw as new).
    """
    catalog_dir = Path(catalog_dir)
    products = catalog_products(catalog_dir)  # bad input is refused before the home is touched
    with step_lock(settings.warehouse_dir, "ingest"):
        return _ingest_locked(settings, catalog_dir, products, name)


def _ingest_locked(settings, catalog_dir: Path, products: list[tuple[str, list[Path]]], name: str | None) -> str:
    labels = read_labels(catalog_dir)
    meta_path = catalog_dir / "products.json"
    metadata = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.exists() else {}
    source = catalog_name(catalog_dir, name)
    wh = open_warehouse(settings)
    known = {
        r["product_id"]: r["content_hash"]
        for r in wh.query(
            "SELECT product_id, content_hash FROM products_current WHERE source = 'catalog' AND starts_with(product_id, ?)",
            [f"{source}:"],
        ).to_pylist()
    }
    limits = ImageLimits.from_settings(settings)
    params = {"catalog": str(catalog_dir.resolve()), "name": source}
    with start_run(wh, step="ingest", params=params) as run:
        product_rows, image_rows, skipped = [], [], 0
        for folder, photos in tqdm(products, desc=f"ingest {source}", unit="product"):
            product_id = f"{source}:{folder}"
            meta = metadata.get(folder, {})
            blobs = [p.read_bytes() for p in photos]
            digest = hashlib.sha1(json.dumps(meta, sort_keys=True, ensure_ascii=False).encode())
            for photo, blob in zip(photos, blobs):
                digest.update(hashlib.sha1(blob).digest())
                digest.update(json.dumps(labels.get(f"{folder}/{photo.name}"), sort_keys=True).encode())
            content_hash = digest.hexdigest()
            if known.get(product_id) == content_hash:
                skipped += 1
                continue
            for position, (photo, blob) in enumerate(zip(photos, blobs)):
                stored = store_image(blob, settings.images_dir, limits)
                label = labels.get(f"{folder}/{photo.name}", {})
                image_rows.append({
                    "image_id": f"{product_id}#{position}", "product_id": product_id, "position": position,
                    "url": photo.resolve().as_uri(), "sha1": stored.sha1, "path": stored.path,
                    "width": stored.width, "height": stored.height, "bytes": stored.bytes,
                    "status": stored.status, "reason": stored.reason,
                    "domain": label.get("domain"), "is_noise": label.get("is_noise"),
                })
            product_rows.append({
                "product_id": product_id, "source": "catalog", "sku": meta.get("sku") or folder,
                "title": meta.get("title") or folder, "brand": meta.get("brand"), "brand_id": meta.get("brand_id"),
                "category": meta.get("category"), "category_ids": meta.get("category_ids"),
                "shop_id": meta.get("shop_id"), "shop_name": meta.get("shop_name"),
                "price": meta.get("price"), "list_price": meta.get("list_price"),
                "url": meta.get("url") or (catalog_dir / folder).resolve().as_uri(),
                "variants": meta.get("variants"), "n_images": len(photos), "content_hash": content_hash,
                "crawled_at": datetime.now(timezone.utc),
            })
            if len(image_rows) >= ROWS_PER_PART:
                run.write("products", product_rows)
                run.write("images", image_rows)
                product_rows, image_rows = [], []
        run.write("products", product_rows)
        run.write("images", image_rows)
        run.message = f"{len(products) - skipped} products loaded, {skipped} unchanged"
    return run.run_id


ingest_task = task(ingest_catalog, name="ingest", retries=0)
