"""``shoesearch demo``: a failing step still stops the demo shop and ends in a one-line error.

The demo's success path is one nightly run (covered end to end by tests/test_nightly.py) plus
printing; it takes minutes, so here only its cleanup and error path run, for real: the CLI, the
generated shop on a loopback port, bad crawl settings refused once it serves.
"""

from __future__ import annotations

import re

import httpx
import pytest


def test_demo_stops_the_shop_when_a_step_fails(tmp_path, monkeypatch, capsys):
    from shoesearch.cli import main

    home = tmp_path / "home"
    monkeypatch.setenv("SHOESEARCH_HOME", str(home))
    rc = main(["--home", str(home), "--set", "crawl.max_pages=0", "demo"])
    out, err = capsys.readouterr()
    assert rc == 2
    assert err.strip() == "shoesearch: error: max products and max pages must be at least 1"
    url = re.search(r"serving on (http://127\.0\.0\.1:\d+)", out).group(1)
    assert f"demo shop on {url} stopped" in out
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/robots.txt", timeout=2)


def test_demo_query_photo_is_a_new_view_of_a_shop_product(tmp_path):
    from crawlers.demo_shop.server import load_catalog, synthetic_catalog
    from shoesearch.demo import (DEMO_NOISE_RATE, DEMO_PHOTO_PX, DEMO_PRODUCTS, DEMO_SEED, demo_product_ids,
                                 query_photo)
    from shoesearch.settings import Settings

    settings = Settings.load(home=tmp_path)
    products = demo_product_ids(DEMO_PRODUCTS, DEMO_SEED)
    folder = synthetic_catalog(tmp_path, DEMO_PRODUCTS, DEMO_NOISE_RATE, seed=DEMO_SEED, image_size=DEMO_PHOTO_PX)
    assert sorted(f"jd:{p.sku}" for p in load_catalog(folder)) == sorted(pid for _, pid in products)
    shop_product = next(p for p in load_catalog(folder) if f"jd:{p.sku}" == products[0][1])
    photo = query_photo(settings, products[0][0], tmp_path / "q.jpg").read_bytes()
    gallery = {photo_.file.read_bytes() for photo_ in shop_product.gallery}
    assert photo and photo not in gallery  # not a copy of a crawled photo
