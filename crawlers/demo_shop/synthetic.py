"""Deterministic synthetic shoe catalogue: the demo shop's default content and the tests' data.

Every product is a procedurally drawn shoe design (silhouette, colours, stripes, logo, laces).
Its gallery starts with the front view (side profile on white, as JD main images are), then
other views of the same shoe (mirrored, 3/4 perspective, the pair, detail crop, other scale, light
and background), and noise photos injected at ``noise_rate``: insole close-ups, size charts,
boxes, model shots and photos of other products. The ground truth goes to ``labels.csv``
(``is_noise``) and ``manifest.json``. Product ``i`` looks the same whatever ``n_products`` is,
so a larger catalogue extends a smaller one (the "new products" of a nightly run).
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

GENERATOR_VERSION = 3  # 3: titles' 男款/女款 agree with the category (search for 女鞋 finds 女款 only)
SUPERSAMPLE = 2  # drawn at 2x then downsampled: anti-aliased edges
JPEG_QUALITY = 90
GENUINE_VIEWS = ("side", "mirror", "three_quarter", "pair", "detail", "far", "tilted", "back_light")
# Noise photos and how often each kind appears: JD galleries mostly add size charts, insole and
# box close-ups and model shots; another product's photo is rarer.
NOISE_KINDS = {"insole": 0.22, "size_chart": 0.22, "box": 0.2, "model_shot": 0.22, "other_product": 0.14}

BRANDS = [("Nike", "8557"), ("adidas", "8528"), ("李宁", "5993"), ("安踏", "14026"), ("特步", "15148"),
          ("361°", "11934"), ("Skechers", "25219"), ("Converse", "5915"), ("回力", "18455"), ("New Balance", "12297")]
CATEGORIES = [  # (kind, JD category path, cat ids)
    ("sneaker", "运动户外/运动鞋包/跑步鞋", "1318,12099,9756"),
    ("sneaker", "鞋靴/流行男鞋/休闲鞋", "11729,11730,6908"),
    ("boot", "鞋靴/流行男鞋/男靴", "11729,11730,6912"),
    ("heel", "鞋靴/时尚女鞋/高跟鞋", "11729,11731,9772"),
    ("loafer", "鞋靴/流行男鞋/正装鞋", "11729,11730,6906"),
    ("canvas", "鞋靴/流行男鞋/帆布鞋", "11729,11730,9783"),
]
GENDER_OF_CATEGORY = {"流行男鞋": "男款", "时尚女鞋": "女款"}  # level-2 category -> the title's fit
COLOURS = {
    "黑色": (25, 25, 28), "白色": (236, 236, 232), "红色": (190, 30, 40), "蓝色": (30, 70, 170),
    "灰色": (128, 128, 132), "绿色": (40, 130, 70), "棕色": (120, 75, 40), "米色": (215, 195, 160),
    "粉色": (230, 140, 170), "橙色": (235, 120, 30), "藏青": (25, 35, 80), "黄色": (230, 200, 40),
}


@dataclass(frozen=True)
class ShoeDesign:
    index: int
    kind: str
    upper: tuple
    sole: tuple
    accent: tuple
    colour_name: str
    shaft: float  # collar height (boots are tall)
    toe: float  # toe length / pointiness
    stripes: int
    stripe_angle: float
    logo: str  # circle | swoosh | star | bar | none
    laces: bool
    pattern: str  # plain | dots | checks | panels


def design_for(index: int) -> ShoeDesign:
    """The shoe of product ``index`` (independent of catalogue size)."""
    rng = random.Random(f"design-{index}")
    kind = CATEGORIES[index % len(CATEGORIES)][0]
    names = list(COLOURS)
    colour_name = rng.choice(names)
    accent_name = rng.choice([n for n in names if n != colour_name])
    return ShoeDesign(
        index=index,
        kind=kind,
        upper=_jitter(COLOURS[colour_name], rng, 18),
        sole=_jitter(rng.choice([(240, 240, 236), (30, 30, 30), (200, 170, 120), COLOURS[accent_name]]), rng, 10),
        accent=_jitter(COLOURS[accent_name], rng, 18),
        colour_name=colour_name,
        shaft={"boot": rng.uniform(0.32, 0.42), "heel": rng.uniform(0.0, 0.05)}.get(kind, rng.uniform(0.05, 0.14)),
        toe={"heel": rng.uniform(0.9, 1.3), "loafer": rng.uniform(0.5, 0.8)}.get(kind, rng.uniform(0.3, 0.6)),
        stripes=rng.choice([0, 1, 2, 3, 3, 4]) if kind in ("sneaker", "canvas") else rng.choice([0, 0, 1]),
        stripe_angle=rng.uniform(-50, 50),
        logo=rng.choice(["circle", "swoosh", "star", "bar", "none"]),
        laces=kind in ("sneaker", "canvas", "boot") and rng.random() < 0.85,
        pattern=rng.choice(["plain", "plain", "dots", "checks", "panels"]),
    )


def _jitter(colour: tuple, rng: random.Random, amount: int) -> tuple:
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in colour)


def _profile(d: ShoeDesign) -> tuple[list, list]:
    """Side-profile polygons (upper, sole) in unit coordinates, toe pointing right."""
    top = 0.46 - d.shaft
    toe_x = 0.80 + 0.12 * d.toe
    if d.kind == "heel":
        upper = [(0.12, 0.52), (0.16, 0.40), (0.30, 0.46), (0.52, 0.60), (toe_x - 0.06, 0.68), (toe_x, 0.74),
                 (0.55, 0.74), (0.30, 0.66), (0.14, 0.62)]
        sole = [(0.12, 0.60), (0.16, 0.60), (0.18, 0.86), (0.14, 0.86), (0.13, 0.64), (0.30, 0.70),
                (0.55, 0.76), (toe_x + 0.01, 0.76), (toe_x, 0.79), (0.55, 0.80), (0.30, 0.74)]
        return upper, sole
    upper = [(0.08, 0.74), (0.09, top + 0.05), (0.14, top), (0.30, top + 0.04), (0.42, top + 0.12),
             (0.50, top + 0.02), (0.56, 0.50), (0.70, 0.58), (toe_x - 0.05, 0.64), (toe_x, 0.70), (toe_x, 0.74)]
    sole = [(0.06, 0.73), (toe_x + 0.02, 0.73), (toe_x + 0.03, 0.77), (toe_x - 0.02, 0.82),
            (0.08, 0.82), (0.05, 0.78)]
    return upper, sole


def _scaled(points, box):
    x0, y0, w, h = box
    return [(x0 + x * w, y0 + y * h) for x, y in points]


def draw_side(d: ShoeDesign, size: int, bg=(255, 255, 255)) -> Image.Image:
    """The canonical side view of ``d`` (front photo) at ``size`` px."""
    s = size * SUPERSAMPLE
    img = Image.new("RGB", (s, s), bg)
    draw = ImageDraw.Draw(img)
    box = (0.02 * s, 0.02 * s, 0.96 * s, 0.96 * s)
    upper, sole = _profile(d)
    upper_px = _scaled(upper, box)
    draw.polygon(upper_px, fill=d.upper, outline=tuple(int(c * 0.6) for c in d.upper))
    _draw_pattern(img, d, upper_px)
    draw = ImageDraw.Draw(img)
    for k in range(d.stripes):
        cx = 0.36 + 0.07 * k
        dx = 0.12 * math.tan(math.radians(d.stripe_angle))
        line = _scaled([(cx - dx / 2, 0.50), (cx + dx / 2, 0.70)], box)
        draw.line(line, fill=d.accent, width=int(0.025 * s))
    if d.laces:
        for k in range(4):
            x = 0.50 + 0.05 * k
            draw.line(_scaled([(x, 0.40 + 0.05 * k), (x + 0.04, 0.46 + 0.05 * k)], box), fill=d.accent, width=max(2, s // 120))
    _draw_logo(draw, d, _scaled([(0.24, 0.56)], box)[0], 0.07 * s)
    draw.polygon(_scaled(sole, box), fill=d.sole, outline=tuple(int(c * 0.5) for c in d.sole))
    return img.resize((size, size), Image.LANCZOS)


def _draw_pattern(img: Image.Image, d: ShoeDesign, polygon) -> None:
    if d.pattern == "plain":
        return
    s = img.size[0]
    layer = Image.new("RGB", img.size, d.upper)
    ld = ImageDraw.Draw(layer)
    step = s // 18
    tone = tuple(int(0.55 * a + 0.45 * u) for a, u in zip(d.accent, d.upper))
    if d.pattern == "dots":
        for x in range(0, s, step):
            for y in range(0, s, step):
                ld.ellipse((x, y, x + step // 3, y + step // 3), fill=tone)
    elif d.pattern == "checks":
        for x in range(0, s, step * 2):
            for y in range(0, s, step * 2):
                ld.rectangle((x, y, x + step, y + step), fill=tone)
    else:  # panels: a contrasting heel and toe cap
        ld.rectangle((0, 0, int(0.26 * s), s), fill=d.accent)
        ld.rectangle((int(0.74 * s), 0, s, s), fill=tone)
    mask = Image.new("L", img.size, 0)
    ImageDraw.Draw(mask).polygon(polygon, fill=255)
    img.paste(layer, (0, 0), mask)


def _draw_logo(draw: ImageDraw.ImageDraw, d: ShoeDesign, centre, r) -> None:
    x, y = centre
    if d.logo == "circle":
        draw.ellipse((x - r, y - r, x + r, y + r), outline=d.accent, width=int(r / 3))
    elif d.logo == "swoosh":
        draw.arc((x - 2 * r, y - 1.5 * r, x + 2 * r, y + r), 20, 160, fill=d.accent, width=int(r / 2))
    elif d.logo == "star":
        pts = [(x + r * math.cos(math.radians(90 + 144 * k)), y - r * math.sin(math.radians(90 + 144 * k))) for k in range(5)]
        draw.polygon(pts, fill=d.accent)
    elif d.logo == "bar":
        draw.rectangle((x - 1.5 * r, y - r / 3, x + 1.5 * r, y + r / 3), fill=d.accent)


def draw_pair(d: ShoeDesign, size: int, bg) -> Image.Image:
    """Both shoes of the pair, one behind the other (a common gallery shot)."""
    one = draw_side(d, size, bg)
    small = one.resize((int(size * 0.7), int(size * 0.7)), Image.LANCZOS)
    img = Image.new("RGB", (size, size), bg)
    img.paste(ImageOps.mirror(small), (int(size * 0.28), int(size * 0.02)))
    img.paste(small, (int(size * 0.02), int(size * 0.28)))
    return img


def _background(rng: random.Random) -> tuple:
    return rng.choice([(255, 255, 255), (245, 245, 245), (238, 232, 222), (225, 230, 238), (250, 246, 240)])


def render_view(d: ShoeDesign, view: str, size: int, rng: random.Random) -> Image.Image:
    """One genuine photo of the shoe ``d`` from ``view``, with lighting and framing jitter."""
    if view == "side":
        return draw_side(d, size)
    bg = _background(rng)
    img = draw_pair(d, size, bg) if view == "pair" else draw_side(d, size, bg)
    if view == "mirror":
        img = ImageOps.mirror(img)
    elif view == "three_quarter":
        k = rng.uniform(0.15, 0.3)
        coeffs = _perspective(size, k, flip=rng.random() < 0.5)
        img = img.transform((size, size), Image.PERSPECTIVE, coeffs, Image.BICUBIC, fillcolor=bg)
    elif view == "detail":
        z = rng.uniform(0.55, 0.7)
        x0, y0 = rng.uniform(0.1, 1 - z - 0.05) * size, rng.uniform(0.25, 1 - z) * size
        img = img.crop((int(x0), int(y0), int(x0 + z * size), int(y0 + z * size))).resize((size, size), Image.LANCZOS)
    elif view == "far":
        small = img.resize((int(size * 0.65), int(size * 0.65)), Image.LANCZOS)
        img = Image.new("RGB", (size, size), bg)
        img.paste(small, (rng.randint(0, size - small.size[0]), rng.randint(0, size - small.size[1])))
    elif view == "tilted":
        img = img.rotate(rng.uniform(-25, 25), Image.BICUBIC, fillcolor=bg)
    if view == "back_light" or rng.random() < 0.5:
        img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.75, 1.15))
        img = ImageEnhance.Contrast(img).enhance(rng.uniform(0.8, 1.2))
    return img


def _perspective(size: int, k: float, flip: bool):
    """Coefficients for a 3/4 look: one end of the shoe recedes."""
    src = [(0, 0), (size, 0), (size, size), (0, size)]
    dst = [(0, size * k), (size, 0), (size, size), (0, size * (1 - k))]
    if flip:
        dst = [(0, 0), (size, size * k), (size, size * (1 - k)), (0, size)]
    # Solve the 8 perspective coefficients mapping output (dst) to input (src) pixels.
    rows, rhs = [], []
    for (x, y), (u, v) in zip(dst, src):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y]); rhs.append(u)
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y]); rhs.append(v)
    return _solve(rows, rhs)


def _solve(a, b):
    n = len(b)
    m = [row[:] + [b[i]] for i, row in enumerate(a)]
    for c in range(n):
        p = max(range(c, n), key=lambda r: abs(m[r][c]))
        m[c], m[p] = m[p], m[c]
        for r in range(n):
            if r != c:
                f = m[r][c] / m[c][c]
                m[r] = [x - f * y for x, y in zip(m[r], m[c])]
    return [m[i][n] / m[i][i] for i in range(n)]


def render_noise(kind: str, d: ShoeDesign, brand: str, size: int, rng: random.Random) -> Image.Image:
    """A gallery photo that is not the product: insole, size chart, box or model shot."""
    s = size * SUPERSAMPLE
    if kind == "insole":
        img = Image.new("RGB", (s, s), (250, 250, 250))
        draw = ImageDraw.Draw(img)
        fabric = rng.choice([(210, 200, 185), (90, 90, 95), (230, 225, 215), (180, 200, 220)])
        draw.ellipse((0.30 * s, 0.05 * s, 0.70 * s, 0.62 * s), fill=fabric)
        draw.ellipse((0.33 * s, 0.45 * s, 0.64 * s, 0.95 * s), fill=fabric)
        for k in range(60):  # perforation dots
            x, y = rng.uniform(0.36, 0.62) * s, rng.uniform(0.1, 0.9) * s
            draw.ellipse((x, y, x + s / 90, y + s / 90), fill=tuple(int(c * 0.8) for c in fabric))
        draw.text((0.40 * s, 0.3 * s), brand, fill=d.accent)
        img = img.filter(ImageFilter.GaussianBlur(SUPERSAMPLE))
    elif kind == "size_chart":
        img = Image.new("RGB", (s, s), (255, 255, 255))
        draw = ImageDraw.Draw(img)
        rows, cols = rng.randint(6, 10), rng.randint(3, 5)
        head = rng.choice([(200, 30, 40), (30, 30, 30), (40, 90, 170)])
        draw.rectangle((0.05 * s, 0.05 * s, 0.95 * s, 0.15 * s), fill=head)
        draw.text((0.1 * s, 0.08 * s), "尺码表 SIZE CHART", fill=(255, 255, 255))
        for r in range(rows + 1):
            y = 0.18 * s + r * 0.75 * s / rows
            draw.line((0.05 * s, y, 0.95 * s, y), fill=(120, 120, 120), width=SUPERSAMPLE)
            for c in range(cols):
                if r < rows:
                    draw.text((0.08 * s + c * 0.9 * s / cols, y + 0.02 * s), str(35 + r + c * 5), fill=(20, 20, 20))
        for c in range(cols + 1):
            x = 0.05 * s + c * 0.9 * s / cols
            draw.line((x, 0.18 * s, x, 0.93 * s), fill=(120, 120, 120), width=SUPERSAMPLE)
    elif kind == "box":
        img = Image.new("RGB", (s, s), _background(rng))
        draw = ImageDraw.Draw(img)
        colour = rng.choice([(230, 90, 30), (30, 30, 30), (200, 180, 140), d.accent])
        front = [(0.12 * s, 0.40 * s), (0.72 * s, 0.40 * s), (0.72 * s, 0.85 * s), (0.12 * s, 0.85 * s)]
        top = [(0.12 * s, 0.40 * s), (0.30 * s, 0.22 * s), (0.90 * s, 0.22 * s), (0.72 * s, 0.40 * s)]
        side = [(0.72 * s, 0.40 * s), (0.90 * s, 0.22 * s), (0.90 * s, 0.67 * s), (0.72 * s, 0.85 * s)]
        draw.polygon(front, fill=colour)
        draw.polygon(top, fill=tuple(min(255, int(c * 1.2)) for c in colour))
        draw.polygon(side, fill=tuple(int(c * 0.7) for c in colour))
        draw.text((0.25 * s, 0.6 * s), brand.upper(), fill=(255, 255, 255))
    else:  # model_shot: a person's legs wearing the shoe, in a scene
        img = Image.new("RGB", (s, s), rng.choice([(170, 190, 200), (120, 140, 110), (200, 190, 170)]))
        draw = ImageDraw.Draw(img)
        draw.rectangle((0, 0.8 * s, s, s), fill=(110, 105, 100))  # ground
        trousers = rng.choice([(40, 50, 90), (30, 30, 30), (150, 130, 100), (200, 200, 200)])
        draw.rectangle((0.30 * s, 0.0, 0.70 * s, 0.25 * s), fill=rng.choice([(220, 60, 60), (240, 240, 240), (60, 60, 60)]))
        draw.polygon([(0.32 * s, 0.25 * s), (0.49 * s, 0.25 * s), (0.46 * s, 0.78 * s), (0.34 * s, 0.78 * s)], fill=trousers)
        draw.polygon([(0.51 * s, 0.25 * s), (0.68 * s, 0.25 * s), (0.66 * s, 0.78 * s), (0.54 * s, 0.78 * s)], fill=trousers)
        draw.ellipse((0.40 * s, -0.25 * s, 0.60 * s, 0.0), fill=(230, 190, 160))
        for x0 in (0.28, 0.52):
            draw.ellipse((x0 * s, 0.76 * s, (x0 + 0.2) * s, 0.84 * s), fill=d.upper)
    return img.resize((size, size), Image.LANCZOS)


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
    """Write a catalogue folder (see docs/ARCHITECTURE.md) of ``n_products`` products; idempotent.

    ``seed`` shifts which designs are used (product ``i`` is design ``seed * 100_000 + i``).
    The folder is built in a temp directory and renamed into place, so a reader never sees a
    half-written catalogue; an existing complete catalogue with the same parameters is reused.
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
