"""Shared fixtures. Area fixtures live in tests/fixtures_*.py, listed in ``pytest_plugins``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("TQDM_DISABLE", "1")

pytest_plugins: list[str] = ["tests.fixtures_catalog", "tests.fixtures_search", "tests.fixtures_crawl", "tests.fixtures_denoise"]
# The fast loop is `pytest -m "not e2e"`: a test using one of these fixtures (a Prefect server, ~12 s to start)
# belongs to the end-to-end set and must say so with ``@pytest.mark.e2e``.
E2E_FIXTURES = frozenset({"prefect_harness"})


def pytest_collection_modifyitems(config, items):
    """Refuse a test that starts the Prefect harness without the ``e2e`` marker (it would slow the fast loop)."""
    unmarked = [item.nodeid for item in items
                if E2E_FIXTURES & set(getattr(item, "fixturenames", ())) and item.get_closest_marker("e2e") is None]
    if unmarked:
        raise pytest.UsageError(f"tests using {sorted(E2E_FIXTURES)} need @pytest.mark.e2e: {', '.join(unmarked)}")


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):
    """One temporary Prefect server for the whole session (~12 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def settings(tmp_path: Path, monkeypatch):
    """Settings for a fresh, empty data home (small, fast defaults where tests need them)."""
    from core.settings import Settings

    monkeypatch.setenv("SHOESEARCH_HOME", str(tmp_path / "home"))
    return Settings.load(home=tmp_path / "home")


@pytest.fixture
def wh(settings):
    from warehouse import open_warehouse

    return open_warehouse(settings)
