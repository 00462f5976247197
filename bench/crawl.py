"""Crawl throughput against the local demo shop: pages/s and images/s, next to the shop's own ceiling.

The ceiling is the same page + photo requests fetched by a plain thread pool of HTTP clients (no
parsing, no storing), measured in the same run; the crawl figures are quoted as a ratio of it.
Usage: .venv/bin/python bench/crawl.py [--products 100] [--image-size 256] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402

from bench.results_io import write_result  # noqa: E402
from core.settings import Settings  # noqa: E402
from crawlers import jdsite  # noqa: E402
from demo_shop.server import build_shop  # noqa: E402
from tasks.crawl import crawl, crawl_summary  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "crawl.json"


def shop_ceiling(shop, concurrency: int) -> dict:
    """Item pages and full-size photos fetched as fast as a thread pool can."""
    site = jdsite.SiteMap(shop.url)
    manifest = httpx.get(f"{shop.url}/_shop/manifest.json", timeout=30).json()
    pages = [site.item_url(p["sku"]) for p in manifest["products"]]
    photos = [site.image_url(g["jfs"]) for p in manifest["products"] for g in p["gallery"]]
    clients = [httpx.Client(timeout=30) for _ in range(concurrency)]

    def fetch(args):
        i, url = args
        return len(clients[i % concurrency].get(url).content)

    out = {}
    with ThreadPoolExecutor(concurrency) as pool:
        for name, urls in (("pages", pages), ("images", photos)):
            start = time.perf_counter()
            list(pool.map(fetch, enumerate(urls)))
            out[f"{name}_per_s"] = len(urls) / (time.perf_counter() - start)
    for c in clients:
        c.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--products", type=int, default=100)
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--concurrency", type=int, default=16)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        shop = build_shop(synthetic=args.products, home=Path(tmp), noise_rate=0.2, image_size=args.image_size)
        with shop:
            ceiling = shop_ceiling(shop, args.concurrency)
            settings = Settings.load(Path(tmp) / "home", {
                "crawl.download_delay_s": 0.0, "crawl.concurrent_requests": args.concurrency,
                "crawl.autothrottle_target_concurrency": float(args.concurrency)})
            run_id = crawl(settings, site=shop.url, keywords=["鞋"], categories=[], max_products=args.products)
            s = crawl_summary(settings, run_id)
    item_pages = s["stats"].get("shoesearch/pages/item", 0)
    crawl_rates = {"pages_per_s": s["pages"] / s["duration_s"], "images_per_s": s["images_written"] / s["duration_s"],
                   "item_pages_per_s": item_pages / s["duration_s"]}
    result = {
        "products": args.products, "image_size": args.image_size, "concurrency": args.concurrency,
        "crawl": {**crawl_rates, "pages": s["pages"], "images": s["images_written"], "duration_s": s["duration_s"]},
        "shop_ceiling": ceiling,
        "ratio_vs_ceiling": {"pages": item_pages / s["duration_s"] / ceiling["pages_per_s"],
                             "images": crawl_rates["images_per_s"] / ceiling["images_per_s"]},
    }
    print(f"{'measure':<34}{'crawl':>12}{'shop ceiling':>14}{'ratio':>8}")
    print(f"{'item pages/s (incl. price API)':<34}{crawl_rates['item_pages_per_s']:>12.1f}"
          f"{ceiling['pages_per_s']:>14.1f}{result['ratio_vs_ceiling']['pages']:>8.2f}")
    print(f"{'images/s (download+validate+store)':<34}{crawl_rates['images_per_s']:>12.1f}"
          f"{ceiling['images_per_s']:>14.1f}{result['ratio_vs_ceiling']['images']:>8.2f}")
    print(f"{'all pages/s (listings+items)':<34}{crawl_rates['pages_per_s']:>12.1f}")
    print(f"crawl: {s['pages']} pages, {s['images_written']} photos in {s['duration_s']:.1f} s "
          f"(spider time, excluding ~5 s process start)")
    write_result(result, RESULTS)


if __name__ == "__main__":
    main()
