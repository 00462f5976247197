"""API load: searches at concurrency 1, 4 and 8 through the real API against an index of >= 10k photos, next to
the bare search call measured in the same run (the API's overhead as a ratio).

    .venv/bin/python bench/api.py [--photos 10000] [--products 48] [--requests 400] [--concurrency 1 4 8]
    .venv/bin/python bench/api.py --quick    # a small run proving the script works (writes api-quick.json)

The index: a synthetic catalog (``--products``, 800 px JPEGs as JD serves them) ingested and indexed with the
ImageNet embedder, then grown to ``--photos`` rows with noisy copies of its vectors (each copy a product of its
own: cosine ~0.9 to the photo it copies), written and switched in as an index like any other (exact search up
to ``index.exact_max_vectors``, as the project serves this size). The server is ``shoesearch api``'s own
(``serving.api.server_config``: uvicorn, its keep-alive and connection limits) in a separate process on
loopback; the clients (one thread and one keep-alive connection each) POST the catalog's JPEGs to ``/search``
(k = 10). At each concurrency: p50 / p99 latency and requests per second, after a warm-up.

The bare call is what the API calls per request, in this process with the server stopped: the header check,
the decode (a worker process, as the API does it), the embedding and the faiss search (``Searcher.search``),
timed the same way at the same concurrencies; ``search_vectors`` alone (faiss + one result per product) too.
Client and server share the machine's cores: the figures are the machine's, and noisy on a shared one.
Prints a table, writes bench/results/api.json (``--quick``: api-quick.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[0] = str(REPO)  # the repo, not bench/

from bench.api_search import free_port  # noqa: E402
from bench.results_io import write_result  # noqa: E402

K = 10
COPY_NOISE = 0.45  # norm of the noise added to a unit vector per copy: cosine ~0.9 to the photo copied


def build_home(root: Path, products: int, image_size: int):
    """A synthetic catalog ingested and indexed (ImageNet embedder, every photo); (settings, query JPEGs)."""
    from core.settings import Settings
    from demo_shop.synthetic import generate_catalog
    from tasks.gate import switch_index
    from tasks.index import build_index
    from tasks.ingest import ingest_catalog

    catalog = generate_catalog(root / "cat", products, noise_rate=0.0, seed=0, image_size=image_size)
    settings = Settings.load(home=root / "home", overrides={"index.index_all_photos": True})  # no denoise needed
    ingest_catalog(settings, catalog, name="bench")
    switch_index(settings, build_index(settings), gate=False)
    return settings, [p.read_bytes() for p in sorted(catalog.rglob("*.jpg"))]


def grown(vectors: np.ndarray, mapping, products, target: int, seed: int = 0):
    """(vectors, mapping, products) with noisy copies of every photo until ``target`` rows; copy c of a photo
    belongs to product ``<id>~c`` (a product of its own, its title marked)."""
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    copies = max(0, -(-target // len(vectors)) - 1)
    parts, maps, prods = [vectors], [mapping.select(["image_id", "product_id", "path"])], [products]
    for c in range(1, copies + 1):
        noise = rng.standard_normal(vectors.shape).astype(np.float32)
        noisy = vectors + COPY_NOISE * noise / np.linalg.norm(noise, axis=1, keepdims=True)
        parts.append(noisy / np.linalg.norm(noisy, axis=1, keepdims=True))
        m = maps[0]
        maps.append(pa.table({"image_id": [f"{x}~{c}" for x in m.column("image_id").to_pylist()],
                              "product_id": [f"{x}~{c}" for x in m.column("product_id").to_pylist()],
                              "path": m.column("path")}))
        p = products.to_pylist()
        prods.append(pa.Table.from_pylist([{**r, "product_id": f"{r['product_id']}~{c}",
                                            "title": f"{r['title'] or r['product_id']} ({c})"} for r in p],
                                           schema=products.schema))
    out = np.ascontiguousarray(np.concatenate(parts)[:target], dtype=np.float32)
    mapping = pa.concat_tables(maps).slice(0, len(out))
    mapping = mapping.append_column("row", pa.array(np.arange(len(out), dtype=np.int64)))
    return out, mapping, pa.concat_tables(prods)


def grow_index(settings, target: int) -> dict:
    """Write the current index grown to ``target`` rows as a new index and switch it in; its description."""
    import faiss
    import pyarrow.parquet as pq

    from index.faiss_build import build_faiss, choose_kind
    from index.store import MAPPING_FILE, META_FILE, PRODUCTS_FILE, current_index, write_index_dir
    from tasks.gate import switch_index
    from warehouse import open_warehouse, start_run
    from warehouse.runs import now

    info = current_index(settings)
    base = faiss.read_index(str(info.path / "index.faiss"))
    vectors, mapping, products = grown(base.reconstruct_n(0, base.ntotal),
                                       pq.read_table(info.path / MAPPING_FILE).sort_by("row"),
                                       pq.read_table(info.path / PRODUCTS_FILE), target)
    kind = choose_kind(len(vectors), settings.index)
    index = build_faiss(vectors, kind, settings.index, use_gpu=False)
    meta = json.loads((info.path / META_FILE).read_text())
    note = f"bench/api.py: {base.ntotal} photos grown to {len(vectors)} with noisy copies"
    with start_run(open_warehouse(settings), step="index", params={"bench": "api", "photos": len(vectors)},
                   inputs=[info.run_id]) as run:
        path = write_index_dir(settings, run.run_id, index, mapping, products,
                               {**meta, "index_id": run.run_id, "kind": kind, "n_vectors": len(vectors),
                                "n_rows": len(vectors), "full_build": None, "note": note})
        run.write("indexes", [{"index_id": run.run_id, "model_id": meta["model_id"], "kind": kind,
                               "path": str(path.relative_to(settings.home)), "n_vectors": len(vectors),
                               "dim": int(vectors.shape[1]), "recall_vs_exact": 1.0 if kind == "flat_ip" else None,
                               "status": "built", "note": note, "created_at": now()}])
    switch_index(settings, run.run_id, gate=False)
    return {"index_id": run.run_id, "photos": len(vectors), "catalog_photos": int(base.ntotal),
            "products": products.num_rows, "kind": kind, "dim": int(vectors.shape[1]), "model_id": meta["model_id"]}


def load(call, photos: list[bytes], concurrency: int, requests: int, warm: int = 3) -> dict:
    """``call(photo)`` from ``concurrency`` threads until ``requests`` calls are done (after ``warm`` calls per
    thread): latency p50 / p99 / mean (ms), calls per second over the wall time, errors."""
    done, lock, seconds, errors, failed = [0], threading.Lock(), [], [0], []
    warmed = threading.Barrier(concurrency + 1)  # the clock starts when every thread is warm

    def worker(i: int) -> None:
        state = {}
        try:
            run_worker(i, state)
        finally:  # close this thread's keep-alive connection: the server caps the connections one address holds
            if "client" in state:
                state["client"].close()

    def run_worker(i: int, state: dict) -> None:
        try:
            for w in range(warm):
                call(photos[(i + w) % len(photos)], state)
        except Exception as exc:  # noqa: BLE001 - reported below; the other threads must not wait for this one
            failed.append(f"{type(exc).__name__}: {exc}")
            done[0] = requests
        warmed.wait(timeout=600)
        while True:
            with lock:
                n = done[0]
                done[0] += 1
            if n >= requests:
                return
            started = time.perf_counter()
            try:
                call(photos[n % len(photos)], state)
            except Exception:  # noqa: BLE001 - counted, not fatal: an overloaded server answers errors
                with lock:
                    errors[0] += 1
            with lock:
                seconds.append(time.perf_counter() - started)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    warmed.wait(timeout=600)
    started = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    if failed:
        raise SystemExit(f"bench/api.py: a warm-up call failed: {failed[0]}")
    ms = np.array(seconds) * 1000
    return {"requests": len(ms), "errors": errors[0], "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2), "mean_ms": round(float(ms.mean()), 2),
            "req_per_s": round(len(ms) / wall, 2)}


def http_call(base: str):
    import httpx

    def call(photo: bytes, state: dict) -> None:
        client = state.setdefault("client", httpx.Client(timeout=120))  # one keep-alive connection per thread
        r = client.post(f"{base}/search", params={"k": K}, files={"photo": ("q.jpg", photo, "image/jpeg")})
        r.raise_for_status()
    return call


def start_server(home: Path) -> tuple[subprocess.Popen, str]:
    """``shoesearch api``'s server (``serving.api.server_config``) in its own process; (process, base URL) once
    it answers a search."""
    import httpx

    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(home), str(port)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"bench/api.py: the server exited: {proc.stderr.read().decode()[-500:]}")
        try:
            if httpx.get(base + "/health", timeout=5).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise SystemExit("bench/api.py: the server did not start in 300 s")


def serve(home: str, port: str) -> None:
    import uvicorn

    from core.settings import Settings
    from serving.api import server_config

    settings = Settings.load(home=Path(home))
    uvicorn.Server(server_config(settings, host="127.0.0.1", port=int(port), log_level="warning")).run()


def bare_measure(settings, photos: list[bytes], levels: list[int], requests: int) -> tuple[dict, dict]:
    """({concurrency: load} of the bare search call, ``search_vectors`` alone at concurrency 1)."""
    from index.store import current_index
    from serving.search import Searcher, check_photo, upload_limits

    searcher = Searcher(settings, current_index(settings).index_id)
    limits, slots = upload_limits(settings), settings.api.max_decodes

    def call(photo: bytes, state: dict) -> None:
        check_photo(photo, limits)
        searcher.search(searcher.photo_tensor(photo, limits, slots), K)

    bare = {c: load(call, photos, c, requests) for c in levels}
    vectors = [searcher.embed_tensors(searcher.photo_tensor(p, limits, slots).unsqueeze(0)) for p in photos[:50]]
    faiss_only = load(lambda v, state: searcher.search_vectors(v, K), vectors, 1, requests)
    return bare, faiss_only


def measure(args) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-api-") as tmp:
        settings, photos = build_home(Path(tmp), args.products, args.image_size)
        index = grow_index(settings, args.photos)
        proc, base = start_server(settings.home)
        try:
            api = {c: load(http_call(base), photos, c, args.requests) for c in args.concurrency}
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        bare, faiss_only = bare_measure(settings, photos, args.concurrency, args.requests)
    rows = [{"concurrency": c, "api": api[c], "bare": bare[c],
             "p50_ratio": round(api[c]["p50_ms"] / bare[c]["p50_ms"], 3),
             "req_per_s_ratio": round(api[c]["req_per_s"] / bare[c]["req_per_s"], 3)} for c in args.concurrency]
    return {"bench": "api", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, python {platform.python_version()}",
            "quick": args.quick, "index": index, "query_photos": len(photos), "query_px": args.image_size, "k": K,
            "requests_per_level": args.requests, "levels": rows, "search_vectors": faiss_only}


def print_table(r: dict) -> None:
    i = r["index"]
    print(f"\napi: {i['photos']} photos ({i['catalog_photos']} embedded + noisy copies), {i['kind']}, {i['dim']}-d; "
          f"{r['query_photos']} query JPEGs of {r['query_px']} px, k={r['k']}, {r['requests_per_level']} requests each")
    print(f"{'conc.':>5} {'API p50':>8} {'p99':>8} {'req/s':>7} | {'bare p50':>8} {'p99':>8} {'req/s':>7} | "
          f"{'p50 API/bare':>12} {'req/s API/bare':>14}")
    for x in r["levels"]:
        a, b = x["api"], x["bare"]
        print(f"{x['concurrency']:>5} {a['p50_ms']:>8.1f} {a['p99_ms']:>8.1f} {a['req_per_s']:>7.1f} | "
              f"{b['p50_ms']:>8.1f} {b['p99_ms']:>8.1f} {b['req_per_s']:>7.1f} | {x['p50_ratio']:>12.2f} "
              f"{x['req_per_s_ratio']:>14.2f}")
    v = r["search_vectors"]
    print(f"search_vectors alone (faiss + one result per product): p50 {v['p50_ms']} ms, p99 {v['p99_ms']} ms")


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        serve(sys.argv[2], sys.argv[3])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=10_000, help="index rows (noisy copies beyond the catalog's)")
    ap.add_argument("--products", type=int, default=48, help="synthetic products embedded for real")
    ap.add_argument("--image-size", type=int, default=800, help="side of the catalog's (and queries') JPEGs")
    ap.add_argument("--requests", type=int, default=400, help="timed requests per concurrency")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--quick", action="store_true", help="a small run: 2000 photos, 6 products, 256 px, 20 requests")
    ap.add_argument("--out", help="JSON file (default: api.json, api-quick.json with --quick)")
    args = ap.parse_args()
    if args.quick:
        args.photos, args.products, args.image_size, args.requests = 2000, 6, 256, 20
    if args.photos < 1 or args.requests < 1 or min(args.concurrency) < 1:
        ap.error("--photos, --requests and --concurrency must be positive")
    result = measure(args)
    print_table(result)
    write_result(result, args.out or ("api-quick.json" if args.quick else "api.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
