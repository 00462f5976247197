"""Search by photo: embed a query photo with the current index's model and return the best products.

The current index and its model are loaded once per process; the ``indexes`` table is re-read when its
directory or the ``indexes/CURRENT`` pointer changes (one ``stat`` per query), so a switch takes effect on
the next query, also one whose pointer write was lost to a kill, and a search never sees a half-built
index (it holds the one it loaded). An index whose files cannot be read leaves the last good one serving,
and the problem names the file (:func:`health`); search reads the index's own files, no warehouse table
but ``indexes`` (and ``models`` for a trained model).

A query photo is preprocessed exactly as a catalog photo is (``photos.transforms.preprocess_path``,
from its bytes: one decode, reduced while decoding, EXIF orientation applied), after a header-only
check of its size, format and pixel count; at most ``api.max_decodes`` query photos decode at once.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from core.errors import ShoesearchError
from index.faiss_build import level_of, levels_of_meta
from index.store import (
    INDEX_FILE,
    MAPPING_FILE,
    META_FILE,
    POINTER,
    PRODUCTS_FILE,
    IndexUnavailable,
    current_index,
    read_index_file,
    serving_stamp,
)
from photos.imagestore import ImageLimits, inspect_header

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchHit:
    """One product found, with its best-matching photo."""

    rank: int
    product_id: str
    score: float  # cosine similarity of the best photo (1 = identical descriptor)
    title: str | None
    brand: str | None
    price: float | None
    url: str | None
    image_id: str
    photo_path: str  # relative to the images directory (the file is settings.images_dir / photo_path)
    level: str | None = None  # "same" / "similar" / "none" by the index's match levels (None: not calibrated)

    def as_dict(self) -> dict:
        return asdict(self)


def upload_limits(settings) -> ImageLimits:
    a = settings.api
    return ImageLimits(max_bytes=a.max_upload_bytes, max_pixels=a.max_upload_pixels, min_side=a.min_upload_side,
                       max_scans=a.max_upload_scans, decode_cpu_s=a.decode_cpu_s)


def check_photo(data: bytes, limits: ImageLimits) -> None:
    """Refuse (:class:`BadPhoto`) what cannot be searched, from the size and the image header alone
    (nothing is decoded): empty, too large, not an image we read, a decompression bomb (pixels or JPEG
    scans), too small (``photos.imagestore.inspect_header``, as for a crawled photo)."""
    info = inspect_header(data, limits, empty="zero-byte upload")
    if info.status != "ok":
        raise BadPhoto(info.status, info.reason)


_DECODE_SLOTS: dict[int, threading.BoundedSemaphore] = {}
_SLOTS_LOCK = threading.Lock()


def decode_slots(n: int) -> threading.BoundedSemaphore:
    """The process-wide semaphore allowing ``n`` query decodes in flight (one per distinct ``n``)."""
    with _SLOTS_LOCK:
        return _DECODE_SLOTS.setdefault(max(1, n), threading.BoundedSemaphore(max(1, n)))


def photo_tensor(data: bytes, limits: ImageLimits, size: int, mean, std, slots: int):
    """Checked photo bytes -> the normalised 3 x size x size tensor, by the catalog's own preprocessing
    (``photos.decoding.load_rgb``, then ``photos.transforms.preprocess``), waiting while ``slots`` other
    decodes are in flight: a decode holds up to the full frame (3-4 bytes per pixel) until it is reduced.
    The decode runs in a worker process killed past ``limits.decode_cpu_s`` of CPU time (``bomb``)."""
    from photos import decode_worker, transforms

    with decode_slots(slots):
        try:
            img = decode_worker.decode_rgb(data, size, limits.max_pixels, limits.max_scans, limits.decode_cpu_s)
        except decode_worker.TooCostly as exc:
            raise BadPhoto("bomb", str(exc)) from None
        except decode_worker.DecodeFailed as exc:  # any decoder failure is the photo's fault: one line
            raise BadPhoto("corrupt", f"does not decode: {exc.kind}: {exc}") from None
    return transforms.preprocess(img, size, mean, std)


class BadPhoto(ShoesearchError):
    """A query photo that cannot be searched; ``status`` is the image-store verdict."""

    def __init__(self, status: str, reason: str):
        super().__init__(f"bad photo ({status}): {reason}")
        self.status = status
        self.reason = reason


def _read_meta(path: Path) -> dict:
    meta = json.loads(path.read_text())
    meta["model_id"]  # noqa: B018 - a meta.json without it is as unreadable as a truncated one (KeyError)
    return meta


def _read_mapping(path: Path) -> tuple[list, list, list]:
    """(image ids, product ids, photo paths) by faiss row; a row an incremental update removed (``removed``,
    ``index.incremental``) has no product id: search skips it."""
    mapping = pq.read_table(path).sort_by("row")
    image_ids, product_ids, paths = (mapping.column(c).to_pylist() for c in ("image_id", "product_id", "path"))
    if "removed" in mapping.column_names:
        product_ids = [None if gone else p for p, gone in zip(product_ids, mapping.column("removed").to_pylist())]
    return image_ids, product_ids, paths


def _read_products(path: Path) -> dict[str, dict]:
    """Product details by id; a non-finite price stored before writes refused them is shown as none."""
    products = {p["product_id"]: p for p in pq.read_table(path).to_pylist()}
    for product in products.values():
        if isinstance(product.get("price"), float) and not math.isfinite(product["price"]):
            product["price"] = None
    return products


class Searcher:
    """A loaded index (faiss + row mapping + product details) and the model that embeds queries."""

    def __init__(self, settings, index_id: str):
        import torch

        from embedding.embedders import open_embedder
        from models.device import pick_device

        self.settings = settings
        self.index_id = index_id
        self.problem: str | None = None  # why results lack something (the product details), or None
        self._load_files(settings.indexes_dir / index_id)
        self.embedder = open_embedder(settings, self.model_id)
        self.device = pick_device(settings.embed.device)
        if isinstance(self.embedder, torch.nn.Module):  # trained embedders place themselves
            self.embedder.to(self.device)
        if self.embedder.dim != self.index.d:
            raise ShoesearchError(f"model {self.model_id} gives {self.embedder.dim}-d vectors, index holds {self.index.d}-d")
        self._lock = threading.Lock()

    def _load_files(self, directory: Path) -> None:
        """The index's files, each refused (:class:`IndexUnavailable`) with its name when unreadable. The product
        details (titles, prices) are optional: without them results show product ids and ``problem`` says why."""
        import faiss

        s = self.settings
        self.meta = read_index_file(s, directory, META_FILE, _read_meta)
        self.model_id = self.meta["model_id"]
        self._levels = levels_of_meta(self.meta)  # None for indexes built before calibration
        self.index = read_index_file(s, directory, INDEX_FILE, lambda p: faiss.read_index(str(p)))
        self.image_ids, self.product_ids, self.paths = read_index_file(s, directory, MAPPING_FILE, _read_mapping)
        if len(self.image_ids) != self.index.ntotal:
            raise IndexUnavailable(f"{directory.name}: {INDEX_FILE} holds {self.index.ntotal} vectors but "
                                   f"{MAPPING_FILE} {len(self.image_ids)} rows (rebuild it with `shoesearch index`)")
        try:
            self.products = read_index_file(s, directory, PRODUCTS_FILE, _read_products)
        except IndexUnavailable as exc:
            self.products, self.problem = {}, f"{exc}; results show product ids only"
            log.warning("%s", self.problem)

    def embed(self, images: list[Image.Image]) -> np.ndarray:
        """L2-normalised descriptors (n x d float32) of RGB photos, preprocessed as the model expects."""
        import torch

        from photos.decoding import eight_bit
        from photos.transforms import preprocess

        e = self.embedder
        return self.embed_tensors(torch.stack([preprocess(eight_bit(img).convert("RGB"), e.image_size, e.mean, e.std)
                                               for img in images]))

    def embed_tensors(self, batch) -> np.ndarray:
        """L2-normalised descriptors (n x d float32) of a batch of preprocessed photos (n x 3 x s x s)."""
        import torch

        with self._lock, torch.inference_mode():
            out = self.embedder(batch.to(self.device))
        return np.ascontiguousarray(out.float().cpu().numpy(), dtype=np.float32)

    def photo_tensor(self, data: bytes, limits: ImageLimits, slots: int):
        """Checked query photo bytes -> this model's input tensor (see :func:`photo_tensor`)."""
        e = self.embedder
        return photo_tensor(data, limits, e.image_size, e.mean, e.std, slots)

    def search_vectors(self, queries: np.ndarray, k: int) -> list[list[SearchHit]]:
        """Top-``k`` products per query vector, deduplicated by product (best photo's score)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        fetch = min(max(self.settings.index.photos_per_query, k), self.index.ntotal)
        while True:
            scores, rows = self.index.search(queries, fetch)
            results = self._top_products(scores, rows, k)
            if fetch >= self.index.ntotal or all(len(hits) == k for hits in results):
                return results
            fetch = min(fetch * 4, self.index.ntotal)  # many photos per product: look deeper

    def _top_products(self, scores: np.ndarray, rows: np.ndarray, k: int) -> list[list[SearchHit]]:
        results = []
        for score_row, id_row in zip(scores, rows):
            hits, seen = [], set()
            for score, row in zip(score_row, id_row):
                if row < 0:
                    continue
                product_id = self.product_ids[row]
                if product_id is None or product_id in seen:  # a removed photo, or a product already listed
                    continue
                seen.add(product_id)
                product = self.products.get(product_id, {})
                hits.append(SearchHit(
                    rank=len(hits) + 1, product_id=product_id, score=float(score),
                    title=product.get("title"), brand=product.get("brand"), price=product.get("price"),
                    url=product.get("url"), image_id=self.image_ids[row], photo_path=self.paths[row],
                    level=level_of(float(score), self._levels),
                ))
                if len(hits) == k:
                    break
            results.append(hits)
        return results

    @property
    def match_levels(self) -> dict | None:
        """``{"same": float, "similar": float | None}`` (no ``similar``: an index calibrated with one threshold),
        or None for an index never calibrated."""
        return None if self._levels is None else dict(self._levels)

    def warm_up(self) -> float:
        """One search of a blank photo through the whole query path (decode worker, model, index), so the first
        real query is as fast as the rest; returns its seconds."""
        import io

        started = time.perf_counter()
        limits = upload_limits(self.settings)
        side = max(256, limits.min_side)
        blank = io.BytesIO()
        Image.new("RGB", (side, side), (128, 128, 128)).save(blank, "JPEG")
        try:
            self.search(self.photo_tensor(blank.getvalue(), limits, self.settings.api.max_decodes), 1)
        except Exception as exc:  # noqa: BLE001 - a failed warm-up costs the first query its speed, nothing more
            log.warning("warm-up search failed: %s", exc)
        return time.perf_counter() - started

    def search(self, photo, k: int) -> list[SearchHit]:
        """The top ``k`` products for a PIL image or a tensor from :meth:`photo_tensor`."""
        if isinstance(photo, Image.Image):
            return self.search_vectors(self.embed([photo]), k)[0]
        return self.search_vectors(self.embed_tensors(photo.unsqueeze(0)), k)[0]


@dataclass
class Serving:
    """What one process serves for one home: the searcher loaded, the :func:`serving_stamp` it was
    checked against, and the problem met loading the newest index (``searcher``: the last good one)."""

    stamp: tuple | None = None
    searcher: Searcher | None = None
    problem: ShoesearchError | None = None


_SERVING: dict[str, Serving] = {}
_LOAD_LOCK = threading.Lock()


def current_index_id(settings) -> str | None:
    """The index id the ``CURRENT`` pointer names (None before the first switch); a missing home is refused."""

    pointer = settings.indexes_dir / POINTER
    if pointer.exists():
        return pointer.read_text().strip() or None
    info = current_index(settings, must_exist=True)  # repairs a missing pointer from the indexes table
    return info.index_id if info else None


def _refresh(settings, state: Serving) -> None:
    """Load the index the ``indexes`` table names current, unless it is the one loaded; on failure keep
    the one loaded (if any) and record the problem, one line naming the file."""
    try:
        info = current_index(settings, must_exist=True)  # the table is the truth (repairs the pointer)
        if info is None:
            raise ShoesearchError("no index yet: run `shoesearch index` (or `shoesearch nightly`) first")
        if state.searcher is None or state.searcher.index_id != info.index_id:
            searcher = Searcher(settings, info.index_id)
            log.info("index %s loaded; warm-up search %.2f s", info.index_id, searcher.warm_up())
            state.searcher = searcher
        state.problem = ShoesearchError(state.searcher.problem) if state.searcher.problem else None
    except ShoesearchError as exc:
        state.problem = exc
    except Exception as exc:  # noqa: BLE001 - nothing loading an index may turn searches into bare 500s
        log.exception("loading the current index failed")
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        state.problem = ShoesearchError(f"cannot load the current index: {type(exc).__name__}: {first}")
    if state.problem is not None and state.searcher is None:
        state.searcher = _pointer_searcher(settings)  # e.g. the indexes table unreadable: the fast path serves
    if state.problem is not None:
        log.warning("%s%s", state.problem, f" (still serving index {state.searcher.index_id})"
                    if state.searcher else "")


def _pointer_searcher(settings) -> Searcher | None:
    """The searcher of the index the ``CURRENT`` pointer names, if it loads (None otherwise)."""
    try:
        index_id = (settings.indexes_dir / POINTER).read_text().strip()
        return Searcher(settings, index_id) if index_id else None
    except (OSError, ShoesearchError):
        return None


def serving(settings) -> Serving:
    """The :class:`Serving` state of this home, brought up to date: the ``indexes`` table is re-read only
    when :func:`serving_stamp` changed (a switch, also one whose pointer write was lost to a kill)."""
    stamp = serving_stamp(settings)
    with _LOAD_LOCK:
        state = _SERVING.setdefault(str(settings.home), Serving())
        if state.stamp != stamp:
            _refresh(settings, state)
            state.stamp = stamp
        return state


def get_searcher(settings) -> Searcher:
    """The searcher for the current index, loaded once per index per process; the last good one when a newer
    index cannot be loaded; with none, the problem (a :class:`ShoesearchError` naming the file)."""
    state = serving(settings)
    if state.searcher is None:
        raise state.problem
    return state.searcher


def health(settings) -> tuple[int, dict]:
    """(HTTP status, body) of ``GET /health``: ``ok`` (200); ``degraded`` (200: searches are served, by the last
    good index or without product details, ``problem`` says why); ``unhealthy`` (503: searches fail, ``error``)."""
    state = serving(settings)
    if state.searcher is None:
        return 503, {"status": "unhealthy", "index_id": None, "error": str(state.problem)}
    if state.problem is not None:
        return 200, {"status": "degraded", "index_id": state.searcher.index_id, "problem": str(state.problem)}
    return 200, {"status": "ok", "index_id": state.searcher.index_id}


def match_level(hits: list[SearchHit]) -> str | None:
    """The answer's match level: the top hit's (None with no hits, or an index never calibrated)."""
    return hits[0].level if hits else None


def check_k(settings, k: int | None) -> int:
    """``k`` (default ``index.search_k``) if it is in 1..``api.max_k``, the HTTP API's bound; else a one-line error."""
    if k is None:
        k = settings.index.search_k
    if not 1 <= k <= settings.api.max_k:
        raise ShoesearchError(f"k must be between 1 and {settings.api.max_k} (api.max_k), got {k}")
    return k


def search(settings, photo: str | Path | bytes | Image.Image, k: int | None = None) -> list[SearchHit]:
    """The top ``k`` products (default ``index.search_k``) for a photo (path, bytes or PIL image); a file or
    bytes are checked and preprocessed as the HTTP API does it (:func:`check_photo`, :func:`photo_tensor`)."""
    k = check_k(settings, k)
    if isinstance(photo, (str, Path)):
        path = Path(photo)
        if not path.is_file():
            raise ShoesearchError(f"no such photo: {path}")
        photo = path.read_bytes()
    if isinstance(photo, Image.Image):
        return get_searcher(settings).search(photo, k)
    limits = upload_limits(settings)
    check_photo(photo, limits)
    searcher = get_searcher(settings)
    return searcher.search(searcher.photo_tensor(photo, limits, settings.api.max_decodes), k)
