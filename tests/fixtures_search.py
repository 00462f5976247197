"""Search-area fixtures: a data home with the synthetic catalog indexed (ImageNet embedder), a live API
server on a free loopback port (served as `shoesearch api` serves it), and raw HTTP over a socket."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.fixtures_catalog import writable_copy

# Small, fast settings for every search test home (written to the home's shoesearch.toml).
SEARCH_TEST_TOML = """\
[embed]
image_size = {image_size}
batch_size = 16

[index]
index_all_photos = true
"""
# At this input size the catalog's 128 px JPEGs decode through JPEG draft() (DCT scaling to 64 px), as
# large catalog photos do at the real 224 px: a query path without draft() would not match them exactly.
DRAFT_IMAGE_SIZE = 48


def search_settings(home: Path, image_size: int = 96):
    from core.settings import Settings

    (home / "shoesearch.toml").write_text(SEARCH_TEST_TOML.format(image_size=image_size))
    return Settings.load(home=home)


@pytest.fixture(scope="session")
def indexed_home(tmp_path_factory, ingested_home) -> Path:
    """The ingested catalog, indexed with the ImageNet baseline and switched in. Read-only."""
    from tasks.gate import switch_index
    from tasks.index import build_index

    home = tmp_path_factory.mktemp("indexed") / "home"
    shutil.copytree(ingested_home, home)
    settings = search_settings(home)
    switch_index(settings, build_index(settings))
    return home


@pytest.fixture(scope="session")
def draft_home(tmp_path_factory, ingested_home) -> Path:
    """The ingested catalog indexed at ``DRAFT_IMAGE_SIZE`` px (see there). Read-only."""
    from tasks.gate import switch_index
    from tasks.index import build_index

    home = tmp_path_factory.mktemp("draft") / "home"
    shutil.copytree(ingested_home, home)
    settings = search_settings(home, DRAFT_IMAGE_SIZE)
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


@contextmanager
def serve_api(settings, wait_ready: bool = True):
    """The API served by uvicorn as `shoesearch api` serves it (``serving.api.server_config``), on a free
    loopback port in a thread; yields the base URL once ``/health`` no longer says ``starting`` (the index
    and model are loaded at start), or as soon as it answers when not ``wait_ready``."""
    import httpx
    import uvicorn

    from serving.api import server_config

    port = free_port()
    server = uvicorn.Server(server_config(settings, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/", timeout=2).status_code == 200 and not (
                    wait_ready and httpx.get(base + "/health", timeout=2).json()["status"] == "starting"):
                break
            time.sleep(0.1)
        except httpx.HTTPError:
            time.sleep(0.1)
    else:
        raise RuntimeError("API server did not start")
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="session")
def api_server(indexed_home):
    """The API for ``indexed_home`` with the default ``api`` settings; yields (base_url, settings)."""
    settings = search_settings(indexed_home)
    with serve_api(settings) as base:
        yield base, settings


def port_of(base: str) -> int:
    return int(base.rsplit(":", 1)[1])


def raw_http(base: str, request: bytes, timeout: float = 30) -> tuple[int, bytes]:
    """Send ``request`` byte for byte (no client library to normalise its path or framing) and read until
    the server closes; returns (status, whole response). Ask with ``Connection: close``."""
    with socket.create_connection(("127.0.0.1", port_of(base)), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1]), data


def multipart(photo: bytes, name: str = "photo.png", boundary: str = "shoesearchboundary") -> tuple[bytes, bytes, str]:
    """(opening, closing, content type) of a one-file multipart body around ``photo``."""
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"photo\"; filename=\"{name}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    return head, f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"
