"""Every table's schema, declared once.

Each table is a Parquet dataset: ``<warehouse>/<table>/batch-<run_id>-<n>/part-*.parquet``.
Every row carries the ``run_id`` of the run that wrote it (see :mod:`warehouse.store`).
Tables are append-only; "current" state (latest product version, latest denoise decision)
is a query, and DuckDB views named ``<table>_current`` answer it.
"""

from __future__ import annotations

import pyarrow as pa

TS = pa.timestamp("us", tz="UTC")
# Integer surrogate keys, filled in automatically from the id they name (see ``conform.key_of``):
# joins on 64-bit integers are several times cheaper than on strings at catalog scale.
KEY_SOURCES = {"product_key": "product_id", "image_key": "image_id"}
JSON = pa.string()  # JSON documents are stored as text; DuckDB's json functions read them
# Numbers a source quotes (a shop's price API, a catalog's products.json) where "unknown" is null: NaN and
# infinities (JSON's NaN / Infinity, 1e999, a price API's "inf") are stored as null and counted (``conform``),
# rather than refusing the product or storing a number no page, JSON reader or sum can use.
NULL_IF_NOT_FINITE = {"products": ("price", "list_price")}

PRODUCTS = pa.schema(
    [
        pa.field("product_id", pa.string(), nullable=False),  # "jd:<sku>" or "<catalog>:<folder>"
        pa.field("product_key", pa.int64(), nullable=False),  # key_of(product_id): fast integer joins
        pa.field("source", pa.string(), nullable=False),  # "jd" | "catalog"
        pa.field("sku", pa.string()),
        pa.field("title", pa.string()),
        pa.field("brand", pa.string()),
        pa.field("brand_id", pa.string()),
        pa.field("category", pa.string()),  # human path, e.g. "运动户外/运动鞋包/跑步鞋"
        pa.field("category_ids", pa.string()),  # JD cat ids "1318,12099,9756"
        pa.field("shop_id", pa.string()),
        pa.field("shop_name", pa.string()),
        pa.field("price", pa.float64()),
        pa.field("list_price", pa.float64()),
        pa.field("url", pa.string()),
        pa.field("variants", pa.list_(pa.string())),  # other colour SKUs
        pa.field("n_images", pa.int32()),
        pa.field("content_hash", pa.string()),  # hash of the parsed page: unchanged => skipped
        pa.field("crawled_at", TS),
        pa.field("run_id", pa.string(), nullable=False),
    ]
)

IMAGES = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),  # "<product_id>#<position>"
        pa.field("image_key", pa.int64(), nullable=False),  # key_of(image_id)
        pa.field("product_id", pa.string(), nullable=False),
        pa.field("product_key", pa.int64(), nullable=False),
        pa.field("position", pa.int32(), nullable=False),  # 0 = front view
        pa.field("url", pa.string()),
        pa.field("sha1", pa.string()),  # content hash; the file is stored once per hash
        pa.field("path", pa.string()),  # relative to the images directory
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("bytes", pa.int64()),
        pa.field("status", pa.string(), nullable=False),  # ok | corrupt | not_image | too_large | missing | refused | ...
        pa.field("reason", pa.string()),
        pa.field("domain", pa.string()),  # "shop" | "user" (consumer photos), from labels.csv
        pa.field("is_noise", pa.bool_()),  # ground truth when known (demo shop manifest, labels)
        pa.field("run_id", pa.string(), nullable=False),
    ]
)

EMBEDDINGS = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("sha1", pa.string(), nullable=False),
        pa.field("model_id", pa.string(), nullable=False),  # backbone + weights version
        pa.field("dim", pa.int32(), nullable=False),
        pa.field("vector", pa.list_(pa.float32()), nullable=False),  # L2-normalised, length == dim
        pa.field("run_id", pa.string(), nullable=False),
    ]
)

DENOISE = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("image_key", pa.int64(), nullable=False),
        pa.field("product_id", pa.string(), nullable=False),
        pa.field("product_key", pa.int64(), nullable=False),
        pa.field("position", pa.int32()),
        pa.field("sha1", pa.string()),
        pa.field("distance", pa.float32()),  # to the product's first photo; null when undecidable
        pa.field("threshold", pa.float32(), nullable=False),
        pa.field("kept", pa.bool_(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),  # anchor | near | far | no_anchor | bad_image | duplicate
        pa.field("model_id", pa.string()),
        pa.field("run_id", pa.string(), nullable=False),
    ]
)

# Corrections by hand (``warehouse.overrides``): a person's decision on one photo, over the rule's. The newest row
# per photo (and content hash: a re-crawled photo with other content is judged afresh) wins; ``kept`` null
# withdraws the correction. ``denoise_current`` applies them (its ``decided_by`` says 'rule' or 'person').
DENOISE_OVERRIDES = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("image_key", pa.int64(), nullable=False),
        pa.field("product_id", pa.string(), nullable=False),
        pa.field("product_key", pa.int64(), nullable=False),
        pa.field("sha1", pa.string()),  # the photo's content the person looked at
        pa.field("kept", pa.bool_()),  # the person's decision; null: withdrawn (the rule decides again)
        pa.field("rule_kept", pa.bool_()),  # the rule's decision at the time, when it had one
        pa.field("who", pa.string(), nullable=False),
        pa.field("decided_at", TS, nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
    ]
)

SPLITS = pa.schema(
    [
        pa.field("product_id", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),  # train | val | test
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
    ]
)

MODELS = pa.schema(
    [
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),  # kmeans | netvlad
        pa.field("backbone", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),  # checkpoint / centroid file, relative to home
        pa.field("parent_model_id", pa.string()),  # warm start / k-means init it came from
        pa.field("params", JSON),
        pa.field("metrics", JSON),  # test Recall@1/5/10, mAP ...
        pa.field("created_at", TS),
        pa.field("run_id", pa.string(), nullable=False),
    ]
)

TRAIN_METRICS = pa.schema(
    [
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("epoch", pa.int32(), nullable=False),
        pa.field("loss", pa.float64()),
        pa.field("val_recall_at_1", pa.float64()),
        pa.field("val_recall_at_5", pa.float64()),
        pa.field("images_per_s", pa.float64()),
        pa.field("seconds", pa.float64()),
        pa.field("run_id", pa.string(), nullable=False),
    ]
)

EVALUATIONS = pa.schema(
    [
        pa.field("model_id", pa.string()),  # null for the off-the-shelf baseline
        pa.field("variant", pa.string(), nullable=False),  # imagenet | kmeans_init | trained
        pa.field("photos", pa.string(), nullable=False),  # raw | denoised
        pa.field("protocol", pa.string(), nullable=False),  # all-vs-all | consumer-to-shop
        pa.field("split", pa.string(), nullable=False),
        pa.field("queries", pa.int64()),
        pa.field("recall_at_1", pa.float64()),
        pa.field("recall_at_5", pa.float64()),
        pa.field("recall_at_10", pa.float64()),
        pa.field("mean_ap", pa.float64()),
        pa.field("run_id", pa.string(), nullable=False),
    ]
)

INDEXES = pa.schema(
    [
        pa.field("index_id", pa.string(), nullable=False),
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),  # flat_ip | ivfpq | hnsw
        pa.field("path", pa.string(), nullable=False),  # index directory, relative to home
        pa.field("n_vectors", pa.int64()),
        pa.field("dim", pa.int32()),
        pa.field("recall_vs_exact", pa.float64()),
        pa.field("status", pa.string()),  # built | current | refused
        pa.field("note", pa.string()),
        pa.field("created_at", TS),
        pa.field("run_id", pa.string(), nullable=False),
    ]
)

RUNS = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("flow", pa.string()),  # the Prefect flow (or CLI command) it ran in
        pa.field("step", pa.string(), nullable=False),  # crawl | embed | denoise | kmeans | train | ...
        pa.field("status", pa.string(), nullable=False),  # running | success | failed
        pa.field("started_at", TS),
        pa.field("finished_at", TS),
        pa.field("parameters", JSON),
        pa.field("code_version", pa.string()),
        pa.field("input_run_ids", pa.list_(pa.string())),
        pa.field("output_rows", JSON),  # {"table": rows}
        pa.field("message", pa.string()),
        pa.field("prefect_flow_run_id", pa.string()),
        pa.field("recorded_at", TS, nullable=False),  # runs is a log: the newest row per run wins
    ]
)

TABLES: dict[str, pa.Schema] = {
    "products": PRODUCTS,
    "images": IMAGES,
    "embeddings": EMBEDDINGS,
    "denoise": DENOISE,
    "denoise_overrides": DENOISE_OVERRIDES,
    "splits": SPLITS,
    "models": MODELS,
    "train_metrics": TRAIN_METRICS,
    "evaluations": EVALUATIONS,
    "indexes": INDEXES,
    "runs": RUNS,
}
