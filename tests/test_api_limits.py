"""What one client can hold on the API server (a real uvicorn server in a thread; raw sockets, so the
framing and the stalls are exactly what is sent):

* an upload is refused at the limit while it streams, also when it is chunked (no Content-Length);
* a stalled request head or body is closed / answered 408, not held open;
* requests beyond ``api.max_connections`` in flight get 503; connections still sending their head hold no
  slot, and one client address holds at most ``api.max_connections_per_client`` connections;
* concurrent uploads decode at most ``api.max_decodes`` photos at once.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.fixtures_search import multipart, port_of, raw_http, search_settings, serve_api

MB = 1_000_000
GET_HEALTH = b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"


def api_settings(home, **api):
    settings = search_settings(home)
    for name, value in api.items():
        settings.set(f"api.{name}", value)
    return settings


def connect(base: str, first: bytes, timeout: float = 20, source: str = "127.0.0.1") -> socket.socket:
    """A connection from loopback address ``source`` (another client address: 127.0.0.2 ...) that sent ``first``."""
    sock = socket.create_connection(("127.0.0.1", port_of(base)), timeout=timeout, source_address=(source, 0))
    sock.sendall(first)
    return sock


def read_until_closed(sock: socket.socket) -> bytes | None:
    """Everything the server sends until it closes; None if it still holds the connection at the timeout."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return data


def status_of(response: bytes | None) -> int | None:
    return int(response.split(b" ", 2)[1]) if response else None


def stream_chunked(base: str, total: int) -> tuple[int, bytes | None]:
    """POST /search with a chunked multipart body of up to ``total`` photo bytes (never finished), stopping
    when the server answers or closes; returns (photo bytes sent, the server's response)."""
    opening, _, content_type = multipart(b"")
    head = (f"POST /search HTTP/1.1\r\nHost: t\r\nContent-Type: {content_type}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n").encode()
    sock = connect(base, head + b"%x\r\n%s\r\n" % (len(opening), opening))
    payload = b"\xff" * 65536
    chunk, sent = b"%x\r\n%s\r\n" % (len(payload), payload), 0
    with sock:
        while sent < total and not select.select([sock], [], [], 0)[0]:
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(payload)
        return sent, read_until_closed(sock)


def test_chunked_upload_is_refused_at_the_limit_while_it_streams(indexed_home):
    settings = api_settings(indexed_home, max_upload_bytes=1 * MB)
    with serve_api(settings) as base:
        sent, response = stream_chunked(base, total=128 * MB)
        # Stopped at ~1 MB read (plus what loopback socket buffers held), not spooled to the end.
        assert status_of(response) == 413 and b"too_large" in response, (sent, response)
        assert sent < 40 * MB, sent
        assert b"connection: close" in response.lower()
        assert raw_http(base, GET_HEALTH)[0] == 200  # and it keeps serving


def test_stalled_heads_and_bodies_are_timed_out(indexed_home):
    settings = api_settings(indexed_home, header_timeout_s=1.0, body_timeout_s=1.0, keep_alive_s=1.0,
                            max_connections_per_client=16)
    partial_head = b"POST /search HTTP/1.1\r\nHost: t\r\nContent-Type: multip"
    opening, _, content_type = multipart(b"")
    sized = (f"POST /search HTTP/1.1\r\nHost: t\r\nContent-Type: {content_type}\r\n"
             f"Content-Length: 100000\r\n\r\n").encode() + opening
    chunked = (f"POST /search HTTP/1.1\r\nHost: t\r\nContent-Type: {content_type}\r\n"
               "Transfer-Encoding: chunked\r\n\r\n").encode() + b"%x\r\n%s\r\n" % (len(opening), opening)
    with serve_api(settings) as base:
        started = time.monotonic()
        heads = [connect(base, partial_head, timeout=10) for _ in range(4)]
        bodies = [connect(base, request, timeout=10) for request in [sized] * 3 + [chunked] * 3]
        idle = connect(base, GET_HEALTH.replace(b"close", b"keep-alive"), timeout=10)
        answers = [read_until_closed(s) for s in heads + bodies]
        idle_answer = read_until_closed(idle)
        elapsed = time.monotonic() - started
        for s in heads + bodies + [idle]:
            s.close()
        assert raw_http(base, GET_HEALTH)[0] == 200
    assert answers[:4] == [b""] * 4, answers[:4]  # closed, nothing to answer: the head never came
    assert [status_of(a) for a in answers[4:]] == [408] * 6, answers[4:]
    assert status_of(idle_answer) == 200  # answered, then closed once idle
    assert elapsed < 6, elapsed


def _waiting_bodies(base: str, n: int) -> list[socket.socket]:
    """``n`` POST /search requests whose head is complete and whose body never comes (each holds a request slot)."""
    opening, _, content_type = multipart(b"")
    head = (f"POST /search HTTP/1.1\r\nHost: t\r\nContent-Type: {content_type}\r\n"
            "Content-Length: 100000\r\n\r\n").encode()
    return [connect(base, head + opening, timeout=10) for _ in range(n)]


def test_requests_beyond_the_connection_cap_get_503(indexed_home):
    settings = api_settings(indexed_home, max_connections=4, body_timeout_s=30.0)
    with serve_api(settings) as base:
        held = _waiting_bodies(base, 4)
        time.sleep(0.3)  # the four requests are in the app, waiting for their bodies
        refused = raw_http(base, GET_HEALTH)
        assert refused[0] == 503 and b"busy" in refused[1], refused  # the 5th request in flight
        for s in held:
            s.close()
        deadline = time.monotonic() + 10
        while raw_http(base, GET_HEALTH)[0] != 200:  # the closed requests free their slots
            assert time.monotonic() < deadline, "slots not freed after the clients closed"
            time.sleep(0.1)


def test_one_client_holding_incomplete_heads_starves_no_one(indexed_home):
    """Issue 25 item 2: a client holding more half-sent heads than there are request slots (reopened under the
    head deadline) kept every other client at 503. Its connections hold no slot, and it is capped itself."""
    settings = api_settings(indexed_home, max_connections=4, max_connections_per_client=6, header_timeout_s=30.0)
    with serve_api(settings) as base:
        abuser = [connect(base, b"GET /health HTTP/1.1\r\nHost: t\r\n", source="127.0.0.2") for _ in range(6)]
        time.sleep(0.3)
        statuses = [raw_http(base, GET_HEALTH)[0] for _ in range(5)]  # another client address: 127.0.0.1
        with connect(base, b"GET /health HTTP/1.1\r\nHost: t\r\n", source="127.0.0.2", timeout=10) as seventh:
            refused = read_until_closed(seventh)
        for s in abuser:
            s.settimeout(0.2)
            assert read_until_closed(s) is None  # still open: waiting for its head, not refused
            s.close()
        assert raw_http(base, GET_HEALTH)[0] == 200
    assert statuses == [200] * 5, statuses
    assert status_of(refused) == 503 and b"too_many_connections" in refused, refused


def test_concurrent_uploads_decode_at_most_max_decodes_photos_at_once(indexed_home, monkeypatch):
    from photos import decode_worker

    real, lock, state = decode_worker.decode_rgb, threading.Lock(), {"now": 0, "peak": 0, "calls": 0}

    def counting_decode_rgb(*args, **kwargs):
        with lock:
            state["now"] += 1
            state["calls"] += 1
            state["peak"] = max(state["peak"], state["now"])
        try:
            time.sleep(0.5)  # a slow decode: the others must queue
            return real(*args, **kwargs)
        finally:
            with lock:
                state["now"] -= 1

    monkeypatch.setattr(decode_worker, "decode_rgb", counting_decode_rgb)
    settings = api_settings(indexed_home, max_decodes=2)
    photo = next(settings.images_dir.glob("*/*.jpg")).read_bytes()
    with serve_api(settings) as base:
        def upload(_):
            return httpx.post(f"{base}/search", files={"photo": ("q.jpg", photo)}, timeout=60).status_code

        with ThreadPoolExecutor(6) as pool:
            statuses = list(pool.map(upload, range(6)))
    assert statuses == [200] * 6
    assert state["calls"] == 6 and state["peak"] == 2, state
