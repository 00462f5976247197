"""Load a local catalog folder into ``products`` and ``images`` (for users with their own photos).

Layout (see docs/ARCHITECTURE.md): ``DIR/<product>/<photos>``; the file that sorts first is
photo 0. Optional ``labels.csv`` (image,group_id[,domain[,is_noise]]) and ``products.json``
(title, brand, price ... per product folder). Photos are validated and stored by content hash
like crawled ones. Re-ingesting skips products whose content (metadata + photo bytes) is unchanged.

Hostile folders: a name that is not UTF-8 and a link that leaves the folder are skipped and named
(counted in the run's message); a photo over ``crawl.max_image_bytes`` is recorded ``too_large``
without being read; ``products.json`` and ``labels.csv`` are checked before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from prefect import task

from core.errors import ShoesearchError
from core.progress import progress, run_logger
from demo_shop.catalog import IMAGE_SUFFIXES, read_labels, read_products_json
from photos.imagestore import ImageLimits, StoredImage, read_photo_file, store_image
from warehouse import open_warehouse, start_run
from warehouse.locks import step_lock

ROWS_PER_PART = 20_000  # images staged per Parquet part: bounded memory on big catalogs


Skipped = list[tuple[str, str]]  # (reason, the entry's name as shown)


def catalog_products(catalog_dir: Path) -> tuple[list[tuple[str, list[Path]]], Skipped]:
    """[(folder name, sorted photo paths)] for every product folder that has photos, and what was skipped."""
    if not catalog_dir.is_dir():
        raise ShoesearchError(f"catalog folder {catalog_dir} does not exist")
    root, products, skipped = catalog_dir.resolve(), [], []
    for folder in sorted(p for p in catalog_dir.iterdir() if not p.name.startswith(".") and p.is_dir()):
        if reason := skip_reason(folder, root):
            skipped.append((reason, shown(folder, catalog_dir)))
            continue
        photos = []
        for photo in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            if reason := skip_reason(photo, root):
                skipped.append((reason, shown(photo, catalog_dir)))
            elif photo.is_file():
                photos.append(photo)
        if photos:
            products.append((folder.name, photos))
    if not products:
        raise ShoesearchError(f"{catalog_dir} has no product folders with photos (expected DIR/<product>/<photos>)"
                              + (f"; {skip_summary(skipped)}" if skipped else ""))
    return products, skipped


def skip_reason(path: Path, root: Path) -> str | None:
    """Why a folder or photo is left out (None: it is read). ``root`` is the resolved catalog folder."""
    try:
        path.name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes, kept by Python as surrogates: no table can hold the name
        return "name is not UTF-8"
    if path.is_symlink() and not path.resolve().is_relative_to(root):
        return "link leaves the catalog folder"
    return None


def shown(path: Path, catalog_dir: Path) -> str:
    """The entry's path in the folder as text a terminal and a table can hold (bytes when not UTF-8)."""
    rel = str(path.relative_to(catalog_dir))
    if path.is_symlink():
        rel = f"{rel} -> {os.readlink(path)}"
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        return repr(os.fsencode(rel))
    return rel


def skip_summary(skipped: Skipped, most: int = 5) -> str:
    """One line: how many entries were skipped, by reason, naming the first ``most`` of each."""
    parts = []
    for reason, n in Counter(reason for reason, _ in skipped).items():
        names = [name for r, name in skipped if r == reason]
        more = f" and {n - most} more" if n > most else ""
        parts.append(f"{reason} ({n}): {', '.join(names[:most])}{more}")
    return f"{len(skipped)} skipped: " + "; ".join(parts)


def catalog_name(catalog_dir: Path, name: str | None) -> str:
    raw = name or catalog_dir.resolve().name
    clean = re.sub(r"[^A-Za-z0-9_.-]+", "-", raw).strip("-")
    if not clean:
        raise ShoesearchError(f"cannot derive a catalog name from {raw!r}: pass name=")
    return clean


def ingest_catalog(settings, catalog_dir: str | Path, name: str | None = None) -> str:
    """Load ``catalog_dir`` into products/images; returns the run id (the dataset version).

    One ingest at a time per home: a second one waits for the first, then finds what it loaded
    unchanged (two at once would each write every product they both saw as new).
    """
    catalog_dir = Path(catalog_dir)
    # bad input is refused before the home is touched
    products, skipped = catalog_products(catalog_dir)
    labels, metadata = read_labels(catalog_dir), read_products_json(catalog_dir)
    source = catalog_name(catalog_dir, name)
    if skipped:
        print(f"ingest {source}: {skip_summary(skipped)}", flush=True)
    with step_lock(settings.warehouse_dir, "ingest"):
        return _ingest_locked(settings, catalog_dir, products, source, labels, metadata, skipped)


def _ingest_locked(settings, catalog_dir: Path, products, source: str, labels: dict, metadata: dict,
                   skipped: Skipped) -> str:
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
    with start_run(wh, step="ingest", params=params) as run, progress("ingest", len(products), "products") as bar:
        product_rows, image_rows, unchanged = [], [], 0
        for folder, photos in products:
            bar.advance(1)
            product_id, meta = f"{source}:{folder}", metadata.get(folder, {})
            blobs = [_read(photo, limits) for photo in photos]
            content_hash = _content_hash(meta, [labels.get(f"{folder}/{p.name}") for p in photos], blobs)
            if known.get(product_id) == content_hash:
                unchanged += 1
                continue
            for position, (photo, blob) in enumerate(zip(photos, blobs)):
                stored = blob if isinstance(blob, StoredImage) else store_image(blob, settings.images_dir, limits)
                image_rows.append(_image_row(product_id, position, photo, stored,
                                             labels.get(f"{folder}/{photo.name}", {})))
            product_rows.append(_product_row(product_id, meta, folder, catalog_dir, len(photos), content_hash))
            if len(image_rows) >= ROWS_PER_PART:
                run.write("products", product_rows)
                run.write("images", image_rows)
                product_rows, image_rows = [], []
        gone = sorted(set(known) - {f"{source}:{folder}" for folder, _ in products})
        product_rows += [removed_row(product_id) for product_id in gone]
        run.write("products", product_rows)
        run.write("images", image_rows)
        run.message = f"{len(products) - unchanged} products loaded, {unchanged} unchanged"
        if gone:
            run.message += f", {len(gone)} removed (no longer in the folder)"
        if skipped:
            run.message += f"; {skip_summary(skipped)}"
    run_logger("ingest").info("ingest %s (%s): %s", run.run_id, source, run.message)
    return run.run_id


def _read(photo: Path, limits: ImageLimits) -> bytes | StoredImage:
    """The photo's bytes, or its ``too_large`` refusal (not read); an unreadable file is one line naming it."""
    try:
        return read_photo_file(photo, limits)
    except OSError as exc:
        raise ShoesearchError(f"cannot read photo {photo}: {exc.strerror or exc}") from exc


def _content_hash(meta: dict, photo_labels: list, blobs: list[bytes | StoredImage]) -> str:
    """What decides "unchanged": the product's fields, each photo's bytes (or size when too large) and labels."""
    digest = hashlib.sha1(json.dumps(meta, sort_keys=True, ensure_ascii=False).encode())
    for label, blob in zip(photo_labels, blobs):
        digest.update(hashlib.sha1(blob).digest() if isinstance(blob, bytes) else f"{blob.status}:{blob.bytes}".encode())
        digest.update(json.dumps(label, sort_keys=True).encode())
    return digest.hexdigest()


def _image_row(product_id: str, position: int, photo: Path, stored: StoredImage, label: dict) -> dict:
    return {
        "image_id": f"{product_id}#{position}", "product_id": product_id, "position": position,
        "url": photo.resolve().as_uri(), "sha1": stored.sha1, "path": stored.path,
        "width": stored.width, "height": stored.height, "bytes": stored.bytes,
        "status": stored.status, "reason": stored.reason,
        "domain": label.get("domain"), "is_noise": label.get("is_noise"),
    }


def _product_row(product_id: str, meta: dict, folder: str, catalog_dir: Path, n_images: int,
                 content_hash: str) -> dict:
    return {
        "product_id": product_id, "source": "catalog", "sku": meta.get("sku") or folder,
        "title": meta.get("title") or folder, "brand": meta.get("brand"), "brand_id": meta.get("brand_id"),
        "category": meta.get("category"), "category_ids": meta.get("category_ids"),
        "shop_id": meta.get("shop_id"), "shop_name": meta.get("shop_name"),
        "price": meta.get("price"), "list_price": meta.get("list_price"),
        "url": meta.get("url") or (catalog_dir / folder).resolve().as_uri(),
        "variants": meta.get("variants"), "n_images": n_images, "content_hash": content_hash,
        "crawled_at": datetime.now(timezone.utc),
    }


REMOVED = "removed"  # the content hash of a product's removal record: products_current no longer shows it


def removed_row(product_id: str) -> dict:
    """The record that ``product_id`` left the catalog: newest of its rows, no photos; ``products_current`` and
    ``images_current`` skip it (the history stays in ``products``), and a later ingest that finds the folder
    again loads it anew."""
    return {"product_id": product_id, "source": "catalog", "sku": product_id.split(":", 1)[-1], "n_images": 0,
            "content_hash": REMOVED, "crawled_at": datetime.now(timezone.utc)}


ingest_task = task(ingest_catalog, name="ingest", retries=0)
