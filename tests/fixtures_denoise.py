"""Denoise-area fixtures: the synthetic catalog embedded once per session at a small size."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.fixtures_catalog import writable_copy

EMBED_TEST_OVERRIDES = {  # small and fast: the catalog photos are 128 px
    "embed.image_size": 128, "embed.batch_size": 16,  # loader workers: the default (2)
}


@pytest.fixture(scope="session")
def embedded_home(tmp_path_factory, ingested_home) -> Path:
    """``ingested_home`` plus ImageNet embeddings of every photo. Read-only: use ``embedded_settings``."""
    from core.settings import Settings
    from embedding.vectors import embed_images

    home = tmp_path_factory.mktemp("embedded") / "home"
    shutil.copytree(ingested_home, home)
    embed_images(Settings.load(home=home, overrides=EMBED_TEST_OVERRIDES))
    return home


@pytest.fixture
def embedded_settings(tmp_path, embedded_home, monkeypatch):
    """Settings for a private, writable copy of ``embedded_home``."""
    from core.settings import Settings

    home = writable_copy(embedded_home, tmp_path, monkeypatch)
    return Settings.load(home=home, overrides=EMBED_TEST_OVERRIDES)


@pytest.fixture
def small_settings(settings):
    """The empty-home ``settings`` with the small embedding overrides."""
    for key, value in EMBED_TEST_OVERRIDES.items():
        settings.set(key, value)
    return settings
