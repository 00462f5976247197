"""Index step: embed the catalogue with a model, build a faiss index, switch it in atomically.

An index is a directory ``indexes/<index_id>/`` holding ``index.faiss``, ``mapping.parquet``
(faiss row -> image_id, product_id, photo path), ``products.parquet`` (what a result shows) and
``meta.json``. It is written under a temporary name and renamed into place, so a directory that
exists is complete. ``indexes/CURRENT`` names the index that searches use; it is replaced atomically
(temp file + ``os.replace``) only after the ``indexes`` row with status ``current`` is committed,
so searches never see a half-built index and a failed build leaves the previous one serving.

faiss: vectors are L2-normalised, so inner product = cosine similarity. The kind is chosen by size:
exact inner product up to ``index.exact_max_vectors``, then IVF-PQ or HNSW. Training and adding run
on a GPU when faiss-gpu and a GPU are both present; the stored index is always a CPU index.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task
from prefect.cache_policies import NO_CACHE

from shoesearch.errors import ShoesearchError
from warehouse import atomic_write_text, open_warehouse, start_run
from warehouse.runs import now

KINDS = ("flat_ip", "ivfpq", "hnsw")
PQ_MIN_POINTS_PER_CODEWORD = 39  # faiss' k-means minimum per centroid (it warns below)
POINTER = "CURRENT"
INDEX_FILE = "index.faiss"
MAPPING_FILE = "mapping.parquet"
PRODUCTS_FILE = "products.parquet"
META_FILE = "meta.json"
PRODUCT_COLUMNS = ["product_id", "title", "brand", "price", "url", "shop_name", "category"]

def gpu_count() -> int:
    """GPUs faiss can use (0 with faiss-cpu)."""
    import faiss

    if not hasattr(faiss, "StandardGpuResources"):
        return 0
    try:
        return int(faiss.get_num_gpus())
    except Exception:  # noqa: BLE001 - a broken CUDA runtime means "no GPU", not a failed build
        return 0


def choose_kind(n_vectors: int, cfg) -> str:
    """``flat_ip`` up to ``cfg.exact_max_vectors``, else ``cfg.approximate`` (ivfpq | hnsw).

    IVF-PQ needs enough vectors to train its 2**pq_bits codewords; below that, search stays exact.
    """
    if cfg.approximate not in ("ivfpq", "hnsw"):
        raise ShoesearchError(f"index.approximate must be 'ivfpq' or 'hnsw', got {cfg.approximate!r}")
    if n_vectors <= cfg.exact_max_vectors:
        return "flat_ip"
    if cfg.approximate == "ivfpq" and n_vectors < PQ_MIN_POINTS_PER_CODEWORD * 2 ** cfg.pq_bits:
        return "flat_ip"
    return cfg.approximate


def ivf_lists(n_vectors: int, cfg) -> int:
    """Number of IVF cells: the setting, or ~4*sqrt(n) (faiss guideline), with >= 39 training points each."""
    if cfg.ivf_lists > 0:
        return cfg.ivf_lists
    return max(1, min(int(4 * math.sqrt(n_vectors)), min(n_vectors, cfg.train_sample) // 39))


def pq_subquantizers(dim: int, pq_bytes: int) -> int:
    """The largest divisor of ``dim`` not above ``pq_bytes`` (PQ needs dim % m == 0)."""
    for m in range(min(pq_bytes, dim), 0, -1):
        if dim % m == 0:
            return m
    return 1


def _train_sample(vectors: np.ndarray, size: int, seed: int) -> np.ndarray:
    if len(vectors) <= size:
        return vectors
    rng = np.random.default_rng(seed)
    return vectors[np.sort(rng.choice(len(vectors), size, replace=False))]


def build_faiss(vectors: np.ndarray, kind: str, cfg, use_gpu: bool | None = None, seed: int = 0):
    """Build (train + add) a faiss inner-product index of ``kind`` over ``vectors`` (n x d float32).

    ``use_gpu=None`` uses a GPU when faiss-gpu sees one. Returns a CPU index.
    """
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    if kind == "flat_ip":
        index = faiss.IndexFlatIP(dim)
    elif kind == "ivfpq":
        quantizer = faiss.IndexFlatIP(dim)
        m = pq_subquantizers(dim, cfg.pq_bytes)
        index = faiss.IndexIVFPQ(quantizer, dim, ivf_lists(n, cfg), m, cfg.pq_bits, faiss.METRIC_INNER_PRODUCT)
        index.nprobe = cfg.nprobe
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = cfg.hnsw_ef_construction
        index.hnsw.efSearch = cfg.hnsw_ef_search
    else:
        raise ValueError(f"unknown index kind {kind!r}; kinds: {', '.join(KINDS)}")

    gpu = (gpu_count() > 0) if use_gpu is None else use_gpu
    sample = _train_sample(vectors, cfg.train_sample, seed)
    if gpu and kind != "hnsw":  # faiss has no GPU HNSW; IVF-PQ and flat train/add on the GPU
        resources = faiss.StandardGpuResources()
        options = faiss.GpuClonerOptions()
        options.useFloat16 = True  # 64 PQ sub-quantizers need fp16 lookup tables to fit shared memory
        gpu_index = faiss.index_cpu_to_gpu(resources, 0, index, options)
        if not gpu_index.is_trained:
            gpu_index.train(sample)
        gpu_index.add(vectors)
        index = faiss.index_gpu_to_cpu(gpu_index)
    else:
        if not index.is_trained:
            index.train(sample)
        index.add(vectors)
    if kind == "ivfpq":
        faiss.extract_index_ivf(index).nprobe = cfg.nprobe
        if cfg.refine:
            index = _with_refinement(index, vectors, sample, cfg)
    return index


def _with_refinement(base, vectors: np.ndarray, sample: np.ndarray, cfg):
    """Re-rank ``refine_factor * k`` PQ candidates with finer codes (``cfg.refine``, e.g. SQ8 or Flat)."""
    import faiss

    refine = faiss.index_factory(vectors.shape[1], cfg.refine, faiss.METRIC_INNER_PRODUCT)
    if not refine.is_trained:
        refine.train(sample)
    refine.add(vectors)
    index = faiss.IndexRefine(base, refine)
    index.k_factor = cfg.refine_factor
    index.own_fields = True  # the refine index frees its parts; Python must not free them too
    base.this.disown()
    refine.this.disown()
    return index


def recall_vs_exact(index, vectors: np.ndarray, queries: np.ndarray, k: int) -> float:
    """Mean fraction of the exact top-``k`` (inner product over ``vectors``) that ``index`` also returns."""
    import faiss

    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(np.ascontiguousarray(vectors, dtype=np.float32))
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    k = min(k, len(vectors))
    _, truth = exact.search(queries, k)
    _, found = index.search(queries, k)
    hits = [len(set(t[t >= 0]) & set(f[f >= 0])) / k for t, f in zip(truth, found)]
    return float(np.mean(hits)) if hits else 1.0


def sample_queries(vectors: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Up to ``size`` stored vectors to use as recall queries (photos searching for themselves)."""
    return _train_sample(vectors, size, seed)


# --- the index step ----------------------------------------------------------------------------


@dataclass(frozen=True)
class IndexInfo:
    """A built index on disk and its ``indexes`` row."""

    index_id: str
    model_id: str
    kind: str
    path: Path  # absolute directory
    n_vectors: int
    dim: int
    recall_vs_exact: float | None
    run_id: str


def _row_to_info(settings, row: dict) -> IndexInfo:
    return IndexInfo(
        index_id=row["index_id"], model_id=row["model_id"], kind=row["kind"],
        path=(settings.home / row["path"]).resolve(), n_vectors=int(row["n_vectors"] or 0),
        dim=int(row["dim"] or 0), recall_vs_exact=row["recall_vs_exact"], run_id=row["run_id"],
    )


def default_model_spec(wh, settings) -> str:
    """The newest trained NetVLAD model, else the ImageNet baseline backbone."""
    rows = wh.query(
        """SELECT m.model_id FROM models m JOIN runs r ON r.run_id = m.run_id
           WHERE m.kind = 'netvlad' AND r.status = 'success' ORDER BY m.created_at DESC LIMIT 1"""
    ).to_pylist()
    return rows[0]["model_id"] if rows else f"imagenet:{settings.embed.backbone}"


def catalogue_photos(wh, settings) -> pa.Table:
    """The photos to index: (image_id, product_id, path, run_id of the images row), in a stable order.

    Kept photos of the current denoise run, or every valid photo with ``index.index_all_photos``.
    """
    if settings.index.index_all_photos:
        sql = """SELECT i.image_id, i.product_id, i.path, i.run_id FROM images_current i
                 WHERE i.status = 'ok' AND i.path IS NOT NULL ORDER BY i.image_id"""
    else:
        if not wh.query("SELECT count(*) AS n FROM denoise_current").column("n")[0].as_py():
            raise ShoesearchError(
                "no denoise run yet: run `shoesearch denoise` first, or index every photo with "
                "--set index.index_all_photos=true"
            )
        sql = """SELECT i.image_id, i.product_id, i.path, i.run_id FROM images_current i
                 JOIN denoise_current d ON d.image_id = i.image_id
                 WHERE d.kept AND i.status = 'ok' AND i.path IS NOT NULL ORDER BY i.image_id"""
    photos = wh.query(sql)
    if photos.num_rows == 0:
        raise ShoesearchError("no photos to index: crawl or ingest a catalogue first")
    return photos


def _model_run_id(wh, model_id: str) -> str | None:
    rows = wh.query("SELECT run_id FROM models WHERE model_id = ? LIMIT 1", [model_id]).to_pylist()
    return rows[0]["run_id"] if rows else None


def _write_index_dir(settings, index_id: str, index, mapping: pa.Table, products: pa.Table, meta: dict) -> Path:
    """Write every file under a temporary name, then rename the directory into place."""
    import faiss

    final = settings.indexes_dir / index_id
    tmp = settings.indexes_dir / f".tmp-{index_id}-{uuid.uuid4().hex[:6]}"
    tmp.mkdir(parents=True)
    try:
        faiss.write_index(index, str(tmp / INDEX_FILE))
        pq.write_table(mapping, tmp / MAPPING_FILE)
        pq.write_table(products, tmp / PRODUCTS_FILE)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1, default=str))
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def build_index(settings, model_spec: str | None = None) -> str:
    """Embed the catalogue photos with ``model_spec`` (incrementally) and build a faiss index over them.

    ``model_spec``: a trained model id or ``imagenet:<backbone>``; default: the newest trained model.
    Records an ``indexes`` row (status ``built``) and returns the run id, which is also the index id.
    The index is not searched until :func:`switch_index` makes it current.
    """
    from models.registry import load_embedder
    from tasks.embed import embed_images, load_embeddings

    cfg = settings.index
    wh = open_warehouse(settings)
    spec = model_spec or default_model_spec(wh, settings)
    photos = catalogue_photos(wh, settings)
    image_ids = photos.column("image_id").to_pylist()
    embed_run = embed_images(settings, model_spec=spec, image_ids=image_ids)
    model_id = load_embedder(spec, settings).model_id
    ids, vectors = load_embeddings(wh, model_id)
    order = {image_id: row for row, image_id in enumerate(image_ids)}
    keep = [k for k, image_id in enumerate(ids) if image_id in order]  # unreadable photos have no vector
    if not keep:
        raise ShoesearchError(f"no embeddings of model {model_id!r} for the catalogue photos")
    rows = [order[ids[k]] for k in keep]
    vectors = np.ascontiguousarray(vectors[keep], dtype=np.float32)
    mapping = photos.take(pa.array(rows)).select(["image_id", "product_id", "path"])
    mapping = mapping.append_column("row", pa.array(np.arange(len(rows), dtype=np.int64)))
    products = wh.query(
        f"SELECT {', '.join(PRODUCT_COLUMNS)} FROM products_current WHERE product_id IN "
        "(SELECT unnest(?::VARCHAR[]))",
        [sorted(set(mapping.column("product_id").to_pylist()))],
    )
    image_runs = sorted(set(photos.column("run_id").to_pylist()))
    denoise_run = None if cfg.index_all_photos else wh.query(
        "SELECT any_value(run_id) AS r FROM denoise_current").column("r")[0].as_py()

    kind = choose_kind(len(vectors), cfg)
    inputs = [embed_run, _model_run_id(wh, model_id), denoise_run, *image_runs]
    params = {"model_spec": spec, "model_id": model_id, "kind": kind, "index": json.loads(settings.section_json("index"))}
    with start_run(wh, step="index", params=params, inputs=inputs) as run:
        index_id = run.run_id
        use_gpu = gpu_count() > 0
        print(f"index {index_id}: {kind} over {len(vectors)} photos x {vectors.shape[1]} dims "
              f"of {products.num_rows} products ({'GPU' if use_gpu else 'CPU'})", flush=True)
        index = build_faiss(vectors, kind, cfg, use_gpu=use_gpu, seed=cfg.seed)
        if kind == "flat_ip":
            recall, note = 1.0, "exact inner product"
        else:
            queries = sample_queries(vectors, cfg.recall_sample, cfg.seed)
            recall = recall_vs_exact(index, vectors, queries, cfg.recall_k)
            note = f"recall@{cfg.recall_k} vs exact on {len(queries)} sampled photos: {recall:.3f}"
        print(f"index {index_id}: {note}", flush=True)
        meta = {"index_id": index_id, "model_id": model_id, "model_spec": spec, "kind": kind,
                "n_vectors": len(vectors), "dim": int(vectors.shape[1]), "recall_vs_exact": recall,
                "built_on": "gpu" if use_gpu else "cpu", "created_at": now().isoformat()}
        path = _write_index_dir(settings, index_id, index, mapping, products, meta)
        run.write("indexes", [{
            "index_id": index_id, "model_id": model_id, "kind": kind,
            "path": str(path.relative_to(settings.home)), "n_vectors": len(vectors),
            "dim": int(vectors.shape[1]), "recall_vs_exact": recall, "status": "built",
            "note": note, "created_at": now(),
        }])
        run.message = note
    return run.run_id


# --- switching ---------------------------------------------------------------------------------


def index_row(wh, index_id: str, status: str = "built") -> dict:
    rows = wh.query(
        "SELECT * FROM indexes WHERE index_id = ? AND status = ? ORDER BY created_at DESC LIMIT 1",
        [index_id, status],
    ).to_pylist()
    if not rows:
        raise ShoesearchError(f"no {status} index {index_id!r} (see `shoesearch sql 'SELECT * FROM indexes'`)")
    return rows[0]


def model_test_recall(wh, model_id: str) -> float | None:
    """A model's test Recall@1: its ``models.metrics`` JSON, else its newest ``evaluations`` row."""
    rows = wh.query("SELECT metrics FROM models WHERE model_id = ? ORDER BY created_at DESC LIMIT 1",
                    [model_id]).to_pylist()
    if rows and rows[0]["metrics"]:
        metrics = json.loads(rows[0]["metrics"])
        for key in ("test_recall_at_1", "recall_at_1", "test/recall_at_1", "R@1"):
            if isinstance(metrics.get(key), (int, float)):
                return float(metrics[key])
        test = metrics.get("test")
        if isinstance(test, dict) and isinstance(test.get("recall_at_1"), (int, float)):
            return float(test["recall_at_1"])
    rows = wh.query(
        """SELECT e.recall_at_1 FROM evaluations e JOIN runs r ON r.run_id = e.run_id
           WHERE e.model_id = ? AND e.split = 'test' AND r.status = 'success'
           ORDER BY r.finished_at DESC, e.photos DESC LIMIT 1""", [model_id]).to_pylist()
    return float(rows[0]["recall_at_1"]) if rows and rows[0]["recall_at_1"] is not None else None


def _model_split(wh, model_id: str) -> str | None:
    rows = wh.query("SELECT params FROM models WHERE model_id = ? ORDER BY created_at DESC LIMIT 1",
                    [model_id]).to_pylist()
    return json.loads(rows[0]["params"] or "{}").get("split_run_id") if rows else None


def recall_on_split(settings, model_id: str, split_run_id: str) -> float:
    """Test Recall@1 of ``model_id`` measured on the test photos of ``split_run_id``."""
    from models.netvlad_model import load_checkpoint
    from tasks.train import model_row, recall
    from tasks.train_data import load_photos, pick_device

    wh = open_warehouse(settings)
    model, _ = load_checkpoint(settings.home / model_row(wh, model_id)["path"])
    device = pick_device(settings.train.device)
    return float(recall(model.to(device), settings, load_photos(wh, split_run_id, "auto", ("test",)), device)["recall_at_1"])


def gate_decision(wh, new_model_id: str, current: dict | None, tolerance: float,
                  settings=None) -> tuple[bool, str]:
    """Whether a new model may replace the current index's model, and why.

    Both models are compared on the same test photos: when the current model was scored on an
    older split (the catalogue grew), it is re-scored on the new model's test split (needs
    ``settings``). A missing or NaN Recall@1 of the new model is a refusal.
    """
    if current is None:
        return True, "no current index"
    if current["model_id"] == new_model_id:
        return True, "same model as the current index"
    old = model_test_recall(wh, current["model_id"])
    new = model_test_recall(wh, new_model_id)
    new_split = _model_split(wh, new_model_id)
    if settings is not None and new_split and _model_split(wh, current["model_id"]) not in (None, new_split):
        old = recall_on_split(settings, current["model_id"], new_split)
    if old is None or math.isnan(old):
        return True, f"current model {current['model_id']} has no test Recall@1; new: {new}"
    if new is None or math.isnan(new):
        return False, f"refused: new model {new_model_id} has no test Recall@1 (current: {old:.4f})"
    verdict = f"test Recall@1 new {new:.4f} vs current {old:.4f} on the same test photos (tolerance {tolerance})"
    if new < old - tolerance:
        return False, "refused: " + verdict
    return True, "accepted: " + verdict


def switch_index(settings, index_id: str, gate: bool = True) -> str:
    """Make a built index current (``indexes`` row + ``CURRENT`` pointer), unless the gate refuses it.

    The gate compares the test Recall@1 of the index's model with the current index's model; a
    refusal is recorded as an ``indexes`` row with status ``refused`` and the previous index keeps
    serving. Returns the run id of this switch step.
    """
    import faiss

    wh = open_warehouse(settings)
    built = index_row(wh, index_id, "built")
    current = current_index_row(wh)
    ok, reason = gate_decision(wh, built["model_id"], current, settings.schedule.gate_tolerance, settings) if gate \
        else (True, "gate bypassed")
    inputs = [built["run_id"], current["run_id"] if current else None]
    with start_run(wh, step="switch", params={"index_id": index_id, "gate": gate}, inputs=inputs) as run:
        if ok:
            index = faiss.read_index(str(settings.home / built["path"] / INDEX_FILE))  # loads: not half-built
            if index.ntotal != built["n_vectors"]:
                raise ShoesearchError(f"index {index_id} holds {index.ntotal} vectors, expected {built['n_vectors']}")
        status = "current" if ok else "refused"
        run.write("indexes", [{**{k: v for k, v in built.items() if k != "run_id"},
                               "status": status, "note": reason, "created_at": now()}])
        run.message = f"{status}: {reason}"
    if ok:
        write_pointer(settings, index_id)
        prune_indexes(settings, keep=settings.index.keep_indexes)
    print(f"index {index_id}: {status} ({reason})", flush=True)
    return run.run_id


def write_pointer(settings, index_id: str) -> None:
    atomic_write_text(settings.indexes_dir / POINTER, index_id + "\n")


def current_index_row(wh) -> dict | None:
    rows = wh.query("SELECT * FROM indexes_current").to_pylist()
    return rows[0] if rows else None


def current_index(settings) -> IndexInfo | None:
    """The current index per the ``indexes`` table; the ``CURRENT`` pointer (the searches' fast path)
    is rewritten when it is missing or names another index (a crash between commit and pointer write)."""
    pointer = settings.indexes_dir / POINTER
    row = current_index_row(open_warehouse(settings))
    if row is None:
        return None
    if not pointer.exists() or pointer.read_text().strip() != row["index_id"]:
        write_pointer(settings, row["index_id"])
    return _row_to_info(settings, row)


def prune_indexes(settings, keep: int) -> list[str]:
    """Delete old index directories beyond the newest ``keep`` (never the current one)."""
    pointer = settings.indexes_dir / POINTER
    current = pointer.read_text().strip() if pointer.exists() else None
    dirs = sorted((d for d in settings.indexes_dir.iterdir() if d.is_dir() and not d.name.startswith(".")),
                  key=lambda d: d.stat().st_mtime, reverse=True)
    removed = []
    for d in dirs[max(keep, 1):]:
        if d.name != current:
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d.name)
    return removed


# --- Prefect tasks -----------------------------------------------------------------------------

build_index_task = task(build_index, name="build-index", cache_policy=NO_CACHE)
switch_index_task = task(switch_index, name="switch-index", cache_policy=NO_CACHE)
