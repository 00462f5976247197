"""Screenshots of the shopper's pages, for the README: search (empty), results, no match, product page and an
error, each at 1280 px and 390 px wide (a phone: mobile viewport), saved as ``<page>-<width>.png``.

    .venv/bin/python scripts/screenshots.py                     # the home `make demo` built (./data)
    .venv/bin/python scripts/screenshots.py --home H --out DIR  # any home with an index

It serves the home's API on a free loopback port (as ``shoesearch api`` does) and drives Debian's Chromium with
Playwright. The results and product pages search with the demo's query photo (``<home>/reports/demo-query.jpg``)
when there is one, else the first product's front photo, or ``--photo``; the no-match page with a generated
landscape; the error page with a file that is not a photo. Chinese titles need a CJK font (fonts-wqy-microhei).
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

NAMES = ("search", "results", "no-match", "product", "error")
WIDTHS = (1280, 390)
SCREENS = {1280: {"viewport": {"width": 1280, "height": 800}},
           390: {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True}}


class Refused(Exception):
    """What stops the script, said in one line."""


def landscape(caption: str = "") -> bytes:
    """A photo of no shoe: sky, sun, hills (and ``caption`` written on it). The browser tests use it too."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (640, 480))
    draw = ImageDraw.Draw(image)
    for y in range(480):
        sky, grass = (70 + y // 6, 140 + y // 8, 235 - y // 4), (60, 140 - y // 8, 50)
        draw.line([(0, y), (640, y)], fill=sky if y < 300 else grass)
    draw.ellipse((470, 50, 560, 140), fill=(255, 220, 90))
    draw.polygon([(0, 320), (180, 210), (360, 330), (520, 240), (640, 300), (640, 480), (0, 480)], fill=(40, 110, 60))
    if caption:
        draw.text((30, 420), caption, fill=(255, 255, 255))
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _settle(page) -> None:
    """Wait until the page's images in view are decoded, so the screenshot shows them."""
    page.wait_for_load_state("load")
    page.wait_for_function("""() => [...document.images].filter(i => i.getBoundingClientRect().top < innerHeight)
        .every(i => i.complete)""", timeout=15_000)


def _search(page, base: str, name: str, data: bytes, mime: str = "image/jpeg") -> None:
    page.goto(base + "/")
    with page.expect_navigation():
        page.set_input_files("#photo", {"name": name, "mimeType": mime, "buffer": data})
    _settle(page)


def _save(page, out: Path, name: str, width: int, full_page: bool) -> Path:
    path = out / f"{name}-{width}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


def _shoot_width(browser, base: str, out: Path, photo: Path, width: int, full_page: bool) -> list[Path]:
    context = browser.new_context(**SCREENS[width])
    page, saved = context.new_page(), []
    try:
        page.goto(base + "/")
        _settle(page)
        saved.append(_save(page, out, "search", width, full_page))
        _search(page, base, photo.name, photo.read_bytes())
        saved.append(_save(page, out, "results", width, full_page))
        with page.expect_navigation():
            page.locator("li.card a.card-link").first.click()
        _settle(page)
        saved.append(_save(page, out, "product", width, full_page))
        _search(page, base, "lake.jpg", landscape())
        saved.append(_save(page, out, "no-match", width, full_page))
        _search(page, base, "notes.pdf", b"%PDF-1.4 not a photo", "application/pdf")
        saved.append(_save(page, out, "error", width, full_page))
    finally:
        context.close()
    return saved


def shoot(browser, base: str, out: Path, photo: Path, full_page: bool = False) -> list[Path]:
    """Every page of :data:`NAMES` at every width of :data:`WIDTHS`, from the server at ``base``, into ``out``;
    ``photo`` is the shoe searched for. Returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    return [path for width in WIDTHS for path in _shoot_width(browser, base, out, photo, width, full_page)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _health(base: str) -> str | None:
    import json
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(base + "/health", timeout=5) as r:
            return json.load(r)["status"]
    except urllib.error.HTTPError as exc:
        return json.load(exc)["status"]
    except (OSError, ValueError, KeyError):
        return None


@contextmanager
def serving(settings):
    """The home's API (``serving.api.server_config``) on a free loopback port, once it has loaded its index."""
    import uvicorn

    from serving.api import server_config

    port = _free_port()
    server = uvicorn.Server(server_config(settings, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="api", daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while (status := _health(base)) in (None, "starting") and time.monotonic() < deadline:
            time.sleep(0.2)
        if status not in ("ready", "degraded", "ok"):
            raise Refused(f"the API for {settings.home} is not serving searches ({status or 'no answer'}): "
                          "build an index first (make demo)")
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def query_photo(settings, given: str | None) -> Path:
    """``--photo``, else the demo's query photo, else the first product's front photo."""
    if given:
        if not Path(given).is_file():
            raise Refused(f"--photo {given}: no such file")
        return Path(given)
    demo = settings.reports_dir / "demo-query.jpg"
    if demo.is_file():
        return demo
    from warehouse import open_warehouse

    rows = open_warehouse(settings, must_exist=True).query(
        "SELECT path FROM images_current WHERE status = 'ok' AND position = 0 ORDER BY product_id LIMIT 1").to_pylist()
    if not rows:
        raise Refused(f"no photos in {settings.home}: run `make demo` first, or pass --photo")
    return settings.images_dir / rows[0]["path"]


def _warn_without_cjk_font() -> None:
    if shutil.which("fc-list"):
        fonts = subprocess.run(["fc-list", ":lang=zh", "family"], check=False, capture_output=True, text=True).stdout
        if not fonts.strip():
            print("screenshots: no Chinese font installed: titles show as boxes "
                  "(apt-get install fonts-wqy-microhei)", file=sys.stderr)


def run(args) -> list[Path]:
    from core.errors import ShoesearchError
    from core.settings import Settings

    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        raise Refused("Playwright is not installed: pip install -e '.[test]'") from None
    chromium = args.chromium or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).is_file():
        raise Refused(f"no Chromium at {chromium}: `make browser` installs it, or pass --chromium")
    home = Path(args.home or os.environ.get("SHOESEARCH_HOME") or REPO / "data")
    if not home.is_dir():
        raise Refused(f"no data home at {home}: run `make demo` first, or pass --home")
    try:
        settings = Settings.load(home=home)
        photo = query_photo(settings, args.photo)
    except ShoesearchError as exc:
        raise Refused(str(exc)) from None
    _warn_without_cjk_font()
    with serving(settings) as base, sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        except Error as exc:
            raise Refused(f"Chromium at {chromium} does not start: {str(exc).strip().splitlines()[0]}") from None
        try:
            return shoot(browser, base, Path(args.out), photo, full_page=args.full_page)
        finally:
            browser.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", help="the data home (default: $SHOESEARCH_HOME, else ./data)")
    parser.add_argument("--out", default=str(REPO / "docs" / "screenshots"), help="where the PNGs go")
    parser.add_argument("--photo", help="the shoe photo to search with (default: the demo's query photo)")
    parser.add_argument("--chromium", help="the Chromium binary (default: chromium on PATH)")
    parser.add_argument("--full-page", action="store_true", help="whole pages, not the first screen")
    args = parser.parse_args(argv)
    try:
        saved = run(args)
    except Refused as exc:
        print(f"screenshots: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("screenshots: interrupted", file=sys.stderr)
        return 130
    for path in saved:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
