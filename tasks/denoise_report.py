"""The denoise report: summary numbers, a distance histogram and contact sheets.

Files under ``reports_dir/<run_id>/`` (``reports/denoise-20261206T...``): ``summary.json``, ``summary.md``
(with how often the rule disagreed with the corrections by hand, ``warehouse.overrides``), ``distances.png``
(threshold marked; genuine vs noise when ground truth exists), ``sheet_far.png`` (the most distant
dropped photos), ``sheet_borderline.png`` (photos closest to the threshold) and, when there are any,
``sheet_other_product.png`` (photos the cross-product rule gave to another product), each next to its
product's reference photo with a caption: KEPT / DROPPED in colour, reason, distance, position, the product's
title and id. Inside a Prefect run the summary is also published as artifacts.
"""

from __future__ import annotations

import functools
import io
import json
import subprocess
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from prefect import task
from prefect.cache_policies import NONE

from core.errors import ShoesearchError
from core.files import atomic_write_bytes, atomic_write_text
from photos.decoding import eight_bit
from warehouse import open_warehouse

SHEET_COLUMNS = 3  # (reference, photo) pairs per contact-sheet row
FONT_PX = 12
CAPTION_LINE = FONT_PX + 6  # one caption line's height
CAPTION_LINES = 4  # decision + reason + distance; title; product id; a correction by hand (when there is one)
PAD, GAP = 6, 10  # inside a pair's frame; between frames
KEPT_COLOUR, DROPPED_COLOUR = (26, 127, 55), (207, 34, 46)  # green / red, both readable with white text


def precision_recall(dropped: list[bool], is_noise: list[bool]) -> dict:
    """Precision and recall of the dropped set against the noise ground truth."""
    tp = sum(d and n for d, n in zip(dropped, is_noise))
    n_dropped, n_noise = sum(dropped), sum(is_noise)
    return {"photos": len(dropped), "noise": n_noise, "dropped": n_dropped, "true_positives": tp,
            "precision": tp / n_dropped if n_dropped else None, "recall": tp / n_noise if n_noise else None}


def _group_counts(rows: list[dict]) -> dict:
    products = {r["product_id"] for r in rows}
    kept = sum(r["kept"] for r in rows)
    return {"products": len(products), "photos": len(rows), "kept": kept, "dropped": len(rows) - kept,
            "drop_rate": (len(rows) - kept) / len(rows) if rows else 0.0}


def corrections(rows: list[dict]) -> dict:
    """How often the rule (this run's ``kept``) disagreed with the people who corrected a photo by hand
    (``person_kept``: the correction in force on that photo, ``denoise_overrides_current``)."""
    judged = [r for r in rows if r.get("person_kept") is not None]
    disagree = [r for r in judged if r["person_kept"] != r["kept"]]
    return {"photos": len(judged), "agree": len(judged) - len(disagree), "disagree": len(disagree),
            "rule_dropped_person_kept": sum(bool(r["person_kept"]) for r in disagree),
            "rule_kept_person_dropped": sum(not r["person_kept"] for r in disagree),
            "disagreement_rate": len(disagree) / len(judged) if judged else None,
            "disagree_by_reason": dict(sorted(Counter(r["reason"] for r in disagree).items()))}


def summarise(rows: list[dict], run: dict) -> dict:
    """Summary numbers of one denoise run's rows (joined with category, is_noise)."""
    by_category = defaultdict(list)
    for r in rows:
        by_category[r["category"] or "(none)"].append(r)
    decided = [r for r in rows if r["reason"] != "bad_image" and r["is_noise"] is not None]
    sha1_products = defaultdict(set)
    for r in rows:
        if r["sha1"]:
            sha1_products[r["sha1"]].add(r["product_id"])
    distances = np.array([r["distance"] for r in rows if r["reason"] in ("near", "far")], dtype=np.float64)
    params = json.loads(run["parameters"] or "{}")
    return {
        "run_id": run["run_id"], "model_id": params.get("model_id"), "threshold": params.get("threshold"),
        "calibrated_for_drop_rate": params.get("drop_rate"),
        **_group_counts(rows),
        "reasons": dict(sorted(Counter(r["reason"] for r in rows).items())),
        "per_category": [{"category": c, **_group_counts(v)} for c, v in sorted(by_category.items())],
        "photos_shared_by_products": sum(len(p) > 1 for p in sha1_products.values()),
        "distance_quantiles": ({str(q): float(np.quantile(distances, q)) for q in (0.1, 0.5, 0.9, 0.99)}
                               if len(distances) else {}),
        "corrections_by_hand": corrections(rows),
        "ground_truth": (precision_recall([not r["kept"] for r in decided], [bool(r["is_noise"]) for r in decided])
                         if decided else None),
    }


def _fmt(v) -> str:
    return "n/a" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))


def summary_markdown(s: dict) -> str:
    lines = [f"# Denoise run `{s['run_id']}`", "",
             f"Model `{s['model_id']}`, threshold **{_fmt(s['threshold'])}**"
             + (f" (calibrated for drop rate {s['calibrated_for_drop_rate']})" if s["calibrated_for_drop_rate"]
                is not None else ""), "",
             "| products | photos | kept | dropped | drop rate |", "|---:|---:|---:|---:|---:|",
             f"| {s['products']} | {s['photos']} | {s['kept']} | {s['dropped']} | {s['drop_rate']:.3f} |", "",
             "## Per category", "", "| category | products | photos | kept | dropped | drop rate |",
             "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {c['category']} | {c['products']} | {c['photos']} | {c['kept']} | {c['dropped']} | "
              f"{c['drop_rate']:.3f} |" for c in s["per_category"]]
    lines += ["", "## Reasons", "", "| reason | photos |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in s["reasons"].items()]
    lines += ["", f"Pictures shared by several products: {s['photos_shared_by_products']}"]
    c = s["corrections_by_hand"]
    lines += ["", "## Corrections by hand (`denoise_overrides`)", ""]
    lines += ["No photo of this run has been corrected by hand." if not c["photos"] else
              f"The rule disagreed with people on **{c['disagree']} of {c['photos']}** corrected photos "
              f"({_fmt(c['disagreement_rate'])}): it dropped {c['rule_dropped_person_kept']} they keep and kept "
              f"{c['rule_kept_person_dropped']} they drop"
              + (" (by reason: " + ", ".join(f"{k} {v}" for k, v in c["disagree_by_reason"].items()) + ")."
                 if c["disagree"] else ".")]
    gt = s["ground_truth"]
    if gt:
        lines += ["", "## Against the ground truth (`images.is_noise`)", "",
                  "| labelled photos | noise | dropped | correct drops | precision | recall |",
                  "|---:|---:|---:|---:|---:|---:|",
                  f"| {gt['photos']} | {gt['noise']} | {gt['dropped']} | {gt['true_positives']} | "
                  f"{_fmt(gt['precision'])} | {_fmt(gt['recall'])} |"]
    return "\n".join(lines) + "\n"


def _png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def distance_histogram(rows: list[dict], threshold: float, bins: int) -> bytes:
    """PNG histogram of distances to the reference photo, the threshold as a vertical line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    decided = [r for r in rows if r["reason"] in ("near", "far")]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    edges = np.linspace(0.0, 2.0, bins + 1)
    if any(r["is_noise"] is not None for r in decided):
        for label, flag, colour in (("genuine", False, "tab:blue"), ("noise (ground truth)", True, "tab:red")):
            ax.hist([r["distance"] for r in decided if r["is_noise"] is flag], bins=edges, alpha=0.6,
                    label=label, color=colour)
    else:
        ax.hist([r["distance"] for r in decided], bins=edges, color="tab:blue", label="photos")
    ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.3f}")
    ax.set_xlabel("Euclidean distance to the product's first photo (L2-normalised embeddings)")
    ax.set_ylabel("photos")
    ax.legend()
    data = _png_bytes(fig)
    plt.close(fig)
    return data


def _thumb(path: Path | None, px: int) -> Image.Image:
    canvas = Image.new("RGB", (px, px), (235, 235, 235))
    if path is not None and path.is_file():
        try:
            with Image.open(path) as img:
                img = eight_bit(img).convert("RGB")  # 16-bit greyscale scaled, not clipped to white
                img.thumbnail((px, px))
                canvas.paste(img, ((px - img.width) // 2, (px - img.height) // 2))
        except OSError:
            pass
    return canvas


@functools.cache
def _font_file() -> str:
    """A font that draws Chinese titles when the machine has one (``fc-list :lang=zh``), else DejaVu Sans
    (shipped with matplotlib): a title's characters it cannot draw are left out, the product id stays."""
    try:
        found = subprocess.run(["fc-list", "-f", "%{file}\n", ":lang=zh"], capture_output=True, text=True,
                               timeout=10, check=False).stdout.split()
    except (OSError, subprocess.SubprocessError):
        found = []
    ttf = sorted(f for f in found if f.lower().endswith((".ttf", ".otf", ".ttc")))
    if ttf:
        return ttf[0]
    from matplotlib import font_manager

    return font_manager.findfont("DejaVu Sans")


@functools.cache
def _font(px: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(_font_file(), px)


@functools.cache
def _drawable_codepoints() -> frozenset[int]:
    from fontTools.ttLib import TTFont

    path = _font_file()
    with TTFont(path, lazy=True, fontNumber=0 if path.lower().endswith(".ttc") else -1) as font:
        return frozenset(font.getBestCmap())


def _drawable(text: str | None) -> str:
    """``text`` without the characters the sheet's font cannot draw (no empty boxes in a caption)."""
    points = _drawable_codepoints()
    return " ".join("".join(c for c in (text or "") if c.isprintable() and ord(c) in points).split())


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """``text`` cut to ``width`` pixels, ending in an ellipsis when cut."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def _badge(draw: ImageDraw.ImageDraw, xy: tuple[int, int], kept: bool, font) -> int:
    """A filled KEPT / DROPPED label in its colour at ``xy``; returns its right edge."""
    word, colour = ("KEPT", KEPT_COLOUR) if kept else ("DROPPED", DROPPED_COLOUR)
    right = xy[0] + int(draw.textlength(word, font=font)) + 8
    draw.rounded_rectangle((xy[0], xy[1], right, xy[1] + CAPTION_LINE - 2), radius=3, fill=colour)
    draw.text((xy[0] + 4, xy[1] + 1), word, fill="white", font=font)
    return right


def _card(sheet: Image.Image, draw: ImageDraw.ImageDraw, x: int, y: int, card: dict, px: int) -> None:
    """One pair in its own frame: the reference photo, the judged photo framed in its decision's colour, and
    its caption lines: decision + reason + distance + position; product title; product id; a correction."""
    font, colour = _font(FONT_PX), KEPT_COLOUR if card["kept"] else DROPPED_COLOUR
    w, h = 2 * px + 3 * PAD, px + 2 * PAD + CAPTION_LINES * CAPTION_LINE + 4
    draw.rounded_rectangle((x, y, x + w - 1, y + h - 1), radius=6, fill=(246, 248, 250), outline=(208, 215, 222))
    sheet.paste(_thumb(card["reference"], px), (x + PAD, y + PAD))
    sheet.paste(_thumb(card["photo"], px), (x + 2 * PAD + px, y + PAD))
    draw.rectangle((x + 2 * PAD + px - 3, y + PAD - 3, x + 2 * PAD + 2 * px + 2, y + PAD + px + 2), outline=colour,
                   width=3)
    top, width = y + PAD + px + 6, w - 2 * PAD
    right = _badge(draw, (x + PAD, top), card["kept"], font)
    draw.text((right + 6, top + 1), _fit(draw, card["line"], font, x + w - PAD - right - 6), fill=(31, 35, 40),
              font=font)
    draw.text((x + PAD, top + CAPTION_LINE), _fit(draw, card["title"] or "(no title)", font, width),
              fill=(31, 35, 40), font=font)
    draw.text((x + PAD, top + 2 * CAPTION_LINE), _fit(draw, card["product_id"], font, width), fill=(87, 96, 106),
              font=font)
    if card.get("correction"):
        draw.text((x + PAD, top + 3 * CAPTION_LINE), _fit(draw, card["correction"], font, width),
                  fill=KEPT_COLOUR if card["person_kept"] else DROPPED_COLOUR, font=font)


def contact_sheet(cards: list[dict], px: int, title: str) -> bytes:
    """PNG of (reference photo, photo) pairs in a grid, each with its caption (see :func:`_card`).

    A card: ``reference`` / ``photo`` (paths or None), ``kept``, ``line`` (reason, distance, position),
    ``title`` (the product's, drawable characters only), ``product_id``, optionally ``correction`` (text) and
    ``person_kept`` (its colour).
    """
    cols, font = SHEET_COLUMNS, _font(FONT_PX)
    rows = max(1, -(-len(cards) // cols))
    cell_w, cell_h = 2 * px + 3 * PAD + GAP, px + 2 * PAD + CAPTION_LINES * CAPTION_LINE + 4 + GAP
    header = 2 * PAD + 2 * CAPTION_LINE + 4
    sheet = Image.new("RGB", (max(cols * cell_w + GAP, 560), header + rows * cell_h + GAP), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((GAP, PAD), title if cards else f"{title}: none", fill="black", font=_font(FONT_PX + 3))
    legend_y = PAD + CAPTION_LINE + 6
    right = _badge(draw, (GAP, legend_y), True, font)
    right = _badge(draw, (right + 6, legend_y), False, font)
    draw.text((right + 8, legend_y + 1), "the judged photo (right of each pair), framed in that colour; "
              "left: its product's reference photo", fill=(87, 96, 106), font=font)
    for k, card in enumerate(cards):
        sheet_x, sheet_y = GAP + (k % cols) * cell_w, header + (k // cols) * cell_h
        _card(sheet, draw, sheet_x, sheet_y, card, px)
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return buf.getvalue()


def _report_rows(wh, run_id: str) -> list[dict]:
    return wh.query(
        """WITH img AS (
               SELECT image_id, sha1, any_value(path) AS path, any_value(is_noise) AS is_noise
               FROM images GROUP BY image_id, sha1),
           cat AS (SELECT product_id, any_value(category) AS category, any_value(title) AS title
                   FROM products_current GROUP BY product_id)
           SELECT d.*, img.path, img.is_noise, cat.category, cat.title, o.kept AS person_kept, o.who AS person
           FROM denoise d
           LEFT JOIN img ON img.image_id = d.image_id AND img.sha1 IS NOT DISTINCT FROM d.sha1
           LEFT JOIN cat ON cat.product_id = d.product_id
           LEFT JOIN denoise_overrides_current o ON o.image_key = d.image_key AND o.sha1 IS NOT DISTINCT FROM d.sha1
           WHERE d.run_id = ? ORDER BY d.image_id""",
        [run_id],
    ).to_pylist()


def report_folder(settings, run_id: str) -> Path:
    """Where the report of denoise run ``run_id`` goes: ``reports/<run_id>/`` (the id already says "denoise")."""
    return settings.reports_dir / run_id


def _caption(r: dict) -> str:
    """A pair's first caption line after its KEPT / DROPPED label: reason, distance, position, a correction."""
    distance = "no distance" if r["distance"] is None else f"distance {r['distance']:.3f}"
    text = f"{r['reason']} · {distance} · photo #{r['position']}"
    return text


def _correction(r: dict) -> str:
    """The caption's last line: the correction by hand in force on the photo, if any."""
    if r.get("person_kept") is None:
        return ""
    agrees = "agrees" if r["person_kept"] == r["kept"] else "disagrees"
    return f"corrected by hand: {r['person']} {'keeps' if r['person_kept'] else 'drops'} it ({agrees})"


def write_denoise_report(settings, run_id: str) -> Path:
    """Write the report files of denoise run ``run_id``; returns their folder."""
    wh = open_warehouse(settings)
    runs = wh.query("SELECT * FROM runs WHERE run_id = ? AND step = 'denoise'", [run_id]).to_pylist()
    if not runs:
        raise ShoesearchError(f"no denoise run {run_id!r}")
    rows = _report_rows(wh, run_id)
    summary = summarise(rows, runs[0])
    cfg = settings.denoise
    out = report_folder(settings, run_id)
    out.mkdir(parents=True, exist_ok=True)
    markdown = summary_markdown(summary)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, ensure_ascii=False))
    atomic_write_text(out / "summary.md", markdown)
    threshold = summary["threshold"]
    atomic_write_bytes(out / "distances.png", distance_histogram(rows, threshold, cfg.histogram_bins))
    path_of = lambda r: settings.images_dir / r["path"] if r and r["path"] else None  # noqa: E731
    reference = {r["product_id"]: r for r in rows if r["reason"] in ("anchor", "substitute")}

    def pairs(selected):
        return [{"reference": path_of(reference.get(r["product_id"])), "photo": path_of(r), "kept": r["kept"],
                 "line": _caption(r), "title": _drawable(r["title"]), "product_id": r["product_id"],
                 "correction": _drawable(_correction(r)), "person_kept": r["person_kept"]}
                for r in selected]

    far = sorted((r for r in rows if r["reason"] == "far"), key=lambda r: -r["distance"])[: cfg.sheet_photos]
    border = sorted((r for r in rows if r["reason"] in ("near", "far")),
                    key=lambda r: abs(r["distance"] - threshold))[: cfg.sheet_photos]
    atomic_write_bytes(out / "sheet_far.png", contact_sheet(
        pairs(far), cfg.sheet_thumb_px, "most distant dropped photos (left: the product's reference photo)"))
    atomic_write_bytes(out / "sheet_borderline.png", contact_sheet(
        pairs(border), cfg.sheet_thumb_px, f"borderline photos around threshold {threshold:.3f}"))
    claimed = [r for r in rows if r["reason"] == "other_product"][: cfg.sheet_photos]
    if claimed:
        atomic_write_bytes(out / "sheet_other_product.png", contact_sheet(
            pairs(claimed), cfg.sheet_thumb_px,
            "given to another product whose first photo is closer (left: this one's)"))
    _publish_artifacts(summary, markdown, out)
    return out


def _publish_artifacts(summary: dict, markdown: str, folder: Path) -> None:
    """Markdown + table artifacts, only inside a Prefect flow or task run."""
    from prefect.context import FlowRunContext, TaskRunContext

    if FlowRunContext.get() is None and TaskRunContext.get() is None:
        return
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    create_markdown_artifact(markdown + f"\nFiles: `{folder}`\n", key="denoise-summary",
                             description=f"denoise run {summary['run_id']}")
    create_table_artifact(summary["per_category"], key="denoise-categories",
                          description="kept / dropped photos per category")


denoise_report_task = task(write_denoise_report, name="denoise-report", cache_policy=NONE)
