"""Search by photo: embed a query photo with the current index's model and return the best products.

The current index and its model are loaded once per process and reloaded only when the
``indexes/CURRENT`` pointer names another index, so a switch takes effect on the next query and a
search never sees a half-built index (it holds the one it loaded).

A query photo is preprocessed exactly as a catalogue photo is (``photos.transforms.preprocess_path``,
from its bytes: one decode, reduced while decoding, EXIF orientation applied), after a header-only
check of its size, format and pixel count; at most ``api.max_decodes`` query photos decode at once.
"""

from __future__ import annotations

import io
import json
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError

from core.errors import ShoesearchError
from photos.imagestore import FORMATS, ImageLimits
from serving.index_store import INDEX_FILE, MAPPING_FILE, META_FILE, POINTER, PRODUCTS_FILE, current_index


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
    confident: bool | None = None  # score above the index's calibrated match threshold (None: not calibrated)

    def as_dict(self) -> dict:
        return asdict(self)


def upload_limits(settings) -> ImageLimits:
    a = settings.api
    return ImageLimits(max_bytes=a.max_upload_bytes, max_pixels=a.max_upload_pixels, min_side=a.min_upload_side)


def check_photo(data: bytes, limits: ImageLimits) -> None:
    """Refuse (:class:`BadPhoto`) what cannot be searched, from the size and the image header alone
    (nothing is decoded): empty, too large, not an image we read, a decompression bomb, too small."""
    n = len(data)
    if n == 0:
        raise BadPhoto("empty", "zero-byte upload")
    if n > limits.max_bytes:
        raise BadPhoto("too_large", f"{n} bytes > limit {limits.max_bytes}")
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt, (w, h) = img.format, img.size
    except UnidentifiedImageError:
        head = data[:64].lstrip().lower()
        raise BadPhoto("not_image", "content is HTML" if head.startswith((b"<!doctype", b"<html")) else
                       "content is not an image") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadPhoto("corrupt", f"does not decode: {exc}") from None
    if fmt not in FORMATS:
        raise BadPhoto("not_image", f"unsupported image format {fmt}")
    if w * h > limits.max_pixels:
        raise BadPhoto("bomb", f"{w}x{h} pixels > limit {limits.max_pixels}")
    if min(w, h) < limits.min_side:
        raise BadPhoto("too_small", f"{w}x{h} < {limits.min_side} px")


_DECODE_SLOTS: dict[int, threading.BoundedSemaphore] = {}
_SLOTS_LOCK = threading.Lock()


def decode_slots(n: int) -> threading.BoundedSemaphore:
    """The process-wide semaphore allowing ``n`` query decodes in flight (one per distinct ``n``)."""
    with _SLOTS_LOCK:
        return _DECODE_SLOTS.setdefault(max(1, n), threading.BoundedSemaphore(max(1, n)))


def photo_tensor(data: bytes, limits: ImageLimits, size: int, mean, std, slots: int):
    """Checked photo bytes -> the normalised 3 x size x size tensor, by the catalogue's own preprocessing
    (``photos.transforms.preprocess_path``), waiting while ``slots`` other decodes are in flight: a
    decode holds up to the full frame (3-4 bytes per pixel) until it is reduced."""
    from photos import transforms

    with decode_slots(slots):
        try:
            return transforms.preprocess_path(data, size, mean, std, limits.max_pixels)
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - any decoder failure is the photo's fault: one line
            raise BadPhoto("corrupt", f"does not decode: {type(exc).__name__}: {exc}") from None


class BadPhoto(ShoesearchError):
    """A query photo that cannot be searched; ``status`` is the image-store verdict."""

    def __init__(self, status: str, reason: str):
        super().__init__(f"bad photo ({status}): {reason}")
        self.status = status
        self.reason = reason


class Searcher:
    """A loaded index (faiss + row mapping + product details) and the model that embeds queries."""

    def __init__(self, settings, index_id: str):
        import faiss
        import torch

        from models.device import pick_device
        from serving.embedders import open_embedder

        self.settings = settings
        self.index_id = index_id
        directory = settings.indexes_dir / index_id
        if not (directory / META_FILE).exists():
            raise ShoesearchError(f"index directory {directory} is missing or incomplete")
        self.meta = json.loads((directory / META_FILE).read_text())
        self.model_id = self.meta["model_id"]
        self.match_threshold = self.meta.get("match_threshold")  # None for indexes built before calibration
        self.index = faiss.read_index(str(directory / INDEX_FILE))
        mapping = pq.read_table(directory / MAPPING_FILE).sort_by("row")
        self.image_ids = mapping.column("image_id").to_pylist()
        self.product_ids = mapping.column("product_id").to_pylist()
        self.paths = mapping.column("path").to_pylist()
        self.products = {p["product_id"]: p for p in pq.read_table(directory / PRODUCTS_FILE).to_pylist()}
        self.embedder = open_embedder(settings, self.model_id)
        self.device = pick_device(settings.embed.device)
        if isinstance(self.embedder, torch.nn.Module):  # trained embedders place themselves
            self.embedder.to(self.device)
        if self.embedder.dim != self.index.d:
            raise ShoesearchError(f"model {self.model_id} gives {self.embedder.dim}-d vectors, index holds {self.index.d}-d")
        self._lock = threading.Lock()

    def embed(self, images: list[Image.Image]) -> np.ndarray:
        """L2-normalised descriptors (n x d float32) of RGB photos, preprocessed as the model expects."""
        import torch

        from photos.transforms import preprocess

        e = self.embedder
        return self.embed_tensors(torch.stack([preprocess(img.convert("RGB"), e.image_size, e.mean, e.std)
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
                if product_id in seen:
                    continue
                seen.add(product_id)
                product = self.products.get(product_id, {})
                hits.append(SearchHit(
                    rank=len(hits) + 1, product_id=product_id, score=float(score),
                    title=product.get("title"), brand=product.get("brand"), price=product.get("price"),
                    url=product.get("url"), image_id=self.image_ids[row], photo_path=self.paths[row],
                    confident=None if self.match_threshold is None else bool(score >= self.match_threshold),
                ))
                if len(hits) == k:
                    break
            results.append(hits)
        return results

    def search(self, photo, k: int) -> list[SearchHit]:
        """The top ``k`` products for a PIL image or a tensor from :meth:`photo_tensor`."""
        if isinstance(photo, Image.Image):
            return self.search_vectors(self.embed([photo]), k)[0]
        return self.search_vectors(self.embed_tensors(photo.unsqueeze(0)), k)[0]


_SEARCHERS: dict[str, Searcher] = {}
_LOAD_LOCK = threading.Lock()


def current_index_id(settings) -> str | None:
    """The index id the ``CURRENT`` pointer names (None before the first switch)."""

    pointer = settings.indexes_dir / POINTER
    if pointer.exists():
        return pointer.read_text().strip() or None
    info = current_index(settings)  # repairs a missing pointer from the indexes table
    return info.index_id if info else None


def get_searcher(settings) -> Searcher:
    """The searcher for the current index, loaded once per index per process."""
    if str(settings.home) not in _SEARCHERS:  # first load: reconcile the pointer with the table
        current_index(settings)
    index_id = current_index_id(settings)
    if index_id is None:
        raise ShoesearchError("no index yet: run `shoesearch index` (or `shoesearch nightly`) first")
    key = str(settings.home)
    with _LOAD_LOCK:
        searcher = _SEARCHERS.get(key)
        if searcher is None or searcher.index_id != index_id:
            searcher = Searcher(settings, index_id)
            _SEARCHERS[key] = searcher
    return searcher


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
