"""Crawl fixtures: a 40-product synthetic catalog (once per session) and fast crawl settings."""

from __future__ import annotations

from pathlib import Path

import pytest

SHOP_PRODUCTS = 40  # the spec's crawl test size
SHOP_IMAGE_SIZE = 96  # tiny photos: the crawl, not the pixels, is under test
SHOP_PAGE_SIZE = 10  # 5 in the HTML + 5 lazy per page: 40 products span 4 result pages
FAST_CRAWL = {  # loopback shop: no politeness delays in tests (defaults stay polite)
    "crawl.download_delay_s": 0.0,
    "crawl.autothrottle_max_delay_s": 0.5,
    "crawl.concurrent_requests": 16,
    "crawl.autothrottle_target_concurrency": 16.0,
    "crawl.retry_backoff_s": 0.01,
    "crawl.commit_every": 3,
    "crawl.progress_every_s": 0.2,
}


@pytest.fixture(scope="session")
def shop_catalog(tmp_path_factory) -> Path:
    from demo_shop.synthetic import generate_catalog

    out = tmp_path_factory.mktemp("shop") / "catalog"
    return generate_catalog(out, SHOP_PRODUCTS, noise_rate=0.2, seed=0, image_size=SHOP_IMAGE_SIZE)


@pytest.fixture
def crawl_settings(tmp_path, monkeypatch):
    """Settings for a fresh data home with fast crawl settings."""
    from core.settings import Settings

    monkeypatch.setenv("SHOESEARCH_HOME", str(tmp_path / "home"))
    return Settings.load(home=tmp_path / "home", overrides=FAST_CRAWL)


@pytest.fixture
def make_shop(shop_catalog):
    """``make_shop(faults=..., n=...)`` starts a demo shop on a free loopback port; stopped after the test."""
    from demo_shop.server import DemoShop, Faults, load_catalog

    shops = []

    def _make(faults=None, n=None, page_size=SHOP_PAGE_SIZE):
        products = load_catalog(shop_catalog)[: n or SHOP_PRODUCTS]
        shop = DemoShop(products, faults=Faults.parse(faults), page_size=page_size, source=str(shop_catalog)).start()
        shops.append(shop)
        return shop

    yield _make
    for shop in shops:
        shop.stop()
