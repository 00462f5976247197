"""Which denoise rule: precision / recall of dropped photos on labelled gallery noise (footwear-dev-noisy).

Every rule keeps the design card's test, the distance of each photo to its product's first photo, and only
changes *which* distance counts as too far. Measured on the catalog's ``labels.csv`` ``is_noise`` (other
shoes, packaging, size charts), with the ImageNet GeM descriptors the denoise step uses:

* ``global t``: one threshold for every product (today's rule, ``denoise.threshold``);
* ``self-calibrated q``: the threshold is the ``q`` quantile of the distances between the *first photos of
  different products* (needs no labels: a photo farther from its photo 0 than a typical other product's
  photo 0 is not this product);
* ``robust k``: per product, ``median + k * MAD`` of its photos' distances, bounded by [lo, hi];
* ``anchor check``: when photo 0 is itself far from the product's other photos (e.g. a box shot first),
  the product's medoid is the reference;
* ``step``: the denoise step itself (``tasks.denoise.denoise`` on the scratch warehouse) at a threshold, with
  and without the cross-product rule (a picture also in another product belongs to the product whose first
  photo it is closer to), scored per noise kind from the ``denoise`` table it wrote.

    .venv/bin/python bench/denoise_rules.py [--catalog DIR] [--set key=value ...]
Writes bench/results/denoise_rules.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path[0] = str(Path(__file__).resolve().parents[1])  # the repo, not bench/

from bench.results_io import write_result  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def embedded_photos(catalog: Path, home: Path, overrides: dict):
    """Ingest ``catalog`` and embed it with the ImageNet descriptor denoise uses: (image ids, their vectors,
    the ``images_current`` rows by image id)."""
    from core.settings import Settings
    from embedding.embedders import open_embedder
    from embedding.vectors import embed_images, load_embeddings
    from tasks.ingest import ingest_catalog
    from warehouse import open_warehouse

    settings = Settings.load(home=home, overrides=overrides)
    ingest_catalog(settings, catalog, name=catalog.name)
    embed_images(settings)
    wh = open_warehouse(settings)
    ids, vectors = load_embeddings(wh, open_embedder(settings).model_id)
    rows = {r["image_id"]: r for r in wh.query(
        "SELECT image_id, product_id, position, is_noise FROM images_current WHERE status = 'ok'").to_pylist()}
    return ids, vectors, rows


def load(catalog: Path, home: Path, overrides: dict):
    """(products: {product: [(position, vector, is_noise)]}) after ingest + ImageNet embedding."""
    ids, vectors, rows = embedded_photos(catalog, home, overrides)
    products = defaultdict(list)
    for image_id, vec in zip(ids, vectors):
        r = rows[image_id]
        products[r["product_id"]].append((r["position"], vec, bool(r["is_noise"])))
    return {p: sorted(v, key=lambda t: t[0]) for p, v in products.items()}


def score(decisions: list[tuple[bool, bool]]) -> dict:
    """(dropped, is_noise) pairs -> precision / recall of the dropped photos."""
    dropped = sum(d for d, _ in decisions)
    noise = sum(n for _, n in decisions)
    hits = sum(d and n for d, n in decisions)
    return {"dropped": dropped, "noise": noise, "precision": round(hits / dropped, 4) if dropped else None,
            "recall": round(hits / noise, 4) if noise else None}


def by_rule(products: dict, reference, too_far) -> dict:
    """Apply ``too_far(distances, product) -> mask`` with ``reference(photos) -> index``; photo 0 is kept."""
    out = []
    for product, photos in products.items():
        vecs = np.stack([v for _, v, _ in photos])
        ref = reference(vecs)
        d = np.linalg.norm(vecs - vecs[ref], axis=1)
        mask = too_far(d, np.arange(len(d)) != ref)
        out += [(bool(m), n) for m, (_, _, n) in zip(mask, photos)]
    return score(out)


def first_photo(vecs):
    return 0


def anchor_checked(limit: float):
    """Photo 0 unless its median distance to the others exceeds ``limit``; then the medoid."""
    def reference(vecs):
        if len(vecs) < 3:
            return 0
        pair = np.linalg.norm(vecs[:, None] - vecs[None], axis=2)
        return 0 if np.median(pair[0, 1:]) <= limit else int(np.argmin(np.median(pair, axis=1)))
    return reference


def rules(products: dict) -> dict:
    fronts = np.stack([photos[0][1] for photos in products.values()])
    between = np.linalg.norm(fronts[:, None] - fronts[None], axis=2)[np.triu_indices(len(fronts), 1)]
    out = {}
    for t in (0.8, 0.9, 1.0, 1.1, 1.2):
        out[f"global {t}"] = by_rule(products, first_photo, lambda d, other, t=t: other & (d > t))
    for q in (0.01, 0.02, 0.05, 0.1):
        t = float(np.quantile(between, q))
        out[f"self-calibrated q={q} (t={t:.3f})"] = by_rule(products, first_photo, lambda d, o, t=t: o & (d > t))
    for k in (2.0, 3.0):
        def robust(d, other, k=k):
            rest = d[other]
            if len(rest) < 3:
                return other & (d > 1.0)
            med = np.median(rest)
            t = np.clip(med + k * np.median(np.abs(rest - med)) * 1.4826, 0.8, 1.2)
            return other & (d > t)
        out[f"robust median+{k}MAD in [0.8,1.2]"] = by_rule(products, first_photo, robust)
    for limit in (0.9, 1.0):
        out[f"global 1.0, anchor check {limit}"] = by_rule(products, anchor_checked(limit), lambda d, o: o & (d > 1.0))
    return out


def noise_kinds(catalog: Path) -> dict[tuple[str, int], str]:
    """(product folder, position) -> ``labels.csv`` ``noise_kind`` ("" for genuine photos)."""
    import csv

    folders = defaultdict(list)
    with open(catalog / "labels.csv", newline="") as f:
        for row in csv.DictReader(f):
            folder, name = row["image"].split("/", 1)
            folders[folder].append((name, row.get("noise_kind") or ""))
    return {(folder, pos): kind for folder, photos in folders.items() for pos, (_, kind) in enumerate(sorted(photos))}


def step_rules(catalog: Path, home: Path, overrides: dict) -> dict:
    """The denoise step as the pipeline runs it, at several thresholds, with and without the cross-product rule."""
    from core.settings import Settings
    from tasks.denoise import denoise
    from warehouse import open_warehouse

    kind_of = noise_kinds(catalog)
    out = {}
    for t in (1.0, 1.05, 1.1, 1.15, 1.2):
        for cross in (False, True):
            settings = Settings.load(home=home, overrides={**overrides, "denoise.cross_product": cross})
            run_id = denoise(settings, threshold=t)
            rows = open_warehouse(settings).query(
                "SELECT NOT d.kept AS dropped, i.is_noise, i.product_id, i.position, d.reason FROM denoise d "
                f"JOIN images_current i USING (image_id) WHERE d.run_id = '{run_id}' AND d.reason <> 'anchor'"
            ).to_pylist()
            for r in rows:
                r["noise_kind"] = kind_of.get((r["product_id"].split(":", 1)[-1], r["position"]), "?")
            name = f"step {t}" + (" + cross-product" if cross else "")
            out[name] = score([(r["dropped"], bool(r["is_noise"])) for r in rows])
            kinds = sorted({r["noise_kind"] for r in rows if r["is_noise"]})
            out[name]["recall_by_kind"] = {k: round(sum(r["dropped"] for r in rows if r["noise_kind"] == k)
                                                / sum(r["noise_kind"] == k for r in rows), 4) for k in kinds}
            out[name]["genuine_dropped"] = sum(r["dropped"] and not r["is_noise"] for r in rows)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--catalog", type=Path, default=DATA / "footwear-dev-noisy")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    if not args.catalog.is_dir():
        print(f"denoise_rules: skipped, no catalog at {args.catalog} (../shared/data is not on this machine)")
        return 0
    overrides = dict(kv.split("=", 1) for kv in args.set)
    with tempfile.TemporaryDirectory(prefix="denoise-rules-") as tmp:
        products = load(args.catalog, Path(tmp) / "home", overrides)
        result = {**rules(products), **step_rules(args.catalog, Path(tmp) / "home", overrides)}
    print(f"\ndenoise rules on {args.catalog.name} ({len(products)} products)")
    print(f"{'rule':<44} {'dropped':>7} {'P':>6} {'R':>6}")
    for name, r in result.items():
        print(f"{name:<44} {r['dropped']:>7} {r['precision'] or 0:>6.3f} {r['recall'] or 0:>6.3f}")
    write_result({"bench": "denoise_rules", "catalog": args.catalog.name, "settings_changed": overrides,
                  "rules": result}, "denoise_rules.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
