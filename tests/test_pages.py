"""The shopper-facing HTML as pure functions (serving.pages): escaping, no internal ids, levels in words, prices,
links only to real web pages, friendly errors, the product page's decisions. The real browser: test_browser.py."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest

from serving.pages import format_price, friendly_message, render_error, render_product, render_search

HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'
IMAGE_ID = "3f786850e387550fdab836ed7e6dc881de23001b"
INDEX_ID = "index-20261206-171503-9f1c"
MODEL_ID = "netvlad-efficientnet_lite0-1a2b3c"


class Page(HTMLParser):
    """What a reader sees (text outside script/style) and every element's attributes."""

    def __init__(self, markup: str):
        super().__init__()
        self.text, self.tags, self._skip = [], [], 0
        self.feed(markup)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._skip += tag in ("script", "style")

    def handle_endtag(self, tag):
        self._skip -= tag in ("script", "style")

    def handle_data(self, data):
        if not self._skip:
            self.text.append(data)

    @property
    def visible(self) -> str:
        return " ".join(" ".join(self.text).split())

    def all(self, tag: str) -> list[dict]:
        return [attrs for t, attrs in self.tags if t == tag]


def hit(rank: int, level: str, **extra) -> dict:
    base = {"rank": rank, "product_id": f"jd:10000{rank}", "score": 0.8172803521156311, "level": level,
            "title": f"Runner {rank}", "brand": "Acme", "price": 452.99, "url": None, "image_id": IMAGE_ID,
            "photo_path": f"3f/{IMAGE_ID}.jpg", "product_url": f"/products/jd:10000{rank}",
            "photo_url": f"/photos/3f/{IMAGE_ID}.jpg", "thumb_url": f"/thumbs/{IMAGE_ID}.webp"}
    return {**base, **extra}


def result(level: str | None, hits: list[dict]) -> dict:
    return {"index_id": INDEX_ID, "model_id": MODEL_ID, "match_level": level, "levels": {"same": 0.95, "similar": 0.9},
            "results": hits, "query_thumb": "data:image/jpeg;base64,/9j/AA=="}


def test_hostile_titles_and_brands_are_text_not_markup():
    markup = render_search(result("same", [hit(1, "same", title=HOSTILE, brand=HOSTILE, url='https://a.example/"x')]))
    page = Page(markup)
    assert "<script>alert" not in markup and "<img src=x" not in markup
    assert all("onerror" not in attrs for _, attrs in page.tags)
    assert page.visible.count('<script>alert("x")</script>') >= 2  # the title (heading + card) and brand, as text
    assert 'https://a.example/&quot;x' in markup
    product = render_product({"product_id": "jd:1", "title": HOSTILE, "brand": HOSTILE, "price": 1, "url": None,
                              "photos": [], "lineage": [{"run": HOSTILE}]}, message=HOSTILE)
    assert "<script>alert" not in product and "<img src=x" not in product


def test_no_internal_ids_or_raw_scores_on_the_search_page():
    markup = render_search(result("similar", [hit(1, "similar"), hit(2, "none")]))
    page = Page(markup)
    for secret in (INDEX_ID, MODEL_ID, "0.817", "score", "index ", "model "):
        assert secret not in page.visible, secret
    assert INDEX_ID not in markup and MODEL_ID not in markup and "0.8172" not in markup
    assert IMAGE_ID not in page.visible and "jd:100001" not in page.visible
    assert not any(IMAGE_ID in v for t, a in page.tags for k, v in a.items() if k not in ("src", "href") and v)


@pytest.mark.parametrize("level, heading, badge", [
    ("same", "This looks like: Runner 1", "Same product"),
    ("similar", "Similar products", "Similar"),
    ("none", "We couldn't find this shoe — is it a photo of a shoe?", "No match"),
])
def test_match_levels_are_words_shoppers_understand(level, heading, badge):
    page = Page(render_search(result(level, [hit(1, level), hit(2, "none")])))
    h1 = page.visible.split(heading)
    assert len(h1) > 1, page.visible
    assert badge in page.visible and "No match" in page.visible  # the second card is no match in every case
    best = [a for a in page.all("li") if "best" in a.get("class", "").split()]
    assert len(best) == (1 if level == "same" else 0)
    assert ("Best match" in page.visible) == (level == "same")


def test_the_query_photo_is_shown_beside_the_results_and_the_form_keeps_working():
    page = Page(render_search(result("same", [hit(1, "same")])))
    query = [a for a in page.all("img") if a.get("id") == "query-photo"]
    assert query and query[0]["src"].startswith("data:image/jpeg")
    assert next(a for a in page.all("form") if a.get("id") == "search-form")["data-restore"] == "1"
    photo = next(a for a in page.all("input") if a.get("type") == "file")
    assert photo["accept"] == "image/*" and photo["name"] == "photo"
    assert [a for a in page.all("label") if a.get("for") == photo["id"]]  # the drop zone labels the input
    assert any(a.get("name") == "viewport" and "width=device-width" in a["content"] for a in page.all("meta"))
    blank = Page(render_search())
    assert next(a for a in blank.all("form") if a.get("id") == "search-form")["data-restore"] == "0"
    assert "Find a shoe by its photo" in blank.visible and not blank.all("ol")
    unsafe = Page(render_search({**result("none", [hit(1, "none")]), "query_thumb": "javascript:alert(1)"}))
    assert "javascript:" not in str(unsafe.all("img"))


@pytest.mark.parametrize("price, shown", [(452.99, "¥452.99"), (453, "¥453.00"), (1299.5, "¥1,299.50"),
                                          (0.1 + 0.2, "¥0.30"), (None, ""), (float("nan"), ""), ("n/a", "")])
def test_prices_have_two_decimals(price, shown):
    assert format_price(price) == shown
    page = Page(render_search(result("similar", [hit(1, "similar", price=price)])))
    assert (shown in page.visible) if shown else ("¥" not in page.visible)


def test_shop_links_only_for_real_web_urls_product_pages_always():
    hits = [hit(1, "same", url="https://item.jd.com/100001.html"), hit(2, "similar", url="file:///srv/catalog/p2"),
            hit(3, "none", url="javascript:alert(1)"), hit(4, "none", url="http://127.0.0.1:43185/100004.html")]
    page = Page(render_search(result("same", hits)))
    hrefs = [a["href"] for a in page.all("a")]
    assert "https://item.jd.com/100001.html" in hrefs
    assert not any(h.startswith(("file:", "javascript:")) for h in hrefs)
    assert not any("127.0.0.1" in h for h in hrefs)  # the demo shop on loopback, stopped after the demo
    assert {"/products/jd:100001", "/products/jd:100002", "/products/jd:100003"} <= set(hrefs)
    assert page.visible.count("Shop page") == 1


@pytest.mark.parametrize("code, status, expected", [
    ("too_large", 413, "That photo is too big (max 10 MB)"),
    ("not_image", 415, "That file isn't a photo"),
    ("no_index", 503, "Search isn't ready yet"),
    ("corrupt", 400, "damaged"),
    ("something_new", 500, "Something went wrong on our side"),
    ("something_new", 422, "wasn't right"),
])
def test_errors_are_plain_sentences_never_the_technical_message(code, status, expected):
    error = {"code": code, "message": f"{code}: content is not an image at /srv/home/x (run `shoesearch index`)"}
    page = Page(render_search(None, error, max_upload_bytes=10_000_000, status=status))
    assert expected in page.visible
    assert "shoesearch index" not in page.visible and "/srv/home" not in page.visible and f"{code}:" not in page.visible
    assert [a for a in page.all("div") if a.get("role") == "alert"]
    assert next(a for a in page.all("form") if a.get("id") == "search-form")["data-restore"] == "0"  # choose anew
    unknown_limit = friendly_message({"code": "too_large"})
    assert unknown_limit == "That photo is too big. Please choose a smaller photo or a screenshot."


def test_error_pages_are_whole_friendly_pages():
    missing = Page(render_error(404, {"code": "not_found", "message": "no product jd:404 in products_current"}))
    assert "Not found" in missing.visible and "products_current" not in missing.visible
    assert "/" in [a["href"] for a in missing.all("a")]
    broken = Page(render_error(500, {"code": "internal", "message": "Traceback: KeyError"}))
    assert "Something went wrong on our side" in broken.visible and "Traceback" not in broken.visible


def product_view(writable: bool) -> dict:
    """The shape of ``serving.products.product_view`` (``serving.schemas.Product``)."""
    photo = {"photo_url": "/photos/aa/a.jpg", "thumb_url": "/thumbs/a.webp", "override": None, "status": "ok"}
    return {"product_id": "jd:100001", "title": "Trail runner", "brand": "Acme", "price": 452.99,
            "category": "Running shoes", "shop_name": "Acme flagship", "url": None, "writable": writable, "photos": [
                {**photo, "image_id": "jd:100001#0", "position": 0, "kept": True, "distance": 0.0,
                 "rule_reason": "anchor", "decided_by": "rule"},
                {**photo, "image_id": "jd:100001#1", "position": 1, "kept": False, "distance": 1.3187,
                 "rule_reason": "far", "decided_by": "rule"},
                {**photo, "image_id": "jd:100001#2", "position": 2, "kept": True, "distance": 1.41,
                 "rule_reason": "far", "decided_by": "person",
                 "override": {"kept": True, "who": "mei", "decided_at": "2026-12-06T17:00:00", "reason": "same shoe",
                              "run_id": "override-1"}},
                {**photo, "image_id": "jd:100001#3", "position": 3, "kept": None, "distance": None,
                 "rule_reason": None, "decided_by": None},
                {**photo, "image_id": "jd:100001#4", "position": 4, "kept": False, "distance": None,
                 "status": "corrupt", "photo_url": None, "thumb_url": None, "rule_reason": "bad_image",
                 "decided_by": "rule"}],
            "lineage": [{"role": "catalog", "run_id": "crawl-7", "step": "crawl", "finished_at": None, "name": None},
                        {"role": "denoise", "run_id": "denoise-20261206-1", "step": "denoise", "finished_at": None,
                         "name": None}]}


def test_the_product_page_shows_every_photo_with_its_decision_in_words_and_colour():
    page = Page(render_product(product_view(writable=False)))
    photos = [a for a in page.all("li") if "photo" in a.get("class", "").split()]
    assert [a["class"] for a in photos] == ["photo is-kept", "photo is-dropped", "photo is-kept", "photo is-unknown",
                                            "photo is-dropped"]
    assert page.visible.count("✓ Kept") == 2 and page.visible.count("✗ Dropped") == 2
    assert "Not checked yet" in page.visible and "Not stored: corrupt" in page.visible
    badges = [a["class"] for a in page.all("span") if "badge" in a.get("class", "")]
    assert badges == ["badge kept", "badge dropped", "badge kept", "badge unknown", "badge dropped"]
    assert "Distance to the front photo: 1.319" in page.visible and "Front photo" in page.visible
    assert "Decided by the rule: too different from the front photo" in page.visible
    assert "Decided by a person (mei on 2026-12-06): “same shoe”" in page.visible
    assert "¥452.99" in page.visible and "Sold by Acme flagship" in page.visible
    assert "Shop page" not in page.visible  # no web URL, no shop link
    assert "(2 of 5 kept for search)" in page.visible
    assert len(page.all("img")) == 4  # the photo that was never stored has a placeholder, not a broken image
    shopper, lineage = page.visible.split("Lineage", 1)
    assert "denoise-20261206-1" in lineage and "jd:100001#1" in lineage and "override-1" in lineage
    assert "jd:100001" not in shopper and "crawl-7" not in shopper  # ids only in the analysts' section
    assert not page.all("form") and "Mark as" not in page.visible


def test_correction_forms_only_when_writable_and_the_message_after_a_post():
    markup = render_product({**product_view(writable=True), "url": "https://item.jd.com/100001.html"},
                            message="Photo 2 marked as keep.")
    page = Page(markup)
    forms = page.all("form")
    assert [f["action"] for f in forms] == [f"/products/jd%3A100001/photos/jd%3A100001%23{i}/decision"
                                            for i in range(4)]  # not the photo that was never stored
    decisions = [a["value"] for a in page.all("input") if a.get("name") == "decision"]
    assert decisions == ["drop", "keep", "drop", "drop"]  # the other way from each photo's decision
    assert {a.get("name") for a in page.all("input")} >= {"decision", "reason", "who", "token"}
    assert all(a.get("type") == "password" for a in page.all("input") if a.get("name") == "token")
    labels = {a["for"] for a in page.all("label")}
    assert all(a["id"] in labels for a in page.all("input") if a.get("type") != "hidden")
    assert "Photo 2 marked as keep." in page.visible
    assert "https://item.jd.com/100001.html" in [a["href"] for a in page.all("a")]
