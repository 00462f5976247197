"""Deterministic synthetic shoe catalog: the demo shop's default content and the tests' data.

Every product is a procedurally drawn shoe design (silhouette, colours, stripes, logo, laces).
Its gallery starts with the front view (side profile on white, as JD main images are), then
other views of the same shoe (mirrored, 3/4 perspective, the pair, detail crop, other scale, light
and background), and noise photos injected at ``noise_rate``: insole close-ups, size charts,
boxes, model shots and photos of other products. The ground truth goes to ``labels.csv``
(``is_noise``) and ``manifest.json``. Product ``i`` looks the same whatever ``n_products`` is,
so a larger catalog extends a smaller one (the "new products" of a nightly run).
"""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import uuid
from pathlib import Path

from demo_shop.drawing import CATEGORIES, GENUINE_VIEWS, ShoeDesign, design_for, render_noise, render_view  # noqa: F401 - re-exported

GENERATOR_VERSION = 3  # 3: titles' 男款/女款 agree with the category (search for 女鞋 finds 女款 only)
JPEG_QUALITY = 90
# Noise photos and how often each kind appears: JD galleries mostly add size charts, insole and
# box close-ups and model shots; another product's photo is rarer.
NOISE_KINDS = {"insole": 0.22, "size_chart": 0.22, "box": 0.2, "model_shot": 0.22, "other_product": 0.14}

BRANDS = [("Nike", "8557"), ("adidas", "8528"), ("李宁", "5993"), ("安踏", "14026"), ("特步", "15148"),
          ("361°", "11934"), ("Skechers", "25219"), ("Converse", "5915"), ("回力", "18455"), ("New Balance", "12297")]
GENDER_OF_CATEGORY = {"流行男鞋": "男款", "时尚女鞋": "女款"}  # level-2 category -> the title's fit


def product_metadata(index: int, d: ShoeDesign) -> dict:
    rng = random.Random(f"meta-{index}")
    brand, brand_id = BRANDS[rng.randrange(len(BRANDS))]
    _, category, cat_ids = CATEGORIES[index % len(CATEGORIES)]
    leaf = category.rsplit("/", 1)[1]
    price = round(rng.uniform(79, 1299), 0) - 0.01
    sku = str(100_012_000_000 + index * 7919)
    fit = rng.choice(["男款", "女款", "情侣款"])
    fit = GENDER_OF_CATEGORY.get(category.split("/")[1], fit)  # a 流行男鞋 product is not sold as 女款
    return {
        "sku": sku,
        "title": f"{brand} {d.colour_name}{leaf} {fit} {rng.choice(['透气', '轻便', '防滑', '减震'])}款 {2024 + index % 3}新款",
        "brand": brand,
        "brand_id": brand_id,
        "category": category,
        "category_ids": cat_ids,
        "price": price,
        "list_price": round(price * rng.uniform(1.1, 1.6), 0) - 0.01,
        "shop_id": str(1_000_000 + BRANDS.index((brand, brand_id))),
        "shop_name": f"{brand}官方旗舰店",
        "variants": [str(int(sku) + k) for k in (1, 2)],
    }


def generate_product(index: int, noise_rate: float, image_size: int, n_views: int | None = None) -> list[tuple]:
    """The gallery of product ``index``: ``[(image, is_noise, kind, group_index), ...]``, front first."""
    rng = random.Random(f"gallery-{index}")
    d = design_for(index)
    meta = product_metadata(index, d)
    n_genuine = n_views or rng.randint(6, len(GENUINE_VIEWS))
    views = ["side"] + rng.sample(GENUINE_VIEWS[1:], n_genuine - 1)
    photos = [(render_view(d, v, image_size, rng), False, v, index) for v in views]
    # Noise photos: on average noise_rate of the final gallery, never the front view.
    expected = noise_rate * n_genuine / max(1e-9, 1 - noise_rate)
    n_noise = int(expected) + (1 if rng.random() < expected - int(expected) else 0)
    for _ in range(n_noise):
        kind = rng.choices(list(NOISE_KINDS), weights=list(NOISE_KINDS.values()))[0]
        if kind == "other_product":
            other = index + rng.randint(1, 97)
            od = design_for(other)
            photos.append((render_view(od, rng.choice(GENUINE_VIEWS), image_size, rng), True, kind, other))
        else:
            photos.append((render_noise(kind, d, meta["brand"], image_size, rng), True, kind, None))
    tail = photos[1:]
    rng.shuffle(tail)
    return [photos[0]] + tail


def folder_name(index: int) -> str:
    return f"p{index:05d}"


def generate_catalog(out_dir: Path, n_products: int, noise_rate: float = 0.2, seed: int = 0,
                     image_size: int = 256) -> Path:
    """Write a catalog folder (see docs/ARCHITECTURE.md) of ``n_products`` products; idempotent.

    ``seed`` shifts which designs are used (product ``i`` is design ``seed * 100_000 + i``).
    The folder is built in a temp directory and renamed into place, so a reader never sees a
    half-written catalog; an existing complete catalog with the same parameters is reused.
    """
    out_dir = Path(out_dir)
    params = {"generator": "shoesearch-synthetic", "version": GENERATOR_VERSION, "n_products": n_products,
              "noise_rate": noise_rate, "seed": seed, "image_size": image_size}
    manifest_path = out_dir / "manifest.json"
    if manifest_path.exists() and json.loads(manifest_path.read_text()).get("params") == params:
        return out_dir
    if not 0 <= noise_rate < 1:
        raise ValueError(f"noise_rate must be in [0, 1), got {noise_rate}")
    tmp = out_dir.with_name(f".{out_dir.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.mkdir(parents=True)
    products, labels, manifest = {}, [], []
    for i in range(n_products):
        index = seed * 100_000 + i
        folder = folder_name(index)
        (tmp / folder).mkdir()
        meta = product_metadata(index, design_for(index))
        products[folder] = meta
        entries = []
        for pos, (img, is_noise, kind, group) in enumerate(generate_product(index, noise_rate, image_size)):
            name = f"{pos:02d}.jpg"
            img.save(tmp / folder / name, "JPEG", quality=JPEG_QUALITY)
            group_id = folder_name(group) if group is not None else f"noise-{kind}"
            labels.append((f"{folder}/{name}", group_id, "shop", int(is_noise)))
            entries.append({"file": name, "is_noise": is_noise, "noise_kind": kind if is_noise else None,
                            "view": None if is_noise else kind})
        manifest.append({"folder": folder, "sku": meta["sku"], "images": entries})
    with open(tmp / "labels.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "group_id", "domain", "is_noise"])
        writer.writerows(labels)
    (tmp / "products.json").write_text(json.dumps(products, ensure_ascii=False, indent=1), encoding="utf-8")
    (tmp / "manifest.json").write_text(json.dumps({"params": params, "products": manifest}, ensure_ascii=False, indent=1))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out_dir)
    return out_dir
