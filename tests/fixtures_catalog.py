"""Shared test data: a small synthetic shoe catalog, generated once per session, and homes with it ingested."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

CATALOG_PRODUCTS = 16  # enough products for a train/val/test split with several per split
CATALOG_IMAGE_SIZE = 128  # small photos keep CPU embedding and training fast
CATALOG_NOISE_RATE = 0.2


@pytest.fixture(scope="session")
def synthetic_catalog(tmp_path_factory) -> Path:
    """A catalog folder (DIR/<product>/<NN>.jpg + labels.csv + products.json + manifest.json)."""
    from demo_shop.synthetic import generate_catalog

    out = tmp_path_factory.mktemp("catalog") / "shoes"
    return generate_catalog(out, CATALOG_PRODUCTS, noise_rate=CATALOG_NOISE_RATE, seed=0, image_size=CATALOG_IMAGE_SIZE)


@pytest.fixture(scope="session")
def ingested_home(tmp_path_factory, synthetic_catalog) -> Path:
    """A data home with the synthetic catalog ingested. Read-only: copy it (``ingested_settings``) to write."""
    from core.settings import Settings
    from tasks.ingest import ingest_catalog

    home = tmp_path_factory.mktemp("ingested") / "home"
    ingest_catalog(Settings.load(home=home), synthetic_catalog, name="shoes")
    return home


def writable_copy(session_home: Path, tmp_path: Path, monkeypatch) -> Path:
    """A private copy of a read-only session home, made the current ``SHOESEARCH_HOME``."""
    home = tmp_path / "home"
    shutil.copytree(session_home, home)
    monkeypatch.setenv("SHOESEARCH_HOME", str(home))
    return home


@pytest.fixture
def ingested_settings(tmp_path, ingested_home, monkeypatch):
    """Settings for a private copy of ``ingested_home`` (safe to write to)."""
    from core.settings import Settings

    return Settings.load(home=writable_copy(ingested_home, tmp_path, monkeypatch))
