"""Search-area fixtures: a data home with the synthetic catalogue indexed (ImageNet embedder), and a
live API server on a free loopback port."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.fixtures_catalog import writable_copy

# Small, fast settings for every search test home (written to the home's shoesearch.toml).
SEARCH_TEST_TOML = """\
[embed]
image_size = 96
batch_size = 16

[index]
index_all_photos = true
"""


def search_settings(home: Path):
    from shoesearch.settings import Settings

    (home / "shoesearch.toml").write_text(SEARCH_TEST_TOML)
    return Settings.load(home=home)


@pytest.fixture(scope="session")
def indexed_home(tmp_path_factory, ingested_home) -> Path:
    """The ingested catalogue, indexed with the ImageNet baseline and switched in. Read-only."""
    from tasks.index import build_index, switch_index

    home = tmp_path_factory.mktemp("indexed") / "home"
    shutil.copytree(ingested_home, home)
    settings = search_settings(home)
    switch_index(settings, build_index(settings))
    return home


@pytest.fixture
def indexed_settings(tmp_path, indexed_home, monkeypatch):
    """Settings for a private, writable copy of ``indexed_home``."""
    return search_settings(writable_copy(indexed_home, tmp_path, monkeypatch))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def api_server(indexed_home):
    """The FastAPI app served by uvicorn on 127.0.0.1 in a thread; yields (base_url, settings)."""
    import httpx
    import uvicorn

    from shoesearch.api import create_app

    settings = search_settings(indexed_home)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    else:
        raise RuntimeError("API server did not start")
    yield base, settings
    server.should_exit = True
    thread.join(timeout=10)
