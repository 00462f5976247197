"""A real catalog through the whole default pipeline: the demo shop serves it, ``nightly`` runs with defaults.

The catalog folder (default ``../shared/data/footwear-dev-noisy``) is served with JD's page structure
by the demo shop; the ``nightly`` Prefect flow crawls it with the spider, embeds, denoises, splits,
initialises with k-means, trains, evaluates and indexes — every setting at its default except crawl
politeness (delays, concurrency), relaxed because the shop is on loopback, and ``crawl.max_products``
raised to the catalog's size when it is larger than the default. The shop's ground truth
(``labels.csv`` ``is_noise``, served as ``/_shop/manifest.json``) judges denoise, and retrieval is
scored on the *genuine* photos of the test split (noise removed by the labels, not by denoise):

* per stage: seconds (from the ``runs`` table) and photos/s;
* denoise: threshold, precision and recall of the dropped photos against ``is_noise``;
* per variant (``imagenet`` descriptor, NetVLAD at ``kmeans_init``, ``trained``): Recall@1/5/10, mAP;
* the served index's match levels (``same`` / ``similar`` thresholds) with their precision and recall on the
  held-back photos of its calibration (``index.faiss_build.match_levels``, from the index's ``meta.json``).

Prints a table and writes ``bench/results/realshop-<catalog>.json`` (``realshop.json`` for the default
catalog). About 15-40 minutes on 2 CPU cores for footwear-dev-noisy.

    .venv/bin/python bench/realshop.py [--catalog DIR] [--home DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])  # the repo, not bench/

from bench.results_io import write_result  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RESULTS = Path(__file__).resolve().parent / "results"
LOOPBACK_POLITENESS = {  # the only settings changed: the shop is on loopback, JD's manners are not needed
    "crawl.download_delay_s": 0.0, "crawl.autothrottle_max_delay_s": 0.5, "crawl.concurrent_requests": 16,
    "crawl.autothrottle_target_concurrency": 16.0, "crawl.retry_backoff_s": 0.05,
}
STAGES = ["crawl", "embed", "denoise", "split", "kmeans", "train", "evaluate", "index"]


def run_nightly(catalog: Path, home: Path) -> tuple[object, dict, dict]:
    """Serve ``catalog``, run ``nightly`` on it with defaults; (settings, nightly outcome, shop manifest)."""
    from core.settings import Settings
    from demo_shop.server import DemoShop, load_catalog
    from flows.nightly import nightly
    from shoesearch.runtime import prepare_prefect_environment, run_flow

    prepare_prefect_environment()
    products = load_catalog(catalog)
    overrides = dict(LOOPBACK_POLITENESS)
    if len(products) > Settings().crawl.max_products:
        overrides["crawl.max_products"] = len(products)
    settings = Settings.load(home=home, overrides=overrides)
    with DemoShop(products, source=str(catalog)) as shop:
        manifest = shop.state.manifest()
        outcome = run_flow(nightly, settings, site=shop.url)
    return settings, outcome, manifest


def noise_labels(manifest: dict) -> dict[str, bool]:
    """image id (``jd:<sku>#<position>``) -> is_noise, from the shop's ground truth."""
    return {f"jd:{p['sku']}#{ph['position']}": bool(ph["is_noise"])
            for p in manifest["products"] for ph in p["gallery"] if ph["is_noise"] is not None}


def stage_rows(wh) -> list[dict]:
    runs = wh.query("SELECT step, started_at, finished_at, parameters, output_rows FROM runs "
                    "WHERE status = 'success' ORDER BY started_at").to_pylist()
    rows = []
    for step in STAGES:
        mine = [r for r in runs if r["step"] == step]
        if not mine:
            continue
        seconds = sum((r["finished_at"] - r["started_at"]).total_seconds() for r in mine)
        photos = sum(_photos_of(step, r) for r in mine)
        rows.append({"stage": step, "runs": len(mine), "seconds": round(seconds, 1), "photos": photos,
                     "photos_per_s": round(photos / seconds, 2) if seconds and photos else None})
    return rows


def _photos_of(step: str, run: dict) -> int:
    params, out = json.loads(run["parameters"] or "{}"), json.loads(run["output_rows"] or "{}")
    if step == "crawl":
        return out.get("images", 0)
    if step == "embed":
        return params.get("to_embed", 0)
    if step == "denoise":
        return out.get("denoise", 0)
    if step == "index":
        return out.get("embeddings", 0)
    return 0  # split / kmeans / train / evaluate: train_metrics.images_per_s holds the training speed


def train_speed(wh) -> dict:
    rows = wh.query("SELECT epoch, loss, val_recall_at_1, images_per_s, seconds FROM train_metrics ORDER BY epoch").to_pylist()
    return {"epochs": len(rows), "seconds_per_epoch": round(sum(r["seconds"] for r in rows) / max(len(rows), 1), 1),
            "step_images_per_s": round(sum(r["images_per_s"] for r in rows) / max(len(rows), 1), 1),
            "per_epoch": [{k: round(float(v), 4) if isinstance(v, float) else v for k, v in r.items()} for r in rows]}


def denoise_row(wh, labels: dict[str, bool], run_id: str | None = None, products: set[str] | None = None) -> dict:
    """Precision / recall of the dropped photos against the labels: of denoise run ``run_id`` (default: the current
    decisions), on ``products`` only when given."""
    rows = wh.query("SELECT image_id, product_id, kept, threshold, reason FROM denoise_current" if run_id is None
                    else "SELECT image_id, product_id, kept, threshold, reason FROM denoise WHERE run_id = ?",
                    [] if run_id is None else [run_id]).to_pylist()
    judged = [r for r in rows if r["image_id"] in labels and r["reason"] != "bad_image"
              and (products is None or r["product_id"] in products)]
    dropped = {r["image_id"] for r in judged if not r["kept"]}
    noise = {r["image_id"] for r in judged if labels[r["image_id"]]}
    hits = len(dropped & noise)
    return {"threshold": round(float(judged[0]["threshold"]), 4) if judged else None, "photos": len(judged),
            "noise": len(noise), "dropped": len(dropped),
            "precision": round(hits / len(dropped), 4) if dropped else None,
            "recall": round(hits / len(noise), 4) if noise else None}


def second_pass_rows(settings, wh, model_id: str, labels: dict[str, bool]) -> dict:
    """What the next night's second denoise pass does with ``model_id`` (run here, as ``nightly`` would with the
    model serving): its run message, and the first and second pass judged against the labels, on every photo
    and on the re-judged products (outside the model's training split)."""
    from tasks.denoise_second import first_pass_run, second_pass, trained_products

    first = first_pass_run(wh, None)["run_id"]
    run_id = second_pass(settings, model_id, first)
    judged = {r["product_id"] for r in wh.query("SELECT DISTINCT product_id FROM denoise WHERE run_id = ?",
                                                [run_id]).to_pylist()} - trained_products(wh, model_id)
    message = wh.query("SELECT message FROM runs WHERE run_id = ?", [run_id]).column(0)[0].as_py()
    return {"message": message,
            "all": {"first": denoise_row(wh, labels, first), "second": denoise_row(wh, labels, run_id)},
            "rejudged": {"first": denoise_row(wh, labels, first, judged),
                         "second": denoise_row(wh, labels, run_id, judged)}}


def variant_rows(settings, wh, model_id: str, labels: dict[str, bool], baseline_too: bool = True) -> list[dict]:
    """imagenet / kmeans_init / trained scored on the genuine photos (``labels[image_id] is False``) of the
    model's test split; ``baseline_too=False`` leaves out the imagenet row."""
    from models.device import pick_device
    from models.embedder_spec import load_embedder
    from training.data import PhotoSet, load_photos
    from tasks.evaluate import variant_embedders
    from training.evaluation import score

    device = pick_device(settings.train.device)
    row, params, variants = variant_embedders(settings, wh, model_id, device)
    test = load_photos(wh, params["split_run_id"], "raw", ("test",))
    keep = [i for i, image_id in enumerate(test.image_ids) if labels.get(image_id) is False]
    pick = lambda xs: [xs[i] for i in keep]  # noqa: E731
    genuine = PhotoSet(pick(test.image_ids), pick(test.product_ids), pick(test.paths), pick(test.splits),
                       pick(test.domains), "genuine", None)
    out = []
    baseline = ("imagenet", None, None, lambda: load_embedder(f"imagenet:{row['backbone']}", settings))
    for variant, _, _, build in ([baseline] if baseline_too else []) + variants:
        embedder = build()
        if hasattr(embedder, "to"):
            embedder.to(device)
        m = score(embedder, settings, genuine, "all", device, product_level=True)
        out.append({"variant": variant, "queries": int(m["queries"]), "products": len(set(genuine.product_ids)),
                    **{k: round(float(m[k]), 4) for k in ("recall_at_1", "recall_at_5", "recall_at_10", "mean_ap",
                                                          "product_recall_at_1", "product_recall_at_5")}})
    return out


def separation_rows(settings, wh, model_id: str, labels: dict[str, bool]) -> list[dict]:
    """How well the distance to photo 0 separates labelled noise from genuine photos, with the ImageNet descriptor
    (what denoise uses) and with the trained model's (a second denoise pass would use it): ROC AUC and the best
    precision / recall any single threshold reaches (an oracle: the labels pick it), on the products the model
    trained on and on those it never saw (val + test)."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from embedding.embedders import open_embedder
    from embedding.vectors import embed_images, load_embeddings
    from warehouse.models_table import model_params, model_row

    split_run = model_params(model_row(wh, model_id))["split_run_id"]
    split = {r["product_id"]: r["split"] for r in wh.query(
        "SELECT product_id, split FROM splits WHERE run_id = ?", [split_run]).to_pylist()}
    photos = wh.query("SELECT image_id, product_id, position FROM images_current WHERE status = 'ok' "
                      "ORDER BY product_id, position").to_pylist()
    out = []
    for name, spec in (("imagenet", None), ("trained", model_id)):
        embed_images(settings, spec)
        ids, matrix = load_embeddings(wh, open_embedder(settings, spec).model_id)
        vec, front, judged = dict(zip(ids, matrix)), {}, {"train": [], "unseen": []}
        for p in photos:
            if p["image_id"] not in vec:
                continue
            ref = front.setdefault(p["product_id"], p["image_id"])
            if ref != p["image_id"] and p["image_id"] in labels:
                part = "train" if split.get(p["product_id"]) == "train" else "unseen"
                judged[part].append((float(np.linalg.norm(vec[p["image_id"]] - vec[ref])), labels[p["image_id"]]))
        for part, pairs in judged.items():
            d, y = np.array([a for a, _ in pairs]), np.array([b for _, b in pairs])
            best = max(((((d > t) & y).sum() / max((d > t).sum(), 1), ((d > t) & y).sum() / max(y.sum(), 1))
                        for t in np.unique(d)), key=lambda pr: min(pr[0] / 0.9, pr[1] / 0.8))
            out.append({"descriptor": name, "products": part, "photos": len(d), "noise": int(y.sum()),
                        "auc": round(float(roc_auc_score(y, d)), 4), "best_precision": round(float(best[0]), 4),
                        "best_recall": round(float(best[1]), 4)})
    return out


def match_levels_of(settings) -> dict | None:
    """The served (current) index's match levels, from its ``meta.json``: the ``same`` / ``similar`` thresholds and
    their precision / recall on the calibration's held-back photos; None for an index without them."""
    from index.store import current_index

    info = current_index(settings)
    meta = json.loads((info.path / "meta.json").read_text()) if info else {}
    levels = meta.get("match_levels")
    return {"index_id": info.index_id, "model_id": meta["model_id"], **levels} if levels else None


def print_table(result: dict) -> None:
    print(f"\nrealshop: {result['catalog']} ({result['products']} products) on {result['machine']}")
    print(f"{'stage':<10} {'runs':>4} {'seconds':>9} {'photos':>7} {'photos/s':>9}")
    for r in result["stages"]:
        print(f"{r['stage']:<10} {r['runs']:>4} {r['seconds']:>9.1f} {r['photos']:>7} {r['photos_per_s'] or '':>9}")
    t = result["train"]
    print(f"train: {t['epochs']} epochs, {t['seconds_per_epoch']} s/epoch, {t['step_images_per_s']} img/s in steps")
    d = result["denoise"]
    print(f"\nserved: {result.get('served')}")
    print(f"\ndenoise: threshold {d['threshold']}, precision {d['precision']}, recall {d['recall']} "
          f"({d['dropped']} dropped, {d['noise']} labelled noise of {d['photos']})")
    print(f"\n{'descriptor':<10} {'products':<8} {'AUC':>6} {'best P':>7} {'best R':>7}   (distance to photo 0 vs noise)")
    for r in result["denoise_separation"]:
        print(f"{r['descriptor']:<10} {r['products']:<8} {r['auc']:>6.3f} {r['best_precision']:>7.3f} {r['best_recall']:>7.3f}")
    sp = result["second_pass"]
    print(f"\nsecond pass: {sp['message']}")
    for part in ("all", "rejudged"):
        for which in ("first", "second"):
            r = sp[part][which]
            print(f"  {part:<9} {which:<7} photos {r['photos']:>4} noise {r['noise']:>4} dropped {r['dropped']:>4} "
                  f"precision {r['precision']} recall {r['recall']}")
    lv = result.get("match_levels")
    if lv and lv.get("same") is not None:
        cal = lv["calibration"]
        print(f"\nmatch levels (held back: {cal['held_back_photos']} photos of {cal['held_back_products']} products): "
              + "; ".join(f"{name} from {lv[name]}: {f['photos']} photos, precision {f['precision']}, recall "
                          f"{f['recall']}" for name, f in cal["held_back"].items()))
    print(f"\n{'variant':<12} {'queries':>7} {'R@1':>7} {'R@5':>7} {'R@10':>7} {'mAP':>7}   (genuine test photos)")
    for r in result["variants"]:
        print(f"{r['variant']:<12} {r['queries']:>7} {r['recall_at_1']:>7.3f} {r['recall_at_5']:>7.3f} "
              f"{r['recall_at_10']:>7.3f} {r['mean_ap']:>7.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--catalog", type=Path, default=DATA / "footwear-dev-noisy")
    parser.add_argument("--home", type=Path, help="data home (default: a fresh temporary one)")
    parser.add_argument("--out", type=Path, help="JSON file (default: bench/results/realshop[-NAME].json)")
    args = parser.parse_args()
    if not args.catalog.is_dir():
        print(f"realshop: skipped, no catalog at {args.catalog} (../shared/data is not on this machine)")
        return 0
    name = args.catalog.name
    out = args.out or RESULTS / ("realshop.json" if name == "footwear-dev-noisy" else f"realshop-{name}.json")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="realshop-") as tmp:
        home = args.home or Path(tmp) / "home"
        settings, outcome, manifest = run_nightly(args.catalog, home)
        from warehouse import open_warehouse
        from warehouse.models_table import model_of_run

        wh = open_warehouse(settings)
        labels = noise_labels(manifest)
        trained = model_of_run(wh, outcome["steps"]["train"])["model_id"]
        result = {
            "bench": "realshop", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}, {__import__('os').cpu_count()} CPU cores, python {platform.python_version()}",
            "catalog": name, "products": len(manifest["products"]),
            "settings_changed": {k: v for k, v in settings.as_overrides().items()
                                 if k.startswith("crawl.") and k in LOOPBACK_POLITENESS | {"crawl.max_products": 0}},
            "nightly": {"status": outcome.get("status"), "index_id": outcome.get("index_id")},
            "stages": stage_rows(wh), "train": train_speed(wh), "denoise": denoise_row(wh, labels),
            "served": outcome.get("served"), "match_levels": match_levels_of(settings),
            "variants": variant_rows(settings, wh, trained, labels),
            "denoise_separation": separation_rows(settings, wh, trained, labels),
            "second_pass": second_pass_rows(settings, wh, trained, labels),
            "total_seconds": round(time.perf_counter() - started, 1),
        }
    print_table(result)
    write_result(result, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
