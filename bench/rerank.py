"""Re-ranking after the first search: alpha query expansion and database-side augmentation, measured.

Real shoe photos (default ``../shared/data/footwear-dev``), the descriptor the nightly serves there (the
ImageNet GeM descriptor of the default backbone: bench/REPORT.md "Real catalog"). Protocol: in
each product with at least two photos, one photo per seed-chosen position is the *query* and the others are the
*gallery* (a shopper's photo is never in the catalog, so nothing a query contributes can leak into the
gallery). Scored: photo-level Recall@1/5 and mAP, and product-level Recall@1/5 (a product's best photo votes).

* ``none``: the search as it is (inner product of L2-normalised vectors);
* ``alpha-QE k, a``: the query is replaced by the normalised sum of itself and its ``k`` nearest gallery
  vectors weighted by ``similarity ** a`` (Radenovic et al.), then searched again;
* ``DBA k``: every gallery vector is replaced by the normalised weighted sum of itself and its ``k`` nearest
  gallery neighbours, at index time;
* ``DBA k + alpha-QE``: both.

    .venv/bin/python bench/rerank.py [--dataset footwear-dev] [--seeds 0 1 2] [--set key=value ...]
Writes bench/results/rerank.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])  # the repo, not bench/

from bench.results_io import write_result  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
VARIANTS = [("none", 0, 0, 0.0), ("alpha-QE 1, a=3", 0, 1, 3.0), ("alpha-QE 2, a=3", 0, 2, 3.0),
            ("DBA 1", 1, 0, 0.0), ("DBA 2", 2, 0, 0.0), ("DBA 1 + alpha-QE 1, a=3", 1, 1, 3.0)]


def descriptors(dataset: Path, home: Path, overrides: dict):
    """(N x D ImageNet GeM descriptors, product label per row) of the catalog's genuine photos."""
    import torch

    from bench.denoise_rules import embedded_photos

    ids, vectors, rows = embedded_photos(dataset, home, overrides)
    keep = [i for i, image_id in enumerate(ids) if not rows[image_id]["is_noise"]]
    products = {p: n for n, p in enumerate(sorted({rows[ids[i]]["product_id"] for i in keep}))}
    return torch.tensor(vectors[keep]), torch.tensor([products[rows[ids[i]]["product_id"]] for i in keep])


def expand(vectors, gallery, k: int, alpha: float):
    """Each row of ``vectors`` plus its ``k`` nearest ``gallery`` rows weighted by similarity**alpha, normalised
    (with ``gallery is vectors`` the row itself is its first neighbour and is skipped: DBA)."""
    import torch

    if k == 0:
        return vectors
    sims = vectors @ gallery.T
    skip = 1 if gallery is vectors else 0
    top, idx = sims.topk(k + skip, dim=1)
    weights = top[:, skip:].clamp(min=0) ** alpha
    out = vectors + (weights.unsqueeze(2) * gallery[idx[:, skip:]]).sum(1)
    return torch.nn.functional.normalize(out, dim=1)


def score(queries, q_labels, gallery, g_labels) -> dict:
    """Photo-level Recall@1/5, mAP and product-level Recall@1/5 of ``queries`` against ``gallery``."""
    import torch

    sims = queries @ gallery.T
    order = sims.argsort(dim=1, descending=True)
    hits = (g_labels[order] == q_labels.unsqueeze(1)).float()
    precision = hits.cumsum(1) / torch.arange(1, hits.shape[1] + 1)
    n_products = int(g_labels.max()) + 1
    votes = torch.full((len(queries), n_products), -float("inf")).scatter_reduce(
        1, g_labels.expand(len(queries), -1), sims, reduce="amax")
    rank = (votes > votes.gather(1, q_labels.unsqueeze(1))).sum(1)
    return {"recall_at_1": float(hits[:, 0].mean()), "recall_at_5": float(hits[:, :5].amax(1).mean()),
            "mean_ap": float(((precision * hits).sum(1) / hits.sum(1)).mean()),
            "product_recall_at_1": float((rank < 1).float().mean()), "product_recall_at_5": float((rank < 5).float().mean())}


def one_seed(vectors, labels, seed: int) -> dict:
    import torch

    gen = torch.Generator().manual_seed(seed)
    query_rows = []
    for p in labels.unique():
        rows = (labels == p).nonzero().squeeze(1)
        if len(rows) > 1:
            query_rows.append(int(rows[torch.randint(len(rows), (1,), generator=gen)]))
    is_query = torch.zeros(len(labels), dtype=torch.bool)
    is_query[query_rows] = True
    q, ql, g, gl = vectors[is_query], labels[is_query], vectors[~is_query], labels[~is_query]
    out = {}
    for name, dba, k, alpha in VARIANTS:
        gallery = expand(g, g, dba, 1.0) if dba else g
        out[name] = score(expand(q, gallery, k, alpha), ql, gallery, gl)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="footwear-dev")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    if not (DATA / args.dataset).is_dir():
        print(f"rerank: skipped, no dataset {args.dataset} in {DATA} (../shared/data is not on this machine)")
        return 0
    overrides = dict(kv.split("=", 1) for kv in args.set)
    with tempfile.TemporaryDirectory(prefix="rerank-") as tmp:
        vectors, labels = descriptors(DATA / args.dataset, Path(tmp) / "home", overrides)
    per_seed = [one_seed(vectors, labels, s) for s in args.seeds]
    summary = {name: {m: round(statistics.fmean(r[name][m] for r in per_seed), 4) for m in per_seed[0][name]}
               for name, *_ in VARIANTS}
    print(f"\nre-ranking on {args.dataset}: {len(labels)} genuine photos, seeds {args.seeds} (mean)")
    print(f"{'variant':<26} {'R@1':>6} {'R@5':>6} {'mAP':>6} {'prodR@1':>8} {'prodR@5':>8}")
    for name, m in summary.items():
        print(f"{name:<26} {m['recall_at_1']:>6.3f} {m['recall_at_5']:>6.3f} {m['mean_ap']:>6.3f} "
              f"{m['product_recall_at_1']:>8.3f} {m['product_recall_at_5']:>8.3f}")
    write_result({"bench": "rerank", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, python {platform.python_version()}",
                  "dataset": args.dataset, "seeds": args.seeds, "settings_changed": overrides,
                  "photos": len(labels), "summary": summary, "per_seed": per_seed}, "rerank.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
