"""The demo shop's catalog: a folder ``DIR/<product>/<photos>`` as JD-like products with galleries."""

from __future__ import annotations

import csv
import hashlib
import json
import random
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from core.errors import ShoesearchError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"}
DEFAULT_CATEGORY = ("运动户外/运动鞋包/跑步鞋", "1318,12099,9756")
FALLBACK_BRANDS = [("Nike", "8557"), ("adidas", "8528"), ("李宁", "5993"), ("安踏", "14026"), ("回力", "18455")]


@dataclass
class Photo:
    file: Path
    rel: str  # path relative to the catalog folder
    jfs: str  # CDN path, the same for the same file in any gallery
    is_noise: bool | None
    fault: str | None = None




@dataclass
class ShopProduct:
    index: int
    folder: str
    meta: dict
    gallery: list[Photo] = field(default_factory=list)
    layout_fault: bool = False
    escape: str | None = None  # a fault that tries to lead the crawler off the site (demo_shop/faults.py)
    page_sku: str | None = None  # sku_swap: the SKU its item page claims
    size_fault: str | None = None  # a size or length the crawler must not trust (demo_shop/faults.py)

    @property
    def sku(self) -> str:
        return str(self.meta["sku"])


def jfs_for(rel: str) -> str:
    digest = hashlib.sha1(rel.encode("utf-8")).hexdigest()
    suffix = Path(rel).suffix.lower()
    return f"jfs/t1/{zlib.crc32(rel.encode()) % 100_000}/{digest[:24]}{'.jpg' if suffix == '.jpeg' else suffix}"


class ProductFields(BaseModel):
    """One product's entry in ``products.json`` (docs/ARCHITECTURE.md lists the fields); other keys are kept."""

    model_config = ConfigDict(extra="allow", coerce_numbers_to_str=True, allow_inf_nan=False)
    sku: str | None = None
    title: str | None = None
    brand: str | None = None
    brand_id: str | None = None
    category: str | None = None
    category_ids: str | None = None
    shop_id: str | None = None
    shop_name: str | None = None
    price: float | None = None
    list_price: float | None = None
    url: str | None = None
    variants: list[str] | None = None


PRODUCTS_JSON = TypeAdapter(dict[str, ProductFields])


def read_products_json(catalog_dir: Path) -> dict[str, dict]:
    """``DIR/products.json`` as {folder: fields given} ({} if absent), checked whole before anything uses it:
    a wrong shape is one line naming the file and the place in it, e.g. ``"boot".price: ...``."""
    path = Path(catalog_dir) / "products.json"
    if not path.exists():
        return {}
    try:
        products = PRODUCTS_JSON.validate_python(json.loads(path.read_text(encoding="utf-8")))
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, ValidationError
        raise ShoesearchError(f"{path}: {_shape_error(exc)}") from None
    return {folder: fields.model_dump(exclude_unset=True) for folder, fields in products.items()}


def _shape_error(exc: ValueError) -> str:
    if not isinstance(exc, ValidationError):
        return f"not valid JSON: {exc}"
    first = exc.errors(include_url=False)[0]
    loc, msg = first["loc"], first["msg"]
    if first["type"] == "model_type":  # not "... or instance of ProductFields": the class is ours, not the file's
        msg = "Input should be a valid dictionary"
    where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc[1:])
    where = f"{json.dumps(loc[0], ensure_ascii=False)}{where}" if loc else "top level"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {msg}, got {_short(first['input'])}{more}"


def _short(value) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str, allow_nan=True)
    return text if len(text) <= 60 else text[:57] + "..."


def synth_metadata(folder: str) -> dict:
    """Deterministic product fields for a catalog folder without ``products.json``."""
    h = int(hashlib.sha1(folder.encode("utf-8")).hexdigest(), 16)
    brand, brand_id = FALLBACK_BRANDS[h % len(FALLBACK_BRANDS)]
    price = 79 + (h >> 8) % 1200 - 0.01
    sku = str(10 ** 11 + (h >> 20) % (9 * 10 ** 11))
    return {
        "sku": sku, "title": f"{brand} {folder} 运动鞋", "brand": brand, "brand_id": brand_id,
        "category": DEFAULT_CATEGORY[0], "category_ids": DEFAULT_CATEGORY[1], "price": round(price, 2),
        "list_price": round(price * 1.3, 0) - 0.01, "shop_id": str(1_000_000 + h % len(FALLBACK_BRANDS)),
        "shop_name": f"{brand}官方旗舰店", "variants": [],
    }


def read_labels(catalog_dir: Path) -> dict[str, dict]:
    """``DIR/labels.csv`` as {relative image path: {"group_id", "domain", "is_noise"}} ({} if absent);
    a missing ``image`` column or an ``is_noise`` that is not 0/1/true/false is one line naming the file."""
    path = Path(catalog_dir) / "labels.csv"
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


def load_catalog(catalog_dir: Path, noise_rate: float = 0.0, seed: int = 0) -> list[ShopProduct]:
    """Products of a catalog folder, galleries sorted by file name; ``noise_rate`` injects others' photos."""
    catalog_dir = Path(catalog_dir)
    if not catalog_dir.is_dir():
        raise ShoesearchError(f"catalog folder {catalog_dir} does not exist")
    if not 0 <= noise_rate < 1:
        raise ShoesearchError(f"--noise-rate must be in [0, 1), got {noise_rate}")
    metadata = read_products_json(catalog_dir)
    labels = read_labels(catalog_dir)
    products = []
    for folder in sorted(p for p in catalog_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            continue
        meta = {**synth_metadata(folder.name), **metadata.get(folder.name, {})}
        gallery = []
        for f in files:
            rel = f"{folder.name}/{f.name}"
            noise = labels.get(rel, {}).get("is_noise")
            gallery.append(Photo(f, rel, jfs_for(rel), noise if labels else False))
        products.append(ShopProduct(len(products), folder.name, meta, gallery))
    if not products:
        raise ShoesearchError(f"{catalog_dir} has no product folders with photos (expected DIR/<product>/<photos>)")
    skus = [p.sku for p in products]
    if len(set(skus)) != len(skus):
        raise ShoesearchError(f"{catalog_dir}: two product folders have the same sku")
    if noise_rate > 0 and len(products) > 1:
        _inject_noise(products, noise_rate, seed)
    return products


def _inject_noise(products: list[ShopProduct], noise_rate: float, seed: int) -> None:
    """Insert photos of other products so that about ``noise_rate`` of each gallery is noise."""
    originals = [list(p.gallery) for p in products]
    for product in products:
        rng = random.Random(f"noise-{seed}-{product.folder}")
        n_own = len(originals[product.index])
        n_noise = round(noise_rate * n_own / (1 - noise_rate))
        for _ in range(n_noise):
            other = rng.choice([q for q in products if q.index != product.index])
            src = rng.choice(originals[other.index])
            photo = Photo(src.file, src.rel, src.jfs, True)
            product.gallery.insert(rng.randint(1, len(product.gallery)), photo)

