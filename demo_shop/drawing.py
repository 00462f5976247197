"""Procedural shoe photos: a design per product index, its genuine views and the gallery noise photos.

Every design is drawn (silhouette, colours, stripes, logo, laces) at ``SUPERSAMPLE`` times the size and
downsampled. Views: the side profile on white (JD's main image), mirrored, 3/4 perspective, the pair,
a detail crop, other scale, tilt and light; noise: insole close-ups, size charts, boxes, model shots.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

CATEGORIES = [  # (kind, JD category path, cat ids)
    ("sneaker", "运动户外/运动鞋包/跑步鞋", "1318,12099,9756"),
    ("sneaker", "鞋靴/流行男鞋/休闲鞋", "11729,11730,6908"),
    ("boot", "鞋靴/流行男鞋/男靴", "11729,11730,6912"),
    ("heel", "鞋靴/时尚女鞋/高跟鞋", "11729,11731,9772"),
    ("loafer", "鞋靴/流行男鞋/正装鞋", "11729,11730,6906"),
    ("canvas", "鞋靴/流行男鞋/帆布鞋", "11729,11730,9783"),
]

SUPERSAMPLE = 2  # drawn at 2x then downsampled: anti-aliased edges
GENUINE_VIEWS = ("side", "mirror", "three_quarter", "pair", "detail", "far", "tilted", "back_light")
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
    """The shoe of product ``index`` (independent of catalog size)."""
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
