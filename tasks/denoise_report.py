"""The denoise report: summary numbers, a distance histogram and contact sheets.

Files under ``reports_dir/denoise-<run_id>/``: ``summary.json``, ``summary.md``, ``distances.png``
(threshold marked; genuine vs noise when ground truth exists), ``sheet_far.png`` (the most distant
dropped photos), ``sheet_borderline.png`` (photos closest to the threshold) and, when there are any,
``sheet_other_product.png`` (photos the cross-product rule gave to another product), each next to its
product's reference photo. Inside a Prefect run the summary is also published as artifacts.
"""

from __future__ import annotations

import json
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
CAPTION_PX = 28


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
    gt = s["ground_truth"]
    if gt:
        lines += ["", "## Against the ground truth (`images.is_noise`)", "",
                  "| labelled photos | noise | dropped | correct drops | precision | recall |",
                  "|---:|---:|---:|---:|---:|---:|",
                  f"| {gt['photos']} | {gt['noise']} | {gt['dropped']} | {gt['true_positives']} | "
                  f"{_fmt(gt['precision'])} | {_fmt(gt['recall'])} |"]
    return "\n".join(lines) + "\n"


def _png_bytes(fig) -> bytes:
    import io

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


def contact_sheet(pairs: list[tuple[Path | None, Path | None, str]], px: int, title: str) -> bytes:
    """PNG of (reference photo, photo, caption) pairs in a grid."""
    font = ImageFont.load_default()
    cols = SHEET_COLUMNS
    rows = max(1, -(-len(pairs) // cols))
    cell_w, cell_h = 2 * px + 12, px + CAPTION_PX
    sheet = Image.new("RGB", (cols * cell_w, CAPTION_PX + rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((6, 6), title if pairs else f"{title}: none", fill="black", font=font)
    for k, (ref, photo, caption) in enumerate(pairs):
        x, y = (k % cols) * cell_w, CAPTION_PX + (k // cols) * cell_h
        sheet.paste(_thumb(ref, px), (x + 2, y))
        sheet.paste(_thumb(photo, px), (x + px + 6, y))
        draw.text((x + 4, y + px + 4), caption, fill="black", font=font)
    import io

    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return buf.getvalue()


def _report_rows(wh, run_id: str) -> list[dict]:
    return wh.query(
        """WITH img AS (
               SELECT image_id, sha1, any_value(path) AS path, any_value(is_noise) AS is_noise
               FROM images GROUP BY image_id, sha1),
           cat AS (SELECT product_id, any_value(category) AS category FROM products_current GROUP BY product_id)
           SELECT d.*, img.path, img.is_noise, cat.category
           FROM denoise d
           LEFT JOIN img ON img.image_id = d.image_id AND img.sha1 IS NOT DISTINCT FROM d.sha1
           LEFT JOIN cat ON cat.product_id = d.product_id
           WHERE d.run_id = ? ORDER BY d.image_id""",
        [run_id],
    ).to_pylist()


def write_denoise_report(settings, run_id: str) -> Path:
    """Write the report files of denoise run ``run_id``; returns their folder."""
    wh = open_warehouse(settings)
    runs = wh.query("SELECT * FROM runs WHERE run_id = ? AND step = 'denoise'", [run_id]).to_pylist()
    if not runs:
        raise ShoesearchError(f"no denoise run {run_id!r}")
    rows = _report_rows(wh, run_id)
    summary = summarise(rows, runs[0])
    cfg = settings.denoise
    out = settings.reports_dir / f"denoise-{run_id}"
    out.mkdir(parents=True, exist_ok=True)
    markdown = summary_markdown(summary)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, ensure_ascii=False))
    atomic_write_text(out / "summary.md", markdown)
    threshold = summary["threshold"]
    atomic_write_bytes(out / "distances.png", distance_histogram(rows, threshold, cfg.histogram_bins))
    path_of = lambda r: settings.images_dir / r["path"] if r and r["path"] else None  # noqa: E731
    reference = {r["product_id"]: r for r in rows if r["reason"] in ("anchor", "substitute")}

    def pairs(selected):
        return [(path_of(reference.get(r["product_id"])), path_of(r),
                 f"{r['reason']} d={r['distance']:.3f} #{r['position']}") for r in selected]

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
