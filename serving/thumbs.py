"""Thumbnails: a 256 px (longest side) WebP of a stored photo, made once per content hash and kept on disk.

``GET /thumbs/<sha1>.webp`` names the photo by its content hash (``images.sha1``; the store keeps the photo as
``images/<aa>/<sha1>.<ext>``), so one thumbnail serves every product showing that photo and never goes stale:
it is cached under ``<home>/thumbs/<aa>/<sha1>.webp`` (written atomically) and served as immutable. The photo
is decoded by the bounded decoder in a worker process (``photos.decode_worker``: killed past
``api.decode_cpu_s`` of CPU time, pixel and JPEG-scan limits), at most ``api.max_decodes`` at a time, as an
uploaded query photo is: a hostile stored photo cannot stall the server.
"""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path

from PIL import Image

from core.files import atomic_write_bytes
from photos.imagestore import ImageLimits, read_photo_file

THUMB_SIDE = 256
THUMB_QUALITY = 80
THUMBS_DIR = "thumbs"
SHA1 = re.compile(r"[0-9a-f]{40}")
CACHE_CONTROL = "public, max-age=31536000, immutable"  # named by content: it never changes
log = logging.getLogger(__name__)


class NoThumb(Exception):
    """No thumbnail for this name: not a content hash, no such photo, or the photo does not decode."""


def thumb_path(settings, sha1: str) -> Path:
    return settings.home / THUMBS_DIR / sha1[:2] / f"{sha1}.webp"


def stored_photo(settings, sha1: str) -> Path | None:
    """The image store's file of content ``sha1`` (any extension), or None."""
    folder = settings.images_dir / sha1[:2]
    try:
        return next((p for p in folder.glob(f"{sha1}.*") if p.is_file()), None)
    except OSError:
        return None


def thumbnail(settings, sha1: str, slots) -> bytes:
    """The WebP bytes of photo ``sha1``'s thumbnail: cached, or made now and cached (:class:`NoThumb` if it cannot
    be). ``slots``: the semaphore bounding the decodes in flight (``serving.search.decode_slots``). A home that
    cannot be written (read-only, disk full) still gets its thumbnails, made each time."""
    if not SHA1.fullmatch(sha1):
        raise NoThumb("not a content hash")
    target = thumb_path(settings, sha1)
    try:
        return target.read_bytes()
    except OSError:
        pass
    source = stored_photo(settings, sha1)
    if source is None:
        raise NoThumb("no such photo")
    try:
        webp = make_thumbnail(source, _limits(settings), slots)
    except OSError as exc:
        raise NoThumb(f"photo unreadable ({exc.strerror or type(exc).__name__})") from None
    try:
        atomic_write_bytes(target, webp, fsync=False)
    except OSError as exc:
        log.warning("thumbnail %s not cached: %s", sha1, exc.strerror or exc)
    return webp


def _limits(settings) -> ImageLimits:
    """The limits a stored photo was admitted under (the crawl's), with the API's decode CPU bound."""
    crawl = ImageLimits.from_settings(settings)
    return ImageLimits(crawl.max_bytes, crawl.max_pixels, crawl.min_side, crawl.max_scans, settings.api.decode_cpu_s)


def make_thumbnail(source: Path, limits: ImageLimits, slots) -> bytes:
    """WebP bytes of the photo file ``source`` (see :func:`photo_thumbnail`)."""
    data = read_photo_file(source, limits)
    if not isinstance(data, bytes):
        raise NoThumb(f"photo {data.status}")
    return photo_thumbnail(data, limits, slots)


def photo_thumbnail(data: bytes, limits: ImageLimits, slots) -> bytes:
    """WebP bytes of a photo at most :data:`THUMB_SIDE` px on its longer side (never enlarged), decoded by the
    bounded decoder while holding one of ``slots``."""
    from photos import decode_worker

    with slots:
        try:  # reduced while decoding (JPEG draft, integer box reduction), EXIF orientation applied
            img = decode_worker.decode_rgb(data, THUMB_SIDE, limits.max_pixels, limits.max_scans, limits.decode_cpu_s)
        except decode_worker.DecodeFailed as exc:
            raise NoThumb(f"photo does not decode: {exc}") from None
    img.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    img.save(out, "WEBP", quality=THUMB_QUALITY, method=4)
    return out.getvalue()
