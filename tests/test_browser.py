"""The search and product pages in a real browser: Playwright driving Debian's Chromium against the real API
(uvicorn on loopback, the synthetic catalog indexed and denoised). Skipped, saying why, where Playwright or
Chromium is missing (``make browser`` installs Chromium where it can).

A catalogue photo finds its product first as the "same product", a photo of no shoe is "no match" (both through
the page's own JavaScript: the file chooser, a drop, a paste), the file field keeps the photo for the next search,
a phone-sized screen (390 px, a mobile viewport) never scrolls sideways and its tap targets are >= 44 px, the
product page lists the whole gallery with each photo's decision (and, with a write token, takes a correction by
hand), and bad uploads through the form are friendly pages, never JSON. The screenshot script
(scripts/screenshots.py) runs against the same server.
"""

from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path
from urllib.parse import quote, unquote

import httpx
import pytest

from tests.fixtures_search import search_settings, serve_api

pytestmark = pytest.mark.e2e
CHROMIUM = os.environ.get("SHOESEARCH_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
UPLOAD_LIMIT = 2_000_000  # the test server's api.max_upload_bytes: an oversized photo stays small to send
PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True, "device_scale_factor": 2}


def skip_reason() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright is not installed (pip install -e '.[test]')"
    if not Path(CHROMIUM).is_file():
        return f"no Chromium at {CHROMIUM} (`make browser` installs Debian's chromium; or set SHOESEARCH_CHROMIUM)"
    return None


@pytest.fixture(scope="module")
def browser():
    if reason := skip_reason():
        pytest.skip(reason)
    from playwright.sync_api import Error, sync_playwright

    with sync_playwright() as p:
        try:
            chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        except Error as exc:
            pytest.skip(f"Chromium at {CHROMIUM} does not start: {str(exc).strip().splitlines()[0]}")
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def site(browser, tmp_path_factory, indexed_home):
    """(base URL, settings): the indexed catalog, denoised (decisions for the product pages), served."""
    from core.settings import Settings
    from tasks.denoise import denoise

    home = tmp_path_factory.mktemp("browser") / "home"
    shutil.copytree(indexed_home, home)
    denoise(search_settings(home))
    settings = Settings.load(home=home, overrides={"api.max_upload_bytes": UPLOAD_LIMIT})
    with serve_api(settings) as base:
        yield base, settings


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    yield context.new_page()
    context.close()


def catalogue_photo(settings) -> tuple[dict, bytes]:
    from warehouse import open_warehouse

    row = open_warehouse(settings).query(
        """SELECT i.product_id, i.path, p.title FROM images_current i JOIN products_current p USING (product_id)
        WHERE i.status = 'ok' AND i.position = 0 ORDER BY i.product_id LIMIT 1""").to_pylist()[0]
    return row, (settings.images_dir / row["path"]).read_bytes()


def landscape() -> bytes:
    """A photo of no shoe: sky, sun, hills and a caption (the screenshot script's, which draws it)."""
    from scripts.screenshots import landscape as drawn

    return drawn("Holiday 2026 - the lake at dawn")


def choose(page, base: str, name: str, data: bytes, mime: str = "image/jpeg"):
    """Open the search page and choose a file as a shopper does (the page searches at once); the response."""
    page.goto(base + "/")
    with page.expect_navigation() as nav:
        page.set_input_files("#photo", {"name": name, "mimeType": mime, "buffer": data})
    return nav.value


def _dispatch(page, base: str, name: str, data: bytes, event: str):
    """Open the search page and run ``event`` (JS given ``dt``, a DataTransfer holding the file as a File)."""
    page.goto(base + "/")
    with page.expect_navigation() as nav:
        page.evaluate("""([name, b64]) => {
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], name, {type: "image/jpeg"}));
            EVENT;
        }""".replace("EVENT", event), [name, base64.b64encode(data).decode()])
    return nav.value


def drop(page, base: str, name: str, data: bytes):
    """Drop a file on the drop zone (a real drop event carrying a File)."""
    return _dispatch(page, base, name, data, 'document.getElementById("drop").dispatchEvent('
                                             'new DragEvent("drop", {dataTransfer: dt, bubbles: true}))')


def paste(page, base: str, name: str, data: bytes):
    """Paste a photo (a real paste event whose clipboard holds a File)."""
    return _dispatch(page, base, name, data,
                     'document.dispatchEvent(new ClipboardEvent("paste", {clipboardData: dt, bubbles: true}))')


def test_a_catalogue_photo_finds_its_product_first_and_the_field_keeps_the_photo(site, page):
    base, settings = site
    row, data = catalogue_photo(settings)
    response = choose(page, base, "shoe.jpg", data)
    assert response.status == 200
    first = page.locator("li.card").first
    assert unquote(first.locator("a.card-link").get_attribute("href")) == f"/products/{row['product_id']}"
    assert "best" in first.get_attribute("class") and first.locator(".badge").inner_text() == "Same product"
    assert page.locator("h1").inner_text() == f"This looks like: {row['title']}"
    assert page.locator("#query-photo").evaluate("img => img.complete && img.naturalWidth > 0")
    answer = httpx.post(f"{base}/search", files={"photo": ("shoe.jpg", data, "image/jpeg")}, timeout=60).json()
    text = page.locator("body").inner_text()
    assert answer["index_id"] not in page.content() and answer["model_id"] not in page.content()
    assert str(answer["results"][0]["score"]) not in text and answer["results"][0]["image_id"] not in text
    # The file field holds the photo again, so "Search" searches it once more.
    page.wait_for_function("document.getElementById('photo').files.length === 1", timeout=10_000)
    with page.expect_navigation() as again:
        page.get_by_role("button", name="Search", exact=True).click()
    assert again.value.status == 200 and page.locator("li.card.best .badge").inner_text() == "Same product"


def test_a_photo_of_no_shoe_is_no_match_and_still_lists_the_closest(site, page):
    base, _ = site
    response = drop(page, base, "lake.jpg", landscape())
    assert response.status == 200
    assert page.locator("h1").inner_text() == "We couldn't find this shoe — is it a photo of a shoe?"
    assert page.locator("li.card").count() > 0 and page.locator("li.card.best").count() == 0
    assert page.locator("li.card").first.locator(".badge").inner_text() == "No match"
    assert page.locator("#query-photo").is_visible()


def test_bad_uploads_through_the_form_are_friendly_pages_not_json(site, page):
    base, _ = site
    cases = [("notes.jpg", b"<html><body>not a photo</body></html>", 415, "That file isn't a photo"),
             ("huge.jpg", b"\xff\xd8" + b"\0" * (UPLOAD_LIMIT + 100_000), 413, "That photo is too big (max 2 MB)")]
    for name, data, status, sentence in cases:
        response = choose(page, base, name, data)
        assert response.status == status, name
        assert sentence in page.get_by_role("alert").inner_text(), name
        assert '{"error"' not in page.content() and "not_image" not in page.locator("body").inner_text()
        assert page.locator("#photo").count() == 1  # the form is there to try again, for another file
        assert page.evaluate("document.getElementById('photo').files.length") == 0
        assert page.locator("#preview").is_hidden() and page.locator("#query-photo").count() == 0
    page.goto(base + "/products/jd:no-such-product")
    assert "We couldn't find that product" in page.locator("body").inner_text()


def test_the_product_page_lists_the_whole_gallery_with_each_decision(site, page):
    base, settings = site
    row, data = catalogue_photo(settings)
    assert paste(page, base, "pasted.jpg", data).status == 200
    with page.expect_navigation() as nav:
        page.locator("li.card a.card-link").first.click()
    assert nav.value.status == 200 and page.locator("h1").inner_text() == row["title"]
    photos = httpx.get(f"{base}/products/{quote(row['product_id'], safe=':')}", timeout=30,
                       headers={"Accept": "application/json"}).json()["photos"]
    assert len(photos) > 1 and all(p["kept"] is not None for p in photos)  # the whole gallery, every one judged
    badges = page.locator("li.photo .badge").all_inner_texts()
    assert badges == [{True: "✓ Kept", False: "✗ Dropped"}[p["kept"]] for p in photos]
    assert page.locator("li.photo img").first.evaluate("img => img.complete && img.naturalWidth > 0")
    assert page.locator("li.photo").first.inner_text().count("Decided by") == 1
    lineage = page.locator("section.analyst").inner_text()
    assert row["product_id"] in lineage and "denoise" in lineage
    assert row["product_id"] not in page.locator("main").inner_text().split("Lineage")[0]


def fits_a_phone(page) -> None:
    """No sideways scroll; every visible link, button and the drop zone at least 44 x 44 px."""
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    small = page.evaluate("""() => [...document.querySelectorAll('a, button, summary, label.drop')]
        .filter(el => el.offsetParent !== null)
        .map(el => [el.textContent.trim().slice(0, 30), el.getBoundingClientRect()])
        .filter(([_, r]) => r.height < 44 || r.width < 44).map(([t, r]) => `${t}: ${r.width}x${r.height}`)""")
    assert not small, small


def test_a_phone_sized_screen_never_scrolls_sideways(site, browser):
    base, settings = site
    row, data = catalogue_photo(settings)
    context = browser.new_context(**PHONE)
    try:
        page = context.new_page()
        page.goto(base + "/")
        fits_a_phone(page)
        page.keyboard.press("Tab")
        page.keyboard.press("Tab")  # the logo, then the photo field (its drop zone shows the focus)
        assert page.evaluate("document.activeElement.id") == "photo"
        assert page.locator("#drop").evaluate("el => getComputedStyle(el).outlineStyle") == "solid"
        choose(page, base, "shoe.jpg", data)
        fits_a_phone(page)
        boxes = [card.bounding_box() for card in page.locator("li.card").all()[:3]]
        assert boxes[0]["y"] == boxes[1]["y"] < boxes[2]["y"]  # two columns
        assert boxes[0]["x"] < boxes[1]["x"] and boxes[0]["width"] >= 150
        page.goto(f"{base}/products/{row['product_id']}")
        fits_a_phone(page)
        assert page.locator("li.photo").count() > 1
    finally:
        context.close()


def test_the_screenshot_script_saves_every_page_at_both_widths(site, browser, tmp_path):
    from PIL import Image as PILImage

    from scripts.screenshots import NAMES, WIDTHS, shoot

    base, settings = site
    _, data = catalogue_photo(settings)
    (tmp_path / "shoe.jpg").write_bytes(data)
    saved = shoot(browser, base, tmp_path / "shots", tmp_path / "shoe.jpg")
    assert sorted(p.name for p in saved) == sorted(f"{n}-{w}.png" for n in NAMES for w in WIDTHS)
    for path in saved:
        assert PILImage.open(path).width == int(path.stem.rsplit("-", 1)[1])


def test_an_analyst_corrects_a_decision_on_the_product_page(site, browser, tmp_path):
    """With ``api.write_token`` set, each photo has a "Mark as keep/drop" form: a wrong token is a friendly page,
    the right one records the correction and the page shows it (badge, who, why)."""
    from core.settings import Settings

    _, settings = site
    row, _ = catalogue_photo(settings)
    home = tmp_path / "home"
    shutil.copytree(settings.home, home)
    writable = Settings.load(home=home, overrides={"api.write_token": "s3cret"})
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    with serve_api(writable) as base:
        page = context.new_page()
        product_url = f"{base}/products/{quote(row['product_id'], safe=':')}"
        page.goto(product_url)
        was_kept = page.locator("li.photo").nth(1).locator(".badge").inner_text() == "✓ Kept"
        action, after, word = ("drop", "✗ Dropped", "dropped") if was_kept else ("keep", "✓ Kept", "kept")
        for token, status in (("wrong", 403), ("s3cret", 200)):
            page.goto(product_url)
            second = page.locator("li.photo").nth(1)
            second.locator("summary").click()
            second.get_by_label("Why").fill("a box, not the shoe")
            second.get_by_label("Your name").fill("mei")
            second.get_by_label("Write token").fill(token)
            with page.expect_navigation() as nav:
                second.get_by_role("button", name=f"Mark as {action}").click()
            assert nav.value.status == status
            if status == 403:
                assert "write token" in page.get_by_role("alert").inner_text() and '{"error"' not in page.content()
        assert f"Photo 2 is now {word}, by mei." in page.get_by_role("status").inner_text()
        second = page.locator("li.photo").nth(1)
        assert second.locator(".badge").inner_text() == after
        assert "Decided by a person (mei on " in second.inner_text() and "a box, not the shoe" in second.inner_text()
    context.close()
