"""Content-addressed photo store with validation.

A photo is stored once per content hash at ``images/<aa>/<sha1>.<ext>``, however many products
use it. Validation decides a status for every download: ``ok`` or a refusal with a reason;
nothing is silently dropped.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from core.errors import ShoesearchError
from core.files import atomic_write_bytes
from photos.decode_worker import DecodeFailed, TooCostly, verify_decode
from photos.decoding import MAX_SCANS, scan_refusal

# PIL's own decompression-bomb guard is replaced by our explicit pixel limit.
Image.MAX_IMAGE_PIXELS = None

FORMATS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp"}  # MPO: a JPEG
# with an MPF block (phone photos with a depth or gain map), read as its first frame


class PhotoWriteError(ShoesearchError, OSError):
    """A photo could not be written to the store (disk full ...): one line naming the file."""


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 15_000_000
    max_pixels: int = 40_000_000
    min_side: int = 32
    max_scans: int = MAX_SCANS  # JPEG scans (each one a pass over every coefficient)
    decode_cpu_s: float = 10.0  # CPU seconds one decode may use before its worker is killed

    @classmethod
    def from_settings(cls, settings) -> "ImageLimits":
        c = settings.crawl
        return cls(c.max_image_bytes, c.max_image_pixels, c.min_image_side, c.max_image_scans, c.decode_cpu_s)


@dataclass(frozen=True)
class StoredImage:
    status: str  # ok | empty | too_large | not_image | corrupt | too_small | bomb
    reason: str | None = None
    sha1: str | None = None
    path: str | None = None  # relative to the images directory
    width: int | None = None
    height: int | None = None
    bytes: int = 0


def inspect_header(data: bytes, limits: ImageLimits, empty: str = "zero-byte response") -> StoredImage:
    """The verdict from the size and the image header alone (nothing decoded, so it is cheap): a refusal, or
    ``ok`` with the picture's size (no hash). A JPEG's scans are counted: more than ``limits.max_scans`` is a
    decoding-time bomb."""
    n = len(data)
    if n == 0:
        return StoredImage("empty", empty, bytes=0)
    if n > limits.max_bytes:
        return StoredImage("too_large", f"{n} bytes > limit {limits.max_bytes}", bytes=n)
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt, (w, h) = img.format, img.size
    except UnidentifiedImageError:
        head = data[:64].lstrip().lower()
        kind = "HTML" if head.startswith((b"<!doctype", b"<html")) else "not an image"
        return StoredImage("not_image", f"content is {kind}", bytes=n)
    except (OSError, SyntaxError, ValueError) as exc:
        return StoredImage("corrupt", f"does not decode: {exc}", bytes=n)
    size = {"bytes": n, "width": w, "height": h}
    if fmt not in FORMATS:
        return StoredImage("not_image", f"unsupported image format {fmt}", bytes=n)
    if w * h > limits.max_pixels:
        return StoredImage("bomb", f"{w}x{h} pixels > limit {limits.max_pixels}", **size)
    if min(w, h) < limits.min_side:
        return StoredImage("too_small", f"{w}x{h} < {limits.min_side} px", **size)
    if refusal := scan_refusal(fmt, data, limits.max_scans):
        return StoredImage("bomb", refusal, **size)
    return StoredImage("ok", None, **size)


def inspect_image(data: bytes, limits: ImageLimits) -> StoredImage:
    """Validate bytes as a real, complete, reasonably sized picture (no storing): the header checks, then a
    full decode in a worker process killed past ``limits.decode_cpu_s`` of CPU time (``bomb``)."""
    info = inspect_header(data, limits)
    if info.status != "ok":
        return info
    try:
        verify_decode(data, limits.decode_cpu_s)
    except TooCostly as exc:
        return replace(info, status="bomb", reason=str(exc))
    except DecodeFailed as exc:
        return StoredImage("corrupt", f"does not decode: {exc}", bytes=info.bytes)
    return replace(info, sha1=hashlib.sha1(data).hexdigest())


def store_image(data: bytes, images_dir: Path, limits: ImageLimits) -> StoredImage:
    """Validate ``data`` and store it by content hash (atomic write; existing files are reused)."""
    info = inspect_image(data, limits)
    if info.status != "ok":
        return info
    with Image.open(io.BytesIO(data)) as img:
        ext = FORMATS[img.format]
    rel = f"{info.sha1[:2]}/{info.sha1}.{ext}"
    target = Path(images_dir) / rel
    if not target.exists():
        _write_photo(target, data)
    return StoredImage("ok", None, info.sha1, rel, info.width, info.height, info.bytes)


def _write_photo(target: Path, data: bytes) -> None:
    """Write ``target`` atomically (core/files.py). A failed write (disk full, quota, file size
    limit) removes the temporary and is reported as one line naming ``target``."""
    try:  # no fsync per photo (as before): it would slow an ingest of many photos; the rename still guards readers
        atomic_write_bytes(target, data, fsync=False)
    except OSError as exc:
        raise PhotoWriteError(f"cannot write photo {target}: {exc.strerror or exc}") from exc


def read_photo_file(path: Path, limits: ImageLimits) -> bytes | StoredImage:
    """The bytes of a local photo file, or ``too_large`` without reading it when its size is over the limit.
    Never more than the limit is read, should the file grow after the ``stat`` (or report no size, as in /proc)."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size > limits.max_bytes:
            return StoredImage("too_large", f"{size} bytes > limit {limits.max_bytes}", bytes=size)
        data = fh.read(limits.max_bytes + 1)
    if len(data) > limits.max_bytes:
        return StoredImage("too_large", f"more than the limit {limits.max_bytes} bytes (it grew while read)",
                           bytes=len(data))
    return data
