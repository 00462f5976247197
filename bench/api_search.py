"""Search latency through the real API (`shoesearch api`: HTTP upload, header checks, decode, embed, faiss,
JSON), for this checkout and, in the same run, a baseline source tree (e.g. a `git worktree` of an older
commit), both serving one home. It answers "does the hardening (decode in a bounded worker process, the
per-request index check) slow a normal search?".

    git worktree add /tmp/base <commit>
    .venv/bin/python bench/api_search.py [--baseline-tree /tmp/base] [--products 24] [--queries 60] [--rounds 2]

Queries are the catalog's own 800x800 JPEGs, sent one after another (a shopper's single search);
the servers run one at a time, alternating rounds so that machine load falls on both alike. Prints a
table, writes bench/results/api_search.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[0] = str(REPO)  # the repo, not bench/

from bench.results_io import write_result  # noqa: E402


def build_home(root: Path, products: int) -> tuple[Path, list[bytes]]:
    """A synthetic catalog ingested and indexed with the ImageNet embedder; returns (home, query photos)."""
    from core.settings import Settings
    from demo_shop.synthetic import generate_catalog
    from tasks.gate import switch_index
    from tasks.index import build_index
    from tasks.ingest import ingest_catalog

    catalog = generate_catalog(root / "cat", products, noise_rate=0.0, seed=0, image_size=800)
    settings = Settings.load(home=root / "home", overrides={"index.index_all_photos": True})  # no denoise needed
    ingest_catalog(settings, catalog, name="bench")
    switch_index(settings, build_index(settings))
    photos = sorted(p for p in catalog.rglob("*.jpg"))
    return settings.home, [p.read_bytes() for p in photos]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_api(tree: Path, home: Path) -> tuple[subprocess.Popen, str]:
    """`python -m shoesearch api` with ``tree`` first on the path (its code, this venv's libraries)."""
    import httpx

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(tree)}
    proc = subprocess.Popen([sys.executable, "-m", "shoesearch", "--home", str(home), "api", "--port", str(port)],
                            cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/", timeout=2).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.2)
        if proc.poll() is not None:
            raise SystemExit(f"api from {tree} exited: {proc.stderr.read().decode()[-500:]}")
    proc.kill()
    raise SystemExit(f"api from {tree} did not start")


def time_queries(base: str, photos: list[bytes], n: int) -> list[float]:
    import httpx

    with httpx.Client(timeout=60) as client:
        for photo in photos[:3]:  # warm-up: index load, first decode worker, torch threads
            client.post(f"{base}/search", files={"photo": ("q.jpg", photo, "image/jpeg")}).raise_for_status()
        seconds = []
        for i in range(n):
            started = time.perf_counter()
            r = client.post(f"{base}/search", files={"photo": ("q.jpg", photos[i % len(photos)], "image/jpeg")})
            seconds.append(time.perf_counter() - started)
            r.raise_for_status()
    return seconds


def summary(seconds: list[float]) -> dict:
    ms = sorted(s * 1000 for s in seconds)
    return {"queries": len(ms), "p50_ms": statistics.median(ms), "p90_ms": ms[int(0.9 * (len(ms) - 1))],
            "mean_ms": statistics.fmean(ms), "queries_per_s": 1000 / statistics.fmean(ms)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline-tree", type=Path, help="source tree of a baseline commit, served in the same run")
    ap.add_argument("--products", type=int, default=24)
    ap.add_argument("--queries", type=int, default=60, help="timed queries per server per round")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    trees = {"this checkout": REPO, **({"baseline": args.baseline_tree.resolve()} if args.baseline_tree else {})}
    times: dict[str, list[float]] = {name: [] for name in trees}
    with tempfile.TemporaryDirectory() as tmp:
        home, photos = build_home(Path(tmp), args.products)
        for _ in range(args.rounds):
            for name, tree in reversed(list(trees.items())):
                proc, base = start_api(tree, home)
                try:
                    times[name] += time_queries(base, photos, args.queries)
                finally:
                    proc.terminate()
                    proc.wait(timeout=30)
    rows = {name: summary(seconds) for name, seconds in times.items()}
    ratio = rows["this checkout"]["p50_ms"] / rows["baseline"]["p50_ms"] if "baseline" in rows else None
    print(f"{'server':<16}{'queries':>8}{'p50 ms':>9}{'p90 ms':>9}{'mean ms':>9}{'q/s':>7}")
    for name, r in rows.items():
        print(f"{name:<16}{r['queries']:>8}{r['p50_ms']:>9.1f}{r['p90_ms']:>9.1f}{r['mean_ms']:>9.1f}"
              f"{r['queries_per_s']:>7.1f}")
    if ratio is not None:
        print(f"p50 this checkout / baseline: {ratio:.3f}")
    write_result({"products": args.products, "photos": len(photos), "rounds": args.rounds,
                  "baseline_tree": args.baseline_tree and str(args.baseline_tree), "machine": platform.processor() or platform.machine(),
                  "cpus": os.cpu_count(), "servers": rows, "p50_ratio": ratio}, "api_search.json")


if __name__ == "__main__":
    main()
