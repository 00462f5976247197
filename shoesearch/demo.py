"""``shoesearch demo`` (what ``make demo`` runs): the whole pipeline once, on CPU, in a few minutes.

It generates a small synthetic shoe shop, serves it on a free loopback port (JD's page structure, so
the real Scrapy spider crawls it), runs the ``nightly`` Prefect flow once end to end (crawl -> embed ->
denoise -> split -> k-means -> train -> evaluate -> index -> gated switch), then prints the evaluation
table and one search by photo with a *new* photo of a cataloged product (a view the crawl never saw),
and says where the results are and how to continue. The shop is stopped at the end, also on errors and
Ctrl-C. Running it again on the same home is an incremental nightly: nothing new is crawled or
embedded, training warm-starts from the current model and the gate decides whether it is switched in.

The defaults in ``core/settings.py`` are for real JD and a real catalog; the demo shrinks the
work with ``DEMO_OVERRIDES`` below (``--set`` on the command line still wins).
"""

from __future__ import annotations

import os
import random
import shutil
import sys
import time
from pathlib import Path

DEMO_PRODUCTS = 40  # synthetic products in the demo shop (~8 photos each, a fifth of them noise)
DEMO_NOISE_RATE = 0.2  # fraction of gallery photos that are noise (insoles, boxes, size charts ...)
DEMO_PHOTO_PX = 128  # side of the generated photos: small photos keep CPU training to about a minute
DEMO_SEED = 0  # which synthetic designs the shop sells
DEMO_QUERY_VIEW = "three_quarter"  # the example search uses a fresh view of this kind (not a front view)
DEMO_SEARCH_K = 5  # products shown for the example search
DEMO_EVAL_COLUMNS = ["variant", "photos", "split", "queries", "recall_at_1", "recall_at_5", "recall_at_10",
                     "mean_ap"]

# Demo-only settings: everything smaller and faster than the defaults, nothing else changed.
DEMO_OVERRIDES = {
    # The loopback shop needs no politeness delays (the JD defaults made 20 products take 2.5 minutes).
    "crawl.keywords": "鞋",
    "crawl.categories": "",
    "crawl.max_products": DEMO_PRODUCTS,
    "crawl.download_delay_s": 0.0,
    "crawl.autothrottle_max_delay_s": 0.5,
    "crawl.concurrent_requests": 16,
    "crawl.autothrottle_target_concurrency": 16.0,
    "crawl.retry_backoff_s": 0.05,
    "crawl.commit_every": 10,
    "crawl.progress_every_s": 1.0,
    # Small photos (loader workers stay at their default: the demo runs what users run).
    "embed.image_size": DEMO_PHOTO_PX,
    "train.image_size": DEMO_PHOTO_PX,
    # A small NetVLAD: K=16 clusters, 128-d output, at most 5 epochs (the frozen-stage cache makes them
    # cheap at 128 px; validation peaks within the first few), 5 hard negatives from a 100-photo pool
    # (training's cost grows with the tuple: 1 + 2 + 5 photos), early stop after 2 epochs without gain,
    # a faster learning rate: `make demo` in about two minutes on 2 quiet cores.
    "train.clusters": 16,
    "train.descriptor_dim": 128,
    "train.kmeans_descriptors": 5_000,
    "train.kmeans_images": 200,
    "train.kmeans_iterations": 10,
    "train.epochs": 5,
    "train.patience": 2,
    "train.lr": 3e-4,
    "train.negatives_pool": 100,
    "train.hard_negatives": 5,
    "train.max_positives": 2,
    "train.cache_refresh_queries": 128,
    # A failed step of the demo should fail now, not retry a loopback shop for minutes.
    "schedule.task_retries": 0,
    "schedule.retry_delay_s": 0,
}


def _say(message: str) -> None:
    print(f"\n==> {message}", flush=True)


def demo_product_ids(n_products: int, seed: int) -> list[tuple[int, str]]:
    """(design index, warehouse product id) of every product the demo shop sells."""
    from demo_shop.synthetic import design_for, product_metadata

    out = []
    for i in range(n_products):
        index = seed * 100_000 + i
        out.append((index, f"jd:{product_metadata(index, design_for(index))['sku']}"))
    return out


def query_photo(settings, design_index: int, path: Path) -> Path:
    """A new photo of product ``design_index`` from ``DEMO_QUERY_VIEW`` (fresh framing and lighting)."""
    from demo_shop.synthetic import design_for, render_view

    rng = random.Random(f"demo-query-{design_index}")
    image = render_view(design_for(design_index), DEMO_QUERY_VIEW, DEMO_PHOTO_PX, rng)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, "JPEG")
    return path


def pick_query_product(wh, products: list[tuple[int, str]]) -> tuple[int, str]:
    """A product of the newest split's test set (never trained on), else the first one."""
    test = {r["product_id"] for r in wh.query(
        """SELECT product_id FROM splits WHERE split = 'test' AND run_id =
           (SELECT run_id FROM runs WHERE step = 'split' AND status = 'success' ORDER BY finished_at DESC LIMIT 1)"""
    ).to_pylist()}
    indexed = {r["product_id"] for r in wh.query("SELECT DISTINCT product_id FROM images_current").to_pylist()}
    for index, product_id in products:
        if product_id in test and product_id in indexed:
            return index, product_id
    return products[0]


def run_demo(settings, cli_overrides: dict | None = None, debug: bool = False) -> int:
    """The demo on ``settings.home``; ``cli_overrides`` (from ``--set``) win over ``DEMO_OVERRIDES``."""
    from core.settings import Settings

    started = time.monotonic()
    settings = Settings.load(home=settings.home, overrides={**DEMO_OVERRIDES, **(cli_overrides or {})})
    first_run = not (settings.indexes_dir / "CURRENT").exists()
    print(f"shoesearch demo: data home {settings.home} ({'first run' if first_run else 'again: an incremental nightly'})")
    result = _nightly_on_demo_shop(settings, debug)
    photo = _show_results(settings, result)
    _say_where_things_are(settings, result, photo, time.monotonic() - started)
    return 0


def _nightly_on_demo_shop(settings, debug: bool) -> dict:
    """Steps 1-2: generate and serve the shop, run ``nightly`` on it; the shop is stopped however it ends."""
    from demo_shop.server import DemoShop, load_catalog, synthetic_catalog
    from flows.nightly import nightly
    from shoesearch.runtime import run_flow
    from tasks.crawl import crawl_params

    _say(f"1/4 demo shop: {DEMO_PRODUCTS} synthetic shoe products, {DEMO_PHOTO_PX} px photos")
    t = time.monotonic()
    folder = synthetic_catalog(settings.home, DEMO_PRODUCTS, DEMO_NOISE_RATE, seed=DEMO_SEED, image_size=DEMO_PHOTO_PX)
    products = load_catalog(folder)
    shop = DemoShop(products, host=settings.crawl.shop_host, port=0, page_size=settings.crawl.shop_page_size,
                    source=str(folder))
    shop.start()
    try:
        photos = sum(len(p.gallery) for p in products)
        print(f"    {len(products)} products, {photos} photos from {folder} ({time.monotonic() - t:.1f} s)")
        print(f"    serving on {shop.url} (stopped when the demo ends)")
        crawl_params(settings, site=shop.url)  # bad --set crawl values fail here, before Prefect starts

        _say("2/4 nightly flow (Prefect): crawl -> embed -> denoise -> train -> evaluate -> index -> switch")
        t = time.monotonic()
        result = run_flow(nightly, settings, debug, site=shop.url)
        print(f"    nightly finished in {time.monotonic() - t:.0f} s:")
        print("\n".join(f"        {line}" for line in result["brief"]))
    finally:
        shop.stop()
        print(f"    demo shop on {shop.url} stopped", flush=True)
    return result


def _show_results(settings, result: dict) -> Path:
    """Steps 3-4: the evaluation table and one search by a new photo; returns the query photo."""
    import pyarrow as pa

    from serving.search import search
    from shoesearch.output import format_table
    from warehouse import open_warehouse

    wh = open_warehouse(settings)
    _say("3/4 evaluation on the test split (table `evaluations`; imagenet = off-the-shelf baseline)")
    evals = wh.query(f"SELECT {', '.join(DEMO_EVAL_COLUMNS)} FROM evaluations WHERE run_id = ? ORDER BY variant",
                     [result["steps"]["evaluate"]])
    print(format_table(evals))

    _say(f"4/4 example search: a new {DEMO_QUERY_VIEW.replace('_', '-')} photo of a cataloged test product")
    index, product_id = pick_query_product(wh, demo_product_ids(DEMO_PRODUCTS, DEMO_SEED))
    photo = query_photo(settings, index, settings.reports_dir / "demo-query.jpg")
    hits = search(settings, photo, DEMO_SEARCH_K)
    level = getattr(hits[0], "level", None) if hits else None
    cols = ["rank", "score", *(["level"] if level else []), "product_id", "title", "price"]
    print(f"    query photo: {photo} (product {product_id}; the crawl never saw this photo)")
    print(format_table(pa.Table.from_pylist([{c: getattr(h, c) for c in cols} for h in hits])))
    rank = next((h.rank for h in hits if h.product_id == product_id), None)
    where = "ranked first" if rank == 1 else f"ranked {rank}" if rank else f"not in the top {DEMO_SEARCH_K}"
    print(f"    the right product ({product_id}) is {where}")
    if level:
        print(f"    match level: {level} ({LEVEL_SAID.get(level, level)}); `search` gives this photo the same level")
    return photo


# What the top result's match level means (``serving.search``: calibrated on the index's own photos).
LEVEL_SAID = {"same": "the index is confident it is the same product",
              "similar": "a similar product; the index is not confident it is the same one",
              "none": "the index finds no product close enough to call a match"}


def command_name() -> str:
    """How to type this command in the user's shell: ``shoesearch`` when that is on PATH and is this very
    install (an activated venv), else the path of the venv's script (``.venv/bin/shoesearch`` from the repo)."""
    script = Path(sys.executable).parent / "shoesearch"
    found = shutil.which("shoesearch")
    if not script.exists() or (found and Path(found).resolve() == script.resolve()):
        return "shoesearch"
    relative = os.path.relpath(script)
    return relative if not relative.startswith("..") else str(script)


def _say_where_things_are(settings, result: dict, photo: Path, seconds: float) -> None:
    cmd = f"{command_name()} --home {settings.home}"
    activate = ("" if command_name() == "shoesearch" else
                f"\n    (or `source {Path(command_name()).parent}/activate` once, then type `shoesearch ...`)")
    print(f"""
Done in {seconds:.0f} s. Where things are:
    warehouse (Parquet tables)  {settings.warehouse_dir}
    reports (evaluation, denoise contact sheets, query photo)  {settings.reports_dir}
    models                      {settings.models_dir}
    faiss indexes (CURRENT)     {settings.indexes_dir}
    crawl logs and summaries    {settings.crawl_dir}
    Prefect flow run and its `nightly` artifact  {result.get('flow_run_name') or 'nightly-' + settings.home.name}:
                                `prefect server start`, then http://127.0.0.1:4200
Next:{activate}
    {cmd} api                # search page on http://{settings.api.host}:{settings.api.port}/
    {cmd} search {photo}
    {cmd} tables
    {cmd} sql "SELECT variant, recall_at_1, mean_ap FROM evaluations"
    {cmd} lineage --index {result['index_id']}
    {cmd} demo               # again: an incremental nightly on the same shop""")
    sys.stdout.flush()
