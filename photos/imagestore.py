"""Content-addressed photo store with validation.

A photo is stored once per content hash at ``images/<aa>/<sha1>.<ext>``, however many products
use it. Validation decides a status for every download: ``ok`` or a refusal with a reason;
nothing is silently dropped.
"""

from __future__ import annotations

import hashlib
import io
import os
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from core.errors import ShoesearchError

# PIL's own decompression-bomb guard is replaced by our explicit pixel limit.
Image.MAX_IMAGE_PIXELS = None

FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp"}


class PhotoWriteError(ShoesearchError, OSError):
    """A photo could not be written to the store (disk full ...): one line naming the file."""


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 15_000_000
    max_pixels: int = 40_000_000
    min_side: int = 32

    @classmethod
    def from_settings(cls, settings) -> "ImageLimits":
        c = settings.crawl
        return cls(c.max_image_bytes, c.max_image_pixels, c.min_image_side)


@dataclass(frozen=True)
class StoredImage:
    status: str  # ok | empty | too_large | not_image | corrupt | too_small | bomb
    reason: str | None = None
    sha1: str | None = None
    path: str | None = None  # relative to the images directory
    width: int | None = None
    height: int | None = None
    bytes: int = 0


def inspect_image(data: bytes, limits: ImageLimits) -> StoredImage:
    """Validate bytes as a real, complete, reasonably sized picture (no storing)."""
    n = len(data)
    if n == 0:
        return StoredImage("empty", "zero-byte response", bytes=0)
    if n > limits.max_bytes:
        return StoredImage("too_large", f"{n} bytes > limit {limits.max_bytes}", bytes=n)
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt, (w, h) = img.format, img.size
            if fmt not in FORMATS:
                return StoredImage("not_image", f"unsupported image format {fmt}", bytes=n)
            if w * h > limits.max_pixels:
                return StoredImage("bomb", f"{w}x{h} pixels > limit {limits.max_pixels}", bytes=n, width=w, height=h)
            if min(w, h) < limits.min_side:
                return StoredImage("too_small", f"{w}x{h} < {limits.min_side} px", bytes=n, width=w, height=h)
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # truncated data warns in some PIL paths
                img.load()
    except UnidentifiedImageError:
        head = data[:64].lstrip().lower()
        kind = "HTML" if head.startswith((b"<!doctype", b"<html")) else "not an image"
        return StoredImage("not_image", f"content is {kind}", bytes=n)
    except (OSError, SyntaxError, ValueError, Warning) as exc:
        return StoredImage("corrupt", f"does not decode: {exc}", bytes=n)
    return StoredImage("ok", None, hashlib.sha1(data).hexdigest(), None, w, h, n)


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
        write_atomic(target, data)
    return StoredImage("ok", None, info.sha1, rel, info.width, info.height, info.bytes)


def write_atomic(target: Path, data: bytes) -> None:
    """Write ``target`` through a temporary file and one rename. A failed write (disk full, quota, file size
    limit) removes the temporary and is reported as one line naming ``target``."""
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise PhotoWriteError(f"cannot write photo {target}: {exc.strerror or exc}") from exc


def read_photo(path: Path, limits: ImageLimits) -> bytes | StoredImage:
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
