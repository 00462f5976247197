"""Index step: embed the catalog photos with a model and build a faiss index over them (status ``built``).

What to index (the photos denoise kept, or all with ``index.index_all_photos``) and the ``indexes`` row
are here; faiss construction is ``index.faiss_build``, the directory format and the ``CURRENT`` pointer
``index.store``, switching it in behind the gate ``tasks.gate``.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
from prefect import task
from prefect.cache_policies import NO_CACHE

from core.errors import ShoesearchError
from embedding.embedders import model_id_of
from embedding.vectors import embed_images, load_embeddings
from index.faiss_build import build_faiss, choose_kind, gpu_count, match_levels, recall_vs_exact, sample_queries
from index import incremental
from index.store import current_index_row, write_index_dir
from warehouse import latest_run, open_warehouse, start_run
from warehouse.views import DENOISE_OF_RUN
from warehouse.locks import step_lock
from warehouse.models_table import find_model, newest_model
from warehouse.overrides import overrides_run
from warehouse.runs import now

PRODUCT_COLUMNS = ["product_id", "title", "brand", "price", "url", "shop_name", "category"]


# --- the index step ----------------------------------------------------------------------------


def catalog_photos(wh, settings) -> tuple[pa.Table, str | None]:
    """The photos to index: (image_id, product_id, path, run_id of the images row), in a stable order.

    Kept photos of the current denoise run, or every valid photo with ``index.index_all_photos``. Returns
    the photos and that denoise run's id (None with ``index_all_photos``), read once: the photos are that
    run's even when another denoise commits meanwhile, so the lineage names the run they came from.
    """
    if settings.index.index_all_photos:
        denoise_run, params = None, []
        sql = """SELECT i.image_id, i.product_id, i.path, i.run_id FROM images_current i
                 WHERE i.status = 'ok' AND i.path IS NOT NULL ORDER BY i.image_id"""
    else:
        denoise_run = latest_run(wh, "denoise")  # the run denoise_current shows now, read once
        params = [denoise_run]
        if denoise_run is None or not wh.query(f"SELECT count(*) AS n FROM {DENOISE_OF_RUN}", [denoise_run]
                                               ).column("n")[0].as_py():
            raise ShoesearchError(
                "no denoise run yet: run `shoesearch denoise` first, or index every photo with "
                "--set index.index_all_photos=true"
            )
        sql = f"""SELECT i.image_id, i.product_id, i.path, i.run_id FROM images_current i
                  JOIN {DENOISE_OF_RUN} d ON d.image_id = i.image_id
                  WHERE d.kept AND i.status = 'ok' AND i.path IS NOT NULL ORDER BY i.image_id"""
    photos = wh.query(sql, params)
    if photos.num_rows == 0:
        raise ShoesearchError("no photos to index: crawl or ingest a catalog first")
    return photos, denoise_run


def catalog_vectors(wh, photos: pa.Table, model_id: str) -> tuple[np.ndarray, pa.Table, pa.Table]:
    """(vectors in faiss row order, mapping row -> photo, the products they show) for the catalog photos."""
    image_ids = photos.column("image_id").to_pylist()
    ids, vectors = load_embeddings(wh, model_id)
    order = {image_id: row for row, image_id in enumerate(image_ids)}
    keep = [k for k, image_id in enumerate(ids) if image_id in order]  # unreadable photos have no vector
    if not keep:
        raise ShoesearchError(f"no embeddings of model {model_id!r} for the catalog photos")
    rows = [order[ids[k]] for k in keep]
    mapping = photos.take(pa.array(rows)).select(["image_id", "product_id", "path"])
    mapping = mapping.append_column("row", pa.array(np.arange(len(rows), dtype=np.int64)))
    products = wh.query(f"SELECT {', '.join(PRODUCT_COLUMNS)} FROM products_current WHERE product_id IN "
                        "(SELECT unnest(?::VARCHAR[]))", [sorted(set(mapping.column("product_id").to_pylist()))])
    return np.ascontiguousarray(vectors[keep], dtype=np.float32), mapping, products


def _faiss_with_recall(vectors: np.ndarray, kind: str, cfg, use_gpu: bool):
    """(index, recall@k vs exact search, a note): exact search is exact; approximate kinds are measured."""
    index = build_faiss(vectors, kind, cfg, use_gpu=use_gpu, seed=cfg.seed)
    if kind == "flat_ip":
        return index, 1.0, "exact inner product"
    queries = sample_queries(vectors, cfg.recall_sample, cfg.seed)
    recall = recall_vs_exact(index, vectors, queries, cfg.recall_k)
    return index, recall, f"recall@{cfg.recall_k} vs exact on {len(queries)} sampled photos: {recall:.3f}"


def build_index(settings, model_spec: str | None = None, chosen_by: str | None = None) -> str:
    """Embed the catalog photos with ``model_spec`` (incrementally) and index them; returns the index run id.

    ``model_spec``: a trained model id or ``imagenet:<backbone>``; default: the newest trained model.
    ``chosen_by``: the run that chose this model (an ``evaluate`` run), recorded in the lineage.
    With the current index's model and kind, the new index is that index plus the photos added since, minus
    those removed (``index.incremental``, see ``index.incremental``); else it is built afresh.
    The index is not searched until ``tasks.gate.switch_index`` makes it current.
    """
    cfg = settings.index
    wh = open_warehouse(settings)
    newest = newest_model(wh)
    spec = model_spec or (newest["model_id"] if newest else f"imagenet:{settings.embed.backbone}")
    corrections = overrides_run(wh)  # the newest corrections by hand, read before the photos they select
    photos, denoise_run = catalog_photos(wh, settings)
    embed_run = embed_images(settings, model_spec=spec, image_ids=photos.column("image_id").to_pylist())
    model_id = model_id_of(settings, spec)
    vectors, mapping, products = catalog_vectors(wh, photos, model_id)
    kind = choose_kind(len(vectors), cfg)
    inputs = [embed_run, (find_model(wh, model_id) or {}).get("run_id"), chosen_by, denoise_run, corrections,
              *sorted(set(photos.column("run_id").to_pylist()))]
    params = {"model_spec": spec, "model_id": model_id, "kind": kind, "index": json.loads(settings.section_json("index"))}
    with start_run(wh, step="index", params=params, inputs=inputs) as run:
        index_id, use_gpu, dim = run.run_id, gpu_count() > 0, int(vectors.shape[1])
        base = current_index_row(wh) if cfg.incremental else None
        built = (_updated(settings, base, model_id, kind, vectors, mapping) if base else None) or \
            _built_afresh(settings, index_id, kind, vectors, mapping, use_gpu)
        print(f"index {index_id}: {kind} over {len(vectors)} photos x {dim} dims of {products.num_rows} "
              f"products ({'GPU' if use_gpu else 'CPU'}); {built['note']}", flush=True)
        meta = {"index_id": index_id, "model_id": model_id, "model_spec": spec, "kind": kind,
                "n_vectors": len(vectors), "n_rows": built["index"].ntotal, "dim": dim, "recall_vs_exact": built["recall"],
                "match_levels": built["levels"],
                "built_on": "gpu" if use_gpu else "cpu", "created_at": now().isoformat(), **built["meta"]}
        path = write_index_dir(settings, index_id, built["index"], built["mapping"], products, meta)
        run.write("indexes", [{
            "index_id": index_id, "model_id": model_id, "kind": kind, "path": str(path.relative_to(settings.home)),
            "n_vectors": len(vectors), "dim": dim, "recall_vs_exact": built["recall"], "status": "built",
            "note": built["note"], "created_at": now()}])
        run.message = built["note"]
    return run.run_id


def _built_afresh(settings, index_id: str, kind: str, vectors: np.ndarray, mapping: pa.Table, use_gpu: bool) -> dict:
    cfg = settings.index
    index, recall, note = _faiss_with_recall(vectors, kind, cfg, use_gpu)
    levels = match_levels(index, vectors, list(range(len(vectors))), mapping.column("product_id").to_pylist(),
                          cfg.recall_sample, cfg.seed)
    return {"index": index, "mapping": mapping, "recall": recall, "levels": levels,
            "note": f"{note}; {levels_note(levels)}",
            "meta": {"full_build": incremental.full_build(index_id, len(vectors))}}


def _updated(settings, base: dict, model_id: str, kind: str, vectors: np.ndarray, mapping: pa.Table) -> dict | None:
    """The current index plus the photos added since, minus those removed; None (said why) when it must be rebuilt."""
    try:
        index, base_mapping, base_meta = incremental.read_base(settings.home / base["path"])
    except Exception as exc:  # noqa: BLE001 - any unreadable file of the current index: build afresh instead
        print(f"index: built afresh: the current index {base['index_id']} is unreadable ({type(exc).__name__})",
              flush=True)
        return None
    added, removed = incremental.plan(base_mapping, mapping)
    why = incremental.update_reason(base_meta, model_id, kind, len(added), len(removed),
                                    settings.index.max_delta_fraction)
    if why:
        print(f"index: built afresh: {why}", flush=True)
        return None
    new_mapping = incremental.apply(index, base_mapping, mapping, vectors, added, removed)
    full = incremental.full_build_after(base_meta, len(added), len(removed))
    levels = _recalibrated(settings.index, index, new_mapping, mapping, vectors)
    note = (f"incremental on {base['index_id']}: +{len(added)} / -{len(removed)} photos "
            f"({full['added'] + full['removed']} since the full build {full['index_id']}); recall vs exact as "
            f"measured then: {base['recall_vs_exact']:.3f}; {levels_note(levels)}")
    return {"index": index, "mapping": new_mapping, "recall": base["recall_vs_exact"], "levels": levels, "note": note,
            "meta": {"full_build": full, "base_index_id": base["index_id"], "added": len(added),
                     "removed": len(removed)}}


def _recalibrated(cfg, index, new_mapping: pa.Table, wanted: pa.Table, vectors: np.ndarray) -> dict:
    """Match levels of an updated index, calibrated on it anew (its catalog changed): the wanted photos
    (``vectors``, in ``wanted``'s order) at their rows of ``new_mapping``, removed rows left out."""
    products = [None if gone else p for p, gone in zip(new_mapping.column("product_id").to_pylist(),
                                                       incremental.removed_flags(new_mapping))]
    live = {key: row for key, row, gone in zip(incremental.photo_keys(new_mapping), new_mapping.column("row").to_pylist(),
                                               incremental.removed_flags(new_mapping)) if not gone}
    rows = [live[key] for key in incremental.photo_keys(wanted)]
    return match_levels(index, vectors, rows, products, cfg.recall_sample, cfg.seed)


def levels_note(levels: dict) -> str:
    """One line on an index's match levels and their held-back precision."""
    if levels["same"] is None:
        return "match levels not calibrated (fewer than two products)"
    cal = levels["calibration"]
    same, similar = cal["held_back"]["same"], cal["held_back"]["similar"]
    said = (f"same product from score {levels['same']} (held-back precision {same['precision']}, recall "
            f"{same['recall']})" if cal["same_reached"] else "same product only for a copy of a catalog photo "
            "(top-1 precision 0.95 not reached at any score)")
    return (f"match levels: {said}; similar from {levels['similar']} (held-back precision {similar['precision']}, "
            f"recall {similar['recall']})")


def index_lock(settings):
    """One build + switch at a time per data home (``index``, the nightly's index and switch): a switch prunes
    old index directories, and would delete a concurrent run's fresh one before that run switched it in."""
    return step_lock(settings.warehouse_dir, "index")


# --- switching ---------------------------------------------------------------------------------


# --- Prefect tasks -----------------------------------------------------------------------------

build_index_task = task(build_index, name="build-index", cache_policy=NO_CACHE)
