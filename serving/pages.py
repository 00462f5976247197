"""The shopper-facing HTML: the search page, the product page and error pages (server-rendered, a little JS).

Pure functions from the API's JSON answers to whole pages; every value from the data is escaped here. No
internal ids, hashes or raw scores on shopper pages: a match level in words instead (ids stay in the JSON API
and in the product page's lineage section, which is for analysts). The CSS and JS in ``serving/static/`` are
inlined, so a page is one response that needs nothing else (no CDN, no web fonts).

What the caller (``serving.api``) passes:

* :func:`render_search` ``(result, error, max_upload_bytes=None, restore=False)``: ``result`` is the search
  JSON (``match_level``, ``results`` with ``level``, ``title``, ``brand``, ``price``, ``url``,
  ``product_url``, ``thumb_url``/``photo_url``) plus ``query_thumb``: a small ``data:`` URL of the query photo,
  shown beside the results (the page's JS also shows the chosen photo from the browser's copy when it is
  missing). ``error`` is ``{"code", "message"}``; the message is never shown, the code picks a sentence
  (:func:`friendly_message`). ``restore`` (default: when ``result`` is given): the file field gets the chosen
  photo back, so "Search" searches it again; not after an error about the photo.
* :func:`render_product` ``(view, message=None)``: ``view`` from ``serving.products.product_view``.
* :func:`render_error` ``(status, error)``: a whole page for 404/405/500 ... answering a browser.
"""

from __future__ import annotations

import html
import json
import math
from functools import cache
from pathlib import Path
from urllib.parse import quote

from serving.products import web_url

STATIC = Path(__file__).resolve().parent / "static"
LEVEL_WORDS = {"same": "Same product", "similar": "Similar", "none": "No match"}
HEADLINES = {
    "same": "This looks like: {title}",
    "similar": "Similar products",
    "none": "We couldn't find this shoe — is it a photo of a shoe?",
}
LEADS = {
    "same": "We found this shoe in our catalogue. Other close products follow.",
    "similar": "We didn't find this exact shoe, but these look alike.",
    "none": "Nothing in our catalogue looks like it. The closest products we have:",
    None: "The closest products in our catalogue:",
}
MESSAGES = {  # error code -> what a shopper reads ({mb}: the upload limit)
    "too_large": "That photo is too big (max {mb} MB). Please choose a smaller photo or a screenshot.",
    "bomb": "That photo has too many pixels for us to open. Please choose a smaller photo or a screenshot.",
    "not_image": "That file isn't a photo we can read. Please choose a JPEG, PNG or WebP photo.",
    "corrupt": "That photo seems to be damaged or incomplete. Please try another one.",
    "empty": "That file is empty. Please choose a photo.",
    "too_small": "That photo is too small to search with. Please use a larger photo.",
    "no_photo": "Please choose a photo of a shoe first.",
    "missing": "Please choose a photo of a shoe first.",
    "timeout": "The photo took too long to arrive. Please check your connection and try again.",
    "no_index": "Search isn't ready yet — the catalogue is still being prepared. Please try again later.",
    "not_ready": "Search isn't ready yet — the catalogue is still being prepared. Please try again later.",
    "starting": "Search is starting up. Please try again in a few seconds.",
    "busy": "We're busy right now. Please try again in a moment.",
    "overloaded": "We're busy right now. Please try again in a moment.",
    "bad_request": "Something about that request wasn't right. Please try again from the search page.",
    "invalid": "Something about that request wasn't right. Please try again from the search page.",
    "not_found": "We couldn't find that page.",
    "no_product": "We couldn't find that product. It may have been removed from the catalogue.",
    "method_not_allowed": "That page can't be used that way. Please go back to the search page.",
    "unavailable": "Search isn't available right now. Please try again later.",
    "forbidden": "That needs the server's write token. Please check it and try again.",
    "writes_disabled": "Corrections are switched off on this server.",
    "internal": "Something went wrong on our side. Please try again.",
}
STATUS_MESSAGES = {404: "not_found", 405: "method_not_allowed", 408: "timeout", 413: "too_large", 415: "not_image",
                   503: "not_ready"}
ERROR_TITLES = {404: "Not found", 405: "Not available", 503: "Not ready yet"}
RULE_REASONS = {  # denoising.rules verdicts in words
    "anchor": "the front photo, the one the others are compared with",
    "substitute": "stands in for a missing front photo", "near": "close to the front photo",
    "far": "too different from the front photo", "duplicate": "the same picture as another photo",
    "bad_image": "the file could not be read", "other_product": "shows another product",
}
DECISIONS = {True: ("kept", "✓ Kept"), False: ("dropped", "✗ Dropped"), None: ("unknown", "Not checked yet")}


def e(value) -> str:
    """``value`` as HTML text (None -> empty)."""
    return "" if value is None else html.escape(str(value), quote=True)


@cache
def _asset(name: str) -> str:
    return (STATIC / name).read_text(encoding="utf-8")


def format_price(price) -> str:
    """``¥452.99`` (two decimals, thousands separated); empty for no price."""
    if price is None or isinstance(price, bool):
        return ""
    try:
        value = float(price)
    except (TypeError, ValueError):
        return ""
    return f"¥{value:,.2f}" if math.isfinite(value) else ""


def friendly_message(error: dict | None, status: int | None = None, max_upload_bytes: int | None = None) -> str:
    """A plain sentence for an API error (by its code, else its HTTP status); never the technical message."""
    code = str((error or {}).get("code") or "")
    if code not in MESSAGES:
        code = STATUS_MESSAGES.get(status, "internal" if status is None or status >= 500 else "bad_request")
    text = MESSAGES[code]
    if "{mb}" in text:
        mb = f"{max_upload_bytes / 1e6:g}" if max_upload_bytes else ""
        text = text.format(mb=mb) if mb else text.replace(" (max {mb} MB)", "")
    return text


def page(title: str, body: str, *, script: bool = False) -> str:
    """A whole HTML page around ``body`` (``title`` already plain text, escaped here)."""
    js = f"<script>{_asset('search.js')}</script>" if script else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{e(title)} · shoesearch</title>
<style>{_asset('shoesearch.css')}</style></head>
<body><header class="top"><div class="wrap"><a class="logo" href="/">shoe<span>search</span></a></div></header>
<main class="wrap">{body}</main>{js}</body></html>"""


def search_form(restore: bool = False) -> str:
    """The upload form; its drop zone is the file input's label (keyboard: Tab to it, Enter opens the picker)."""
    return f"""<form id="search-form" class="search-form" method="post" action="/" enctype="multipart/form-data"
 data-restore="{'1' if restore else '0'}">
<label id="drop" class="drop" for="photo"><img id="preview" alt="" hidden>
<span><strong>Choose a photo of a shoe</strong>
<small id="drop-hint">Take a photo, or drop or paste one here</small></span>
<input id="photo" class="visually-hidden" type="file" name="photo" accept="image/*" required></label>
<button class="button" type="submit">Search</button>
</form>"""


def _card(hit: dict, best: bool) -> str:
    title = hit.get("title") or "Unnamed shoe"
    level = hit.get("level")
    product_url = hit.get("product_url") or f"/products/{quote(str(hit.get('product_id', '')), safe=':')}"
    thumb = hit.get("thumb_url") or hit.get("photo_url") or ""
    badge = (f'<span class="badge {e(level)}">{e(LEVEL_WORDS[level])}</span>' if level in LEVEL_WORDS else "")
    shop = web_url(hit.get("url"))
    shop_link = (f'<a class="shop" href="{e(shop)}" rel="noopener noreferrer" target="_blank">'
                 f'Shop page<span class="visually-hidden"> for {e(title)} (opens a new tab)</span> ↗</a>'
                 if shop else "")
    price = format_price(hit.get("price"))
    return f"""<li class="card{' best' if best else ''}">{'<span class="ribbon">Best match</span>' if best else ''}
<a class="card-link" href="{e(product_url)}"><img src="{e(thumb)}" alt="" loading="lazy" width="256" height="256">
<div class="card-title">{e(title)}</div></a>
<div class="card-body">{f'<div class="brand">{e(hit.get("brand"))}</div>' if hit.get("brand") else ''}
{f'<div class="price">{e(price)}</div>' if price else ''}{badge}{shop_link}</div></li>"""


def _answer(result: dict) -> str:
    hits = result.get("results") or []
    level = result.get("match_level")
    level = level if level in HEADLINES else None
    if not hits:
        return '<div class="notice">Our catalogue has no products to compare with yet. Please try again later.</div>'
    if level == "same":
        heading = HEADLINES["same"].format(title=hits[0].get("title") or "a shoe in our catalogue")
    else:
        heading = HEADLINES.get(level, "Closest products")
    query = result.get("query_thumb")
    src = f' src="{e(query)}"' if isinstance(query, str) and query.startswith("data:image/") else ""
    cards = "".join(_card(hit, best=(i == 0 and level == "same" and hit.get("level", "same") == "same"))
                    for i, hit in enumerate(hits))
    return f"""<div class="answer">
<figure class="query"{'' if src else ' hidden'}><img id="query-photo"{src} alt="The photo you searched with">
<figcaption>Your photo</figcaption></figure>
<section aria-labelledby="answer-title"><h1 id="answer-title">{e(heading)}</h1>
<p class="lead">{e(LEADS[level])}</p>
<ol class="cards">{cards}</ol></section></div>"""


def render_search(result: dict | None = None, error: dict | None = None, max_upload_bytes: int | None = None,
                  restore: bool | None = None, status: int | None = None) -> str:
    """The search page: the form, then the answer to a search (``result``) or a friendly error (``error``)."""
    restore = result is not None if restore is None else restore  # after an error: choose another photo
    parts = []
    if result is None:
        parts.append('<h1>Find a shoe by its photo</h1><p class="lead">Take or choose a photo of a shoe and we '
                     "will show you the product and ones like it.</p>")
    if error is not None:
        parts.append(f'<div class="notice error" role="alert">{e(friendly_message(error, status, max_upload_bytes))}'
                     "</div>")
    parts.append(search_form(restore))
    if result is not None:
        parts.append(_answer(result))
    title = "Search results" if result is not None else ("Search" if error is None else "Please try again")
    return page(title, "".join(parts), script=True)


def render_error(status: int, error: dict | None = None, max_upload_bytes: int | None = None) -> str:
    """A whole friendly page for an error answering a browser (404 product, 405, 500 ...)."""
    heading = ERROR_TITLES.get(status, "Something went wrong" if status >= 500 else "We couldn't do that")
    return page(heading, f"""<div class="error-page"><h1>{e(heading)}</h1>
<p class="lead" role="alert">{e(friendly_message(error, status, max_upload_bytes))}</p>
<div class="actions"><a class="button" href="/">Search by photo</a></div></div>""")


def _decision(photo: dict) -> tuple[str, str, str]:
    """(css class, label, who decided and why) of one photo's denoise decision."""
    kept = photo.get("kept")
    css, label = DECISIONS[kept if kept in (True, False) else None]
    override = photo.get("override")
    if override:
        who = override.get("who") or "a person"
        when = override.get("decided_at") or override.get("when")
        on = f" on {str(when)[:10]}" if when else ""
        reason = f": “{override['reason']}”" if override.get("reason") else ""
        return css, label, f"Decided by a person ({who}{on}){reason}"
    if photo.get("status") not in (None, "ok"):
        return css, label, f"Not stored: {photo['status'].replace('_', ' ')}"
    if kept is None:
        return css, label, "Not checked by the rule yet"
    why = RULE_REASONS.get(photo.get("rule_reason"), photo.get("rule_reason"))
    return css, label, f"Decided by the rule: {why}" if why else "Decided by the rule"


def _fix_form(product_id: str, photo: dict, n: int) -> str:
    """The analyst's form to set this photo's decision the other way (posted with the write token)."""
    to = "keep" if photo.get("kept") is False else "drop"
    action = f"/products/{quote(str(product_id), safe='')}/photos/{quote(str(photo['image_id']), safe='')}/decision"
    return f"""<details><summary>Mark as {to}</summary>
<form class="fix" method="post" action="{e(action)}"><input type="hidden" name="decision" value="{to}">
<label for="reason-{n}">Why</label><input id="reason-{n}" name="reason" required maxlength="1000">
<label for="who-{n}">Your name</label><input id="who-{n}" name="who" required maxlength="100" autocomplete="name">
<label for="token-{n}">Write token</label><input id="token-{n}" name="token" type="password" required
 autocomplete="off"><button class="button" type="submit">Mark as {to}</button></form></details>"""


def _photo(view: dict, photo: dict, n: int) -> str:
    css, label, who = _decision(photo)
    position = photo.get("position")
    name = "Front photo" if position == 0 else f"Photo {position + 1}" if isinstance(position, int) else "Photo"
    distance = photo.get("distance")
    dist = (f'<div>Distance to the front photo: {distance:.3f}</div>'
            if isinstance(distance, (int, float)) and math.isfinite(distance) else "")
    full, thumb = photo.get("photo_url"), photo.get("thumb_url") or photo.get("photo_url")
    alt = f"{name} of {view.get('title') or 'this shoe'}"
    image = (f'<a href="{e(full or thumb)}"><img src="{e(thumb)}" loading="lazy" width="256" height="256" '
             f'alt="{e(alt)}"></a>' if thumb else f'<div class="no-photo" role="img" aria-label="{e(alt)}: '
             'not available">No photo</div>')
    writable = view.get("writable") and photo.get("image_id") and (photo.get("status") in (None, "ok"))
    fix = _fix_form(view.get("product_id", ""), photo, n) if writable else ""
    return f"""<li class="photo is-{css}">{image}
<div class="card-body"><strong>{e(name)}</strong><span class="badge {css}">{e(label)}</span>{dist}
<div class="muted">{e(who)}</div></div>{fix}</li>"""


def _cell(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (dict, list)):
        return f"<code>{e(json.dumps(value, ensure_ascii=False, default=str))}</code>"
    return f"<code>{e(value)}</code>" if value is not None else ""


def table(rows: list) -> str:
    """Rows (dicts, or plain values) as an HTML table scrolling inside its box (the page never scrolls sideways)."""
    if not rows:
        return '<p class="muted">Nothing recorded.</p>'
    if not all(isinstance(r, dict) for r in rows):
        return "<ul>" + "".join(f"<li>{_cell(r)}</li>" for r in rows) + "</ul>"
    columns = list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f'<th scope="col">{e(c)}</th>' for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_cell(r.get(c))}</td>" for c in columns) + "</tr>" for r in rows)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _lineage(view: dict) -> str:
    photos = [{"photo": p.get("position"), "image_id": p.get("image_id"), "status": p.get("status"),
               "distance": p.get("distance"), "kept": p.get("kept"), "rule": p.get("rule_reason"),
               "decided_by": p.get("decided_by"), "override_run": (p.get("override") or {}).get("run_id")}
              for p in view.get("photos") or []]
    return f"""<section class="analyst" aria-labelledby="lineage-title"><h2 id="lineage-title">Lineage</h2>
<p class="muted">For analysts: product <code>{e(view.get('product_id'))}</code>, the runs that made its data,
and its photos' ids.</p>{table(view.get('lineage') or [])}<h3>Photos</h3>{table(photos)}</section>"""


def render_product(view: dict, message: str | None = None) -> str:
    """The product page: facts, shop link (a real web URL only), the gallery with each photo's denoise
    decision (colour and words), distance and who decided, hand-correction forms when writable, lineage."""
    title = view.get("title") or "Unnamed shoe"
    photos = view.get("photos") or []
    shop = web_url(view.get("url"))
    price = format_price(view.get("price"))
    kept = sum(1 for p in photos if p.get("kept") is True)
    facts = "".join([f'<span class="brand">{e(view.get("brand"))}</span>' if view.get("brand") else "",
                     f'<span class="muted">{e(view.get("category"))}</span>' if view.get("category") else "",
                     f'<span class="muted">Sold by {e(view.get("shop_name"))}</span>' if view.get("shop_name") else "",
                     f'<span class="price">{e(price)}</span>' if price else "",
                     f'<a class="shop" href="{e(shop)}" rel="noopener noreferrer">Shop page ↗</a>' if shop else ""])
    note = f'<div class="notice ok" role="status">{e(message)}</div>' if message else ""
    gallery = "".join(_photo(view, p, n) for n, p in enumerate(photos))
    return page(title, f"""<a class="back" href="/">← Search by photo</a>{note}
<h1>{e(title)}</h1><div class="facts">{facts}</div>
<h2>Photos <span class="muted">({kept} of {len(photos)} kept for search)</span></h2>
<p class="muted">Photos that don't show this shoe are dropped from search; each says why it was kept or dropped.</p>
<ul class="gallery">{gallery or '<li class="muted">No photos.</li>'}</ul>{_lineage(view)}""")
