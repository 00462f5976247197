"""Product-level train/val/test split (step ``split``): no photo of a test product is ever trained on.

``make_split(settings) -> run_id`` assigns every current product with at least one stored photo to
``train``, ``val`` or ``test`` by ``settings.train.split_fractions``, deterministically from
``settings.train.seed``, and writes the assignment to ``splits``. Products keep their split across
runs as long as the seed is unchanged (the assignment hashes the product id), so a nightly run
that adds products never moves an old test product into training.

A split is identified by its content: ``split_content`` hashes the (product, split) pairs. When a split run
with the same content exists, ``make_split`` returns it instead of writing an identical one, so two ``train``
commands on an unchanged catalog train on the same split run and ``evaluate --compare`` can put their models
side by side (raw vs denoised photos, for one).
"""

from __future__ import annotations

import hashlib
import json

from prefect import task
from prefect.cache_policies import NO_CACHE

from core.errors import ShoesearchError
from core.progress import run_logger
from warehouse import latest_run, open_warehouse, start_run

SPLITS = ("train", "val", "test")


def split_of(product_id: str, seed: int, fractions: tuple[float, float, float]) -> str:
    """The split of one product: a seeded hash of its id mapped to [0, 1) against the fractions."""
    digest = hashlib.sha256(f"{seed}:{product_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    edge = 0.0
    for name, fraction in zip(SPLITS, fractions):
        edge += fraction
        if u < edge:
            return name
    return SPLITS[-1]


def make_split(settings) -> str:
    """Assign every current product to train/val/test; returns the split run id."""
    fractions = tuple(float(f) for f in settings.train.split_fractions)
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ShoesearchError(f"train.split_fractions must be three non-negative numbers summing to 1, got {fractions}")
    wh = open_warehouse(settings)
    products = wh.query(
        "SELECT DISTINCT product_id FROM images_current WHERE status = 'ok' ORDER BY product_id"
    ).column("product_id").to_pylist()
    if len(products) < 3:
        raise ShoesearchError(f"a train/val/test split needs at least 3 products with photos, found {len(products)}")
    seed = int(settings.train.seed)
    rows = [{"product_id": p, "split": split_of(p, seed, fractions), "seed": seed} for p in products]
    content = split_content(rows)
    same = split_with_content(wh, content)
    if same:
        run_logger("split").info("split: reusing %s (the same %d products in the same splits)", same, len(rows))
        return same
    inputs = [latest_run(wh, "ingest"), latest_run(wh, "crawl")]
    params = {"seed": seed, "fractions": fractions, "content": content}
    with start_run(wh, step="split", params=params, inputs=inputs) as run:
        run.write("splits", rows)
        run.message = "; ".join(f"{name} {sum(r['split'] == name for r in rows)} products" for name in SPLITS)
    run_logger("split").info("split %s: %s", run.run_id, run.message)
    return run.run_id


def split_content(rows: list[dict]) -> str:
    """The content hash of a split: sha256 over its sorted ``product_id<TAB>split`` lines."""
    lines = sorted(f"{r['product_id']}\t{r['split']}" for r in rows)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def split_with_content(wh, content: str) -> str | None:
    """The newest successful split run with this content (``params.content``; the newest split run is also
    hashed from its rows, for runs written before splits recorded their hash), or None."""
    runs = wh.query("SELECT run_id, parameters FROM runs WHERE step = 'split' AND status = 'success' "
                    "ORDER BY finished_at DESC").to_pylist()
    for run in runs:
        if json.loads(run["parameters"] or "{}").get("content") == content:
            return run["run_id"]
    if runs:
        newest = wh.query("SELECT product_id, split FROM splits WHERE run_id = ?", [runs[0]["run_id"]]).to_pylist()
        if split_content(newest) == content:
            return runs[0]["run_id"]
    return None


def split_for_nightly(settings) -> str:
    """The newest split run if it covers exactly the current products, else a new split."""
    wh = open_warehouse(settings)
    rows = wh.query(
        """WITH latest AS (SELECT run_id FROM runs WHERE step = 'split' AND status = 'success'
                           ORDER BY finished_at DESC LIMIT 1),
                now_products AS (SELECT DISTINCT product_id FROM images_current WHERE status = 'ok'),
                split_products AS (SELECT product_id FROM splits WHERE run_id = (SELECT run_id FROM latest))
           SELECT (SELECT run_id FROM latest) AS run_id,
                  (SELECT count(*) FROM now_products) AS n_now,
                  (SELECT count(*) FROM split_products) AS n_split,
                  (SELECT count(*) FROM now_products JOIN split_products USING (product_id)) AS n_both"""
    ).to_pylist()[0]
    if rows["run_id"] and rows["n_now"] == rows["n_split"] == rows["n_both"]:
        return rows["run_id"]
    return make_split(settings)


make_split_task = task(make_split, name="split")
split_for_nightly_task = task(split_for_nightly, name="split-or-reuse", cache_policy=NO_CACHE)
