"""The JSON answers of the HTTP API as pydantic models: ``/openapi.json`` types every field of them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from serving.errors import ApiError, ErrorDetail, public_message

Level = Literal["same", "similar", "none"]


class Hit(BaseModel):
    """One product found, with its best-matching photo."""

    rank: int = Field(description="1 = the best")
    product_id: str
    score: float = Field(description="cosine similarity of the product's best photo, rounded to 4 places")
    level: Level | None = Field(description="match level of this result: same product, similar, none; "
                                               "null when the index is not calibrated")
    title: str | None
    brand: str | None
    price: float | None = Field(description="2 decimals; null when unknown")
    url: str | None = Field(description="the shop's web page of the product; null when it has none")
    product_url: str = Field(description="this server's product page: /products/{product_id}")
    image_id: str = Field(description="the matching photo")
    photo_path: str = Field(description="the matching photo's path in the image store")
    photo_url: str = Field(description="/photos/{photo_path}")
    thumb_url: str = Field(description="a 256 px WebP of the photo: /thumbs/{sha1}.webp")


class MatchLevels(BaseModel):
    same: float = Field(description="from this score the best result is the same product")
    similar: float | None = Field(description="from this score it is similar; null: no such band")


class SearchResponse(BaseModel):
    index_id: str
    model_id: str
    match_level: Level | None = Field(description="the best result's level: same, similar, none (no "
                                                     "match); null when the index is not calibrated")
    levels: MatchLevels | None = Field(description="the index's calibrated thresholds (null: none)")
    results: list[Hit]


class Health(BaseModel):
    status: Literal["ready", "degraded", "starting", "no_index", "unhealthy"] = Field(
        description="ready (200): an index is loaded; degraded (200): searches are served, `problem` says what "
                    "is missing; starting, no_index, unhealthy (503): searches fail, `error` says why")
    index_id: str | None
    model_id: str | None
    problem: str | None = None
    error: ErrorDetail | None = None


class Override(BaseModel):
    decision: Literal["keep", "drop"] = Field(description="the person's decision")
    kept: bool = Field(description="the same: keep (true) or drop (false)")
    who: str
    when: str | None = Field(description="ISO 8601, UTC")
    reason: str
    run_id: str = Field(description="the override run that recorded it")


class Photo(BaseModel):
    image_id: str
    position: int = Field(description="0 = the product's front view, its reference photo")
    status: str = Field(description="ok, or why the photo was not stored (corrupt, not_image, ...)")
    photo_url: str | None
    thumb_url: str | None
    width: int | None
    height: int | None
    kept: bool | None = Field(description="the denoise decision in force; null: not denoised")
    distance: float | None = Field(description="to the reference photo's descriptor, rounded to 4 places")
    rule_reason: str | None = Field(description="the rule's verdict: anchor, near, far, duplicate, ...")
    decided_by: Literal["rule", "person"] | None
    override: Override | None


class LineageEntry(BaseModel):
    role: str = Field(description="catalog (the crawl or ingest), denoise, index (its build), switch (made it "
                                  "current), model")
    step: str | None
    run_id: str | None
    finished_at: str | None
    name: str | None = Field(description="the index id or the model id")


class Product(BaseModel):
    product_id: str
    title: str | None
    brand: str | None
    category: str | None
    shop_name: str | None
    price: float | None
    list_price: float | None
    url: str | None
    sku: str | None
    source: str | None
    crawled_at: str | None
    photos: list[Photo]
    lineage: list[LineageEntry]


class DecisionRequest(BaseModel):
    """A correction by hand of one photo's denoise decision (JSON, or the same fields as a form)."""

    decision: Literal["keep", "drop"]
    reason: str = Field(min_length=1, max_length=1000)
    who: str = Field(min_length=1, max_length=100)
    token: str | None = Field(None, description="the write token, when not sent as Authorization: Bearer")

    @classmethod
    def checked(cls, body) -> DecisionRequest:
        """``body`` validated, or a 422 :class:`ApiError` naming the first bad field."""
        try:
            return cls.model_validate(body if isinstance(body, dict) else {})
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err.get("loc", ())) or "body"
            raise ApiError(422, "invalid", public_message(f"{where}: {err.get('msg', 'invalid')}")) from None


class DecisionResponse(BaseModel):
    run_id: str = Field(description="the override run that recorded the correction")
    photo: Photo = Field(description="the photo with the decision now in force")


_DECISION_SCHEMA = DecisionRequest.model_json_schema()
# The request body of POST /products/{id}/photos/{image_id}/decision, read by hand (JSON or form) by the route.
DECISION_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": _DECISION_SCHEMA},
    "application/x-www-form-urlencoded": {"schema": _DECISION_SCHEMA}}}}
