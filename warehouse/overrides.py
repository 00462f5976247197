"""Corrections by hand: a person's denoise decision on one photo, over the rule's (table ``denoise_overrides``).

This module is the one owner of the table. An analyst (``shoesearch override``, or the API's product page with
``api.write_token``) marks a photo's decision wrong; each correction is a run of step ``override`` (lineage: the
run that wrote the photo and the denoise run it corrects), one row in ``denoise_overrides``. The newest correction
of a photo wins, and ``withdraw_override`` hands the photo back to the rule. A correction is about the photo's
content (its ``sha1``): a re-crawled photo with other content is judged afresh.

``denoise_current`` (and ``views.DENOISE_OF_RUN``, what ``index`` and ``train`` select their photos with) apply
them: ``kept`` is the person's decision where there is one, ``rule_kept`` the rule's, ``decided_by`` 'person' or
'rule'. The materialised current views name ``denoise_overrides`` among their inputs, so a correction makes them
stale at once, and they are rewritten right after it commits.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from core.errors import ShoesearchError
from warehouse import latest_run, open_warehouse, start_run
from warehouse.conform import key_of
from warehouse.runs import now, refresh_current

STEP = "override"
MAX_ID_CHARS = 300
MAX_WHO_CHARS = 100
MAX_REASON_CHARS = 1000
_BIDI = re.compile("[\u202a-\u202e\u2066-\u2069]")  # direction overrides: a reason must read as it is stored


class BadOverride(ShoesearchError):
    """A correction that cannot be recorded as given (no reason, no name, a photo that cannot be kept)."""


class UnknownImage(BadOverride):
    """An image id that is not a photo of a current product."""

    def __init__(self, image_id: str):
        super().__init__(f"no current photo {image_id!r}: image ids look like 'jd:100012345#3' "
                         "(see `shoesearch sql \"SELECT image_id FROM images_current\"`)")
        self.image_id = image_id


class NothingToWithdraw(BadOverride):
    """A withdrawal of a photo that has no correction by hand."""


def _text(name: str, value: Any, limit: int) -> str:
    """``value`` on one line (whitespace runs become one space), refused when empty, too long or with controls."""
    if not isinstance(value, str):
        raise BadOverride(f"{name} must be text")
    text = " ".join(value.split())
    if not text:
        raise BadOverride(f"a correction needs a {name}")
    if len(text) > limit:
        raise BadOverride(f"{name} is {len(text)} characters; at most {limit}")
    if _BIDI.search(text) or any(unicodedata.category(c) == "Cc" for c in text):
        raise BadOverride(f"{name} holds control characters")
    return text


def _photo(wh, image_id: Any) -> dict:
    """The current photo ``image_id`` (image row + the current denoise run's decision), or :class:`UnknownImage`."""
    if not isinstance(image_id, str) or not image_id or len(image_id) > MAX_ID_CHARS:
        raise UnknownImage(str(image_id)[:MAX_ID_CHARS])
    rows = wh.query("SELECT image_id, product_id, sha1, status, run_id FROM images_current WHERE image_key = ? "
                    "AND image_id = ?", [key_of(image_id), image_id]).to_pylist()
    if not rows:
        raise UnknownImage(image_id)
    photo = rows[0]
    denoise_run = latest_run(wh, "denoise")
    rule = wh.query("SELECT kept FROM denoise WHERE run_id = ? AND image_key = ? AND sha1 IS NOT DISTINCT FROM ?",
                    [denoise_run, key_of(image_id), photo["sha1"]]).to_pylist() if denoise_run else []
    return {**photo, "denoise_run": denoise_run, "rule_kept": rule[0]["kept"] if rule else None}


def _active(wh, image_id: str) -> dict | None:
    rows = wh.query("SELECT * FROM denoise_overrides_current WHERE image_key = ? AND image_id = ?",
                    [key_of(image_id), image_id]).to_pylist()
    return rows[0] if rows else None


def _record(settings, image_id: str, kept: bool | None, who: str, reason: str, flow: str | None) -> str:
    who, reason = _text("who", who, MAX_WHO_CHARS), _text("reason", reason, MAX_REASON_CHARS)
    wh = open_warehouse(settings, must_exist=True)
    if wh.read_only:
        raise BadOverride(f"the data home {settings.home} is read-only: a correction cannot be recorded there")
    photo = _photo(wh, image_id)
    if kept and photo["status"] != "ok":
        raise BadOverride(f"cannot keep {image_id}: its photo is {photo['status']} (there is nothing to index)")
    if kept is None and _active(wh, image_id) is None:
        raise NothingToWithdraw(f"{image_id} has no correction by hand to withdraw")
    params = {"image_id": image_id, "kept": kept, "who": who, "reason": reason}
    with start_run(wh, step=STEP, params=params, inputs=[photo["run_id"], photo["denoise_run"]], flow=flow) as run:
        run.write("denoise_overrides", [{
            "image_id": image_id, "product_id": photo["product_id"], "sha1": photo["sha1"], "kept": kept,
            "rule_kept": photo["rule_kept"], "who": who, "decided_at": now(), "reason": reason}])
        verb = "withdrawn: the rule decides" if kept is None else ("kept" if kept else "dropped")
        run.message = f"{image_id} {verb} by {who}: {reason}"
    refresh_current(wh)  # start_run refreshes after crawl/ingest/denoise only; until this, the views are live
    return run.run_id


def record_override(settings, image_id: str, kept: bool, who: str, reason: str, *, flow: str | None = None) -> str:
    """Record ``who``'s decision to keep (``kept=True``) or drop photo ``image_id``; returns the run id.

    The newest correction of a photo wins; ``flow`` names where it came from in ``runs.flow`` (e.g. "api";
    default "cli"). :class:`UnknownImage` for an id that is not a current photo, :class:`BadOverride` for an
    empty ``who`` / ``reason`` or for keeping a photo that is not readable.
    """
    if not isinstance(kept, bool):
        raise BadOverride("a correction keeps (true) or drops (false) the photo")
    return _record(settings, image_id, kept, who, reason, flow)


def withdraw_override(settings, image_id: str, who: str, reason: str, *, flow: str | None = None) -> str:
    """Withdraw the correction of ``image_id``: the rule decides again; returns the run id.

    :class:`NothingToWithdraw` when the photo has no correction by hand.
    """
    return _record(settings, image_id, None, who, reason, flow)


def overrides_for_product(settings, product_id: str) -> dict[str, dict]:
    """{image_id: {"kept", "rule_kept", "who", "when", "reason", "run_id"}}: the corrections in force on the
    current photos of ``product_id`` (withdrawn ones left out; an unknown product has none)."""
    wh = open_warehouse(settings, must_exist=True)
    rows = wh.query("""SELECT image_id, kept, rule_kept, who, decided_at, reason, run_id
                       FROM denoise_overrides_current WHERE product_key = ? AND product_id = ? ORDER BY image_id""",
                    [key_of(str(product_id)), str(product_id)]).to_pylist()
    return {r["image_id"]: {"kept": r["kept"], "rule_kept": r["rule_kept"], "who": r["who"],
                            "when": r["decided_at"], "reason": r["reason"], "run_id": r["run_id"]} for r in rows}


def overrides_run(wh) -> str | None:
    """The newest successful ``override`` run (for a step's lineage: the corrections it selected its photos with)."""
    return latest_run(wh, STEP)
