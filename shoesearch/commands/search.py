"""Search commands: index, search, api, nightly, serve-flows."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("index", help="embed the catalog with a model, build a faiss index and make it current")
    p.add_argument("--model", help="trained model id or imagenet:<backbone> (default: newest trained model)")
    p.add_argument("--no-gate", action="store_true", help="switch even if the model's test Recall@1 is lower")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", help="the products that best match a photo")
    p.add_argument("photo", help="a photo file (JPEG, PNG, WebP ...)")
    p.add_argument("-k", type=int, default=None, help="products returned, 1..api.max_k (default: index.search_k)")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("api", help="serve the search API and upload page (FastAPI + uvicorn)")
    p.add_argument("--host", help="default: api.host (127.0.0.1)")
    p.add_argument("--port", type=int, help="default: api.port (8000)")
    p.set_defaults(func=cmd_api)

    p = sub.add_parser("nightly", help="run the nightly flow once: crawl, embed, denoise, train, evaluate, index")
    p.add_argument("--site", help="crawl this base URL instead of JD (e.g. the demo shop)")
    p.add_argument("--no-crawl", action="store_true", help="skip the crawl (use what is in the warehouse)")
    p.set_defaults(func=cmd_nightly)

    p = sub.add_parser("serve-flows", help="serve the nightly flow on its cron schedule and denoise for manual runs")
    p.set_defaults(func=cmd_serve_flows)

    p = sub.add_parser("demo", help="make demo: a synthetic shop, one nightly run on CPU, evaluation and a search")
    p.set_defaults(func=cmd_demo)


def cmd_index(args, settings) -> int:
    from tasks.gate import switch_index
    from tasks.index import build_index, index_lock

    with index_lock(settings):  # a concurrent build + switch (index, nightly) waits: see index_lock
        index_id = build_index(settings, model_spec=args.model)
        switch_index(settings, index_id, gate=not args.no_gate)
    return 0


def cmd_search(args, settings) -> int:
    import pyarrow as pa

    from serving.search import check_k, match_level, search
    from shoesearch.output import format_table
    from warehouse import require_home

    k = check_k(settings, args.k)  # refused as the HTTP API refuses it, before anything is loaded
    require_home(settings)  # read-only: a mistyped --home is reported, never created
    hits = search(settings, args.photo, k)
    cols = ["rank", "score", "level", "product_id", "title", "brand", "price", "url"]
    # The local photo file (this command runs where the data home is; the HTTP API serves /photos/ URLs).
    rows = [{**{c: getattr(h, c) for c in cols}, "photo_file": str(settings.images_dir / h.photo_path)} for h in hits]
    table = pa.Table.from_pylist(rows)
    shown = ["rank", "score", "level", "product_id", "title", "brand", "price"]  # the table: a row reads at a glance;
    print(format_table(table, args.format, shown=shown) if hits else "no products found")  # csv/json: every column
    if hits and args.format == "table":
        print(level_sentence(match_level(hits), hits[0]))
    return 0


def level_sentence(level: str | None, top) -> str:
    """What the best result's match level means, in one plain sentence."""
    from shoesearch.output import printable

    name = printable(top.title or top.product_id)  # a crawled title: control characters escaped
    if level == "same":
        return f"same product: {name} (this photo very likely shows it)"
    if level == "similar":
        return "similar products, none certainly the same: the closest ones are listed first"
    if level == "none":
        return "no match: the photo may not show a shoe; these are the closest products anyway"
    return "these are the closest products (this index cannot tell how close counts as the same product)"


def cmd_api(args, settings) -> int:
    from serving.api import serve
    from warehouse import require_home

    require_home(settings)  # a reader: a mistyped --home is reported, never created (nor by /health)
    host, port = args.host or settings.api.host, args.port or settings.api.port
    print(f"search page: http://{host}:{port}/   (POST /search with a 'photo' upload for JSON)")
    serve(settings, host=host, port=port)
    return 0


def cmd_nightly(args, settings) -> int:
    from flows.nightly import nightly
    from shoesearch.runtime import run_flow

    result = run_flow(nightly, settings, args.debug, site=args.site, crawl=not args.no_crawl)
    print("\n".join(["Nightly summary:", *(f"    {line}" for line in result["brief"])]))
    print(f"The evaluation table and every step's run: the `nightly` artifact in the Prefect UI; the index's "
          f"lineage: shoesearch lineage --index {result['index_id']}")
    return 0


def cmd_demo(args, settings) -> int:
    from shoesearch.demo import run_demo
    from shoesearch.runtime import set_overrides

    return run_demo(settings, cli_overrides=set_overrides(args.set), debug=args.debug)


def cmd_serve_flows(args, settings) -> int:
    from flows.serve import serve_flows
    from shoesearch.runtime import set_overrides

    serve_flows(settings, set_overrides(args.set))
    return 0

