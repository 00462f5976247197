"""HTML, JSON and photo bytes of the demo shop, with JD's structure (what ``crawlers/jdsite.py`` parses)."""

from __future__ import annotations

import html
import io
import json
from functools import lru_cache
from pathlib import Path
from string import Template
from typing import Callable

from PIL import Image

from demo_shop.catalog import ShopProduct

TEMPLATES = Path(__file__).with_name("templates")
HOVER = ' class="img-hover"'
EAGER_IMAGES = 10  # like JD, only the first items of a listing carry a real ``src``
BOMB_SIDE = 7000  # a 49-megapixel PNG of a few KB: past the crawler's pixel limit


@lru_cache(maxsize=None)
def template(name: str) -> Template:
    return Template((TEMPLATES / name).read_text(encoding="utf-8"))


def esc(value) -> str:
    return html.escape(str(value if value is not None else ""), quote=True)


def _js_str(value: str) -> str:
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'").replace("\n", " ") + "'"


@lru_cache(maxsize=4096)
def resized(path: Path, side: int) -> bytes:
    with Image.open(path) as img:
        img = img.convert("RGB")
        img.thumbnail((side, side))
        out = io.BytesIO()
        img.save(out, "JPEG", quality=85)
        return out.getvalue()


@lru_cache(maxsize=1)
def bomb_png() -> bytes:
    out = io.BytesIO()
    Image.new("1", (BOMB_SIDE, BOMB_SIDE), 1).save(out, "PNG", optimize=True)
    return out.getvalue()


def listing_items(products: list[ShopProduct], eager: bool, href: Callable[[ShopProduct], str] | None = None) -> str:
    """``li.gl-item`` rows; ``href(p)`` is the item link (default ``//item.jd.com/<sku>.html``)."""
    tpl = template("listing_item.html")
    rows = []
    for i, p in enumerate(products):
        title = str(p.meta.get("title") or "")
        rows.append(tpl.substitute(
            sku=esc(p.sku), title=esc(title), title_html=esc(title), price=esc(f"{float(p.meta.get('price') or 0):.2f}"),
            shop_id=esc(p.meta.get("shop_id")), shop_name=esc(p.meta.get("shop_name")),
            img_attr="src" if eager and i < EAGER_IMAGES else "data-lazy-img",
            img_host=int(p.sku) % 10, jfs=esc(p.gallery[0].jfs),
            href=esc(href(p) if href else f"//item.jd.com/{p.sku}.html"),
        ))
    return "\n".join(rows)


def _page_config(p: ShopProduct, meta: dict, sku: str, cat_ids: list[str], variants: list[str],
                 extra_images: list[str]) -> str:
    if p.layout_fault:
        return '<script charset="gbk">var pageConfig = {compatible: true, searchType: 1};</script>'
    color_size = ", ".join(f'{{"skuId": {v}, "颜色": "款{i + 1}"}}' for i, v in enumerate([p.sku] + variants))
    images = [ph.jfs for ph in p.gallery] + list(extra_images)
    return (
        '<script charset="gbk">\nvar pageConfig = {\n    compatible: true,\n    product: {\n'
        f"        skuid: {sku},\n"
        f"        name: {_js_str(meta.get('title') or '')},\n"
        "        skuMarkJson: {isxg:false,isJDexpress:false,isjdmarket:false},\n"
        f"        src: '{p.gallery[0].jfs}',\n"
        f"        imageList: [{','.join(json.dumps(u) for u in images)}],\n"
        f"        cat: [{','.join(cat_ids)}],\n"
        f"        brand: {meta.get('brand_id') or 0},\n"
        f"        venderId:{meta.get('shop_id') or 0},\n"
        f"        shopId:'{meta.get('shop_id') or ''}',\n"
        f"        colorSize: [{color_size}],\n"
        f"        desc: '//cd.jd.com/description/channel?skuId={sku}&mainSkuId={sku}',\n"
        "        twoColumn: false,\n    }\n};\n</script>"
    )


def item_page(p: ShopProduct, sku: str | None = None, extra_images: list[str] = (), title_prefix: str = "") -> str:
    """The item page of ``p``; ``sku``: the SKU the page claims (default its own), ``extra_images``:
    more ``imageList`` entries (full URLs), ``title_prefix``: marks a copy served elsewhere."""
    meta = {**p.meta, "title": title_prefix + str(p.meta.get("title") or "")}
    sku = sku or p.sku
    cat_ids = [c for c in str(meta.get("category_ids") or "").split(",") if c]
    cats = (cat_ids + ["0", "0", "0"])[:3]
    crumbs = "\n".join(
        f'<div class="item{" first" if i == 0 else ""}"><a href="//list.jd.com/list.html?cat={esc(",".join(cat_ids[: i + 1]))}">{esc(name)}</a></div><div class="sep">&gt;</div>'
        for i, name in enumerate(str(meta.get("category") or "").split("/")) if name
    )
    variants = [str(v) for v in meta.get("variants") or []]
    thumbs = "\n".join(
        '<li' + (HOVER if i == 0 else '') + f'><img alt="{esc(meta.get("title"))}" src="//img1{i % 10}.360buyimg.com/n5/{ph.jfs}" data-url="{ph.jfs}" data-img="1" width="50" height="50"></li>'
        for i, ph in enumerate(p.gallery)
    )
    variant_html = "\n".join(
        f'<div class="item{" selected" if v == p.sku else ""}" data-sku="{esc(v)}" data-value="{esc(v)}"><a href="#none"><i>{esc(v)}</i></a></div>'
        for v in [p.sku] + variants
    )
    page_config = _page_config(p, meta, sku, cat_ids, variants, list(extra_images))
    return template("item.html").substitute(
        title=esc(meta.get("title")), page_config=page_config, cat1=cats[0], cat2=cats[1], cat3=cats[2],
        sku=esc(sku), crumbs=crumbs, cat_ids=esc(meta.get("category_ids")), brand=esc(meta.get("brand")),
        brand_id=esc(meta.get("brand_id")), shop_id=esc(meta.get("shop_id")), shop_name=esc(meta.get("shop_name")),
        img_host=int(p.sku) % 10, main_jfs=p.gallery[0].jfs, thumbs=thumbs, variants=variant_html,
    )
