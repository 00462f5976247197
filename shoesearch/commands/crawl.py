"""Crawl commands: ``shop serve`` (the demo shop), ``crawl`` (the Prefect flow), ``ingest DIR``."""

from __future__ import annotations


def register(sub) -> None:
    shop = sub.add_parser("shop", help="the JD-structured demo shop (local crawl target)")
    shop_sub = shop.add_subparsers(dest="shop_command", metavar="SUBCOMMAND")
    p = shop_sub.add_parser("serve", help="serve a catalog folder or synthetic products as a JD-like site")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--catalog", metavar="DIR", help="DIR/<product>/<photos> (+ optional labels.csv, products.json)")
    src.add_argument("--synthetic", type=int, metavar="N", help="N generated shoe products (default 200)")
    p.add_argument("--port", type=int, help="port (default: settings crawl.shop_port)")
    p.add_argument("--host", help="address (default: settings crawl.shop_host, loopback)")
    p.add_argument("--noise-rate", type=float, default=None,
                   help="fraction of gallery photos that are noise (synthetic default 0.2, catalog default 0)")
    p.add_argument("--faults", action="append", default=[], metavar="NAME[=N]",
                   help="misbehave for tests, e.g. captcha=5,5xx=2,layout=2 (see docs/crawling.md)")
    p.add_argument("--page-size", type=int, help="items per result page (default: crawl.shop_page_size = 60)")
    p.add_argument("--image-size", type=int, default=256, help="synthetic photo side in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_shop_serve)
    shop.set_defaults(func=lambda args, settings: (shop.print_help(), 2)[1])

    p = sub.add_parser(
        "crawl", help="crawl JD (or --site, e.g. the demo shop) into products/images",
        description="Crawl JD (or --site) into products/images. What is crawled: the --keyword and --category "
                    "values given, and only those (--keyword alone crawls no category, --category alone no "
                    "keyword); with neither, crawl.keywords and crawl.categories (settings file, environment, "
                    "--set). Exits 3 when a captcha, login wall or robots.txt stopped the crawl early.")
    p.add_argument("--site", help="one base URL for every JD host, e.g. http://127.0.0.1:8765 "
                                  "(nothing off this host:port is fetched)")
    p.add_argument("--keyword", action="append",
                   help="search keyword (repeatable). Given alone, only these keywords are crawled; "
                        "with neither --keyword nor --category: crawl.keywords + crawl.categories")
    p.add_argument("--category", action="append",
                   help="JD category ids like 1318,12099,9756 (repeatable). Given alone, only these "
                        "categories are crawled")
    p.add_argument("--max-products", type=int)
    p.add_argument("--max-pages", type=int)
    p.add_argument("--format", choices=["table", "csv", "json"], default="table",
                   help="the summary as text (default), its per keyword/category rows as CSV, or all of it as JSON")
    p.set_defaults(func=cmd_crawl)

    p = sub.add_parser("ingest", help="load a local catalog folder DIR/<product>/<photos> into products/images")
    p.add_argument("dir")
    p.add_argument("--name", help="catalog name used in product ids (default: the folder name)")
    p.set_defaults(func=cmd_ingest)


def cmd_shop_serve(args, settings) -> int:
    from demo_shop.server import build_shop

    c = settings.crawl
    synthetic = args.synthetic if args.synthetic is not None or args.catalog else 200
    noise = args.noise_rate if args.noise_rate is not None else (0.0 if args.catalog else 0.2)
    shop = build_shop(catalog=args.catalog, synthetic=None if args.catalog else synthetic, home=settings.home,
                      noise_rate=noise, faults=args.faults, host=args.host or c.shop_host,
                      port=c.shop_port if args.port is None else args.port,
                      page_size=args.page_size or c.shop_page_size, seed=args.seed, image_size=args.image_size)
    n = len(shop.state.products)
    photos = sum(len(p.gallery) for p in shop.state.products)
    print(f"demo shop: {n} products, {photos} photos from {shop.state.source}")
    print(f"serving on {shop.url}  (ground truth: {shop.url}/_shop/manifest.json)")
    print(f"crawl it:  shoesearch crawl --site {shop.url}")
    try:
        shop.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        shop.close()
    return 0


def cmd_crawl(args, settings) -> int:
    from flows.crawl import crawl_flow
    from shoesearch.runtime import run_flow
    from tasks.crawl import crawl_params, crawl_summary

    # Validate before starting Prefect (a bad argument should not cost a server start).
    params = crawl_params(settings, args.site, args.keyword, args.category, args.max_products, args.max_pages)
    run_id = run_flow(crawl_flow, settings, args.debug, **params)
    s = crawl_summary(settings, run_id)
    if args.format == "table":
        print(f"crawl run {run_id}: {s['finish_reason']}; {s['products_written']} products written, "
              f"{s['products_unchanged']} unchanged, {s['images_written']} photos {s['images_by_status']}")
        _print_outcome(s)
    else:
        _print_summary(run_id, s, args.format)
    if s.get("stop_message"):
        import sys

        print("run the same command again to resume.", file=sys.stdout if args.format == "table" else sys.stderr)
        return 3
    return 0


def _print_outcome(s: dict) -> None:
    """Per keyword/category counts, then one line saying why the crawl ended where it did."""
    from crawlers.outcome import shortfall_reason, sources_table

    if s.get("sources"):
        print(sources_table(s))
    print(shortfall_reason(s))


def _print_summary(run_id: str, s: dict, fmt: str) -> None:
    """``--format json``: the whole summary (and why the crawl ended); ``csv``: a row per keyword/category."""
    import json

    import pyarrow as pa

    from crawlers.outcome import shortfall_reason
    from shoesearch.output import format_table

    if fmt == "json":
        print(json.dumps({"run_id": run_id, **s, "outcome": shortfall_reason(s)}, indent=1, ensure_ascii=False))
    else:
        print(format_table(pa.Table.from_pylist([{"run_id": run_id, **r} for r in s.get("sources", [])]), fmt))


def cmd_ingest(args, settings) -> int:
    from tasks.ingest import ingest_catalog

    run_id = ingest_catalog(settings, args.dir, name=args.name)
    print(f"ingest run {run_id}")
    return 0
