"""Photo bytes -> pixels with Pillow alone (no torch): the one decode of the catalog and of queries, the
header checks that refuse what would cost too much to decode, and the full decode that validates a photo.

This module is what a decode worker (``photos.decode_worker``) imports, so it stays light: Pillow only.
"""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path

from PIL import Image, ImageOps

Image.MAX_IMAGE_PIXELS = None  # replaced by the explicit max_pixels check below

REDUCING_GAP = 4.0  # formats without draft() are box-reduced to >= this many times the model's input size:
# descriptors then differ from a full-resolution resize by cosine >= 0.9993 (2.0: 0.997; JPEG draft(): 0.990)
JPEG_FORMATS = ("JPEG", "MPO")  # MPO: a JPEG with an MPF block (phone photos with a gain map); first frame
MAX_SCANS = 100  # the default of crawl.max_image_scans / api.max_upload_scans (see core.sections)
SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # 16-bit greyscale (Pillow reads PNG's as I;16 or I)
Source = str | Path | bytes  # a photo file, or its bytes (an upload)

# The next marker after any garbage and fill bytes (libjpeg skips them the same way), and the end of a
# scan's entropy-coded data: 0xFF followed by neither a stuffed 0x00, a restart marker, nor fill.
_MARKER = re.compile(rb"\xff+([^\x00\xff])")
_ENTROPY_END = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def jpeg_scans(data: bytes, stop: int) -> int:
    """The scans (SOS markers) of the first frame of JPEG ``data``, counted up to ``stop``. Segments are
    skipped by their lengths, as libjpeg skips them (an EXIF thumbnail's markers do not count), and each
    scan's entropy-coded data up to the next real marker; counting ends at the first EOI (an MPO's later
    frames are not decoded)."""
    pos, scans = 2, 0
    while scans < stop and (found := _MARKER.search(data, pos)):
        marker, pos = found.group(1)[0], found.end()
        if marker == 0xD9:  # EOI
            break
        if 0xD0 <= marker <= 0xD7 or marker in (0x01, 0xD8):  # markers without a length
            continue
        pos += int.from_bytes(data[pos:pos + 2], "big")
        if marker == 0xDA:
            scans += 1
            end = _ENTROPY_END.search(data, pos)
            if end is None:
                break
            pos = end.start()
    return scans


def scan_refusal(fmt: str | None, data: bytes, max_scans: int) -> str | None:
    """Why a JPEG must not be decoded (more than ``max_scans`` scans: each one is a pass over every
    coefficient, so a few KB of repeated scans cost minutes of CPU), or None."""
    if fmt not in JPEG_FORMATS or jpeg_scans(data, max_scans + 1) <= max_scans:
        return None
    return f"more than {max_scans} JPEG scans (a progressive JPEG has about 10)"


def eight_bit(img: Image.Image) -> Image.Image:
    """``img`` with 16-bit greyscale scaled to 8-bit "L" (``convert`` would clip every value over 255 to
    white); other modes as they are. The info (EXIF orientation) is kept."""
    if img.mode not in SIXTEEN_BIT:
        return img
    if img.mode == "I":
        return img.point(lambda v: v / 256).convert("L")
    return img.point(lambda v: v / 256, "L")


def load_rgb(source: Source, size: int, max_pixels: int, max_scans: int = MAX_SCANS) -> Image.Image:
    """Open a photo (file or bytes) as RGB, refusing decompression bombs (pixels, JPEG scans), and reduce it
    while decoding: JPEGs decode at a reduced scale (DCT scaling, never below ``size``), which is several
    times faster for large photos; other formats are decoded once and box-reduced by an integer factor to no
    less than ``REDUCING_GAP * size`` on the longer side before any copy (a 40 Mpx PNG would otherwise be
    copied at full size by the orientation, conversion and tensor steps). EXIF orientation is applied,
    16-bit greyscale is scaled to 8 bits. The catalog and the query photos both come through here."""
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    with Image.open(io.BytesIO(data)) as img:
        if img.size[0] * img.size[1] > max_pixels:
            raise ValueError(f"{_name(source)}: {img.size[0]}x{img.size[1]} pixels exceeds the {max_pixels} limit")
        if refusal := scan_refusal(img.format, data, max_scans):
            raise ValueError(f"{_name(source)}: {refusal}")
        if img.format in JPEG_FORMATS:
            img.draft("RGB", (size, size))
            return ImageOps.exif_transpose(img).convert("RGB")  # phone photos are often stored rotated
        factor = int(max(img.size) // (REDUCING_GAP * size))
        img8 = eight_bit(img)
        if factor < 2:
            return ImageOps.exif_transpose(img8).convert("RGB")
        # RGB / L reduce as they are; other modes are made RGB first, as convert("RGB") always did
        # (alpha dropped, palette looked up). reduce() keeps .info, so the EXIF orientation still applies.
        rgb = img8 if img8.mode in ("RGB", "L") else img8.convert("RGB")
        return ImageOps.exif_transpose(rgb.reduce(factor)).convert("RGB")


def verify(data: bytes) -> None:
    """Decode ``data`` fully (the first frame), raising on any damage: a truncated file warns in some
    Pillow paths, and the warning is raised as an error here."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with Image.open(io.BytesIO(data)) as img:
            img.load()


def _name(source: Source) -> str:
    return f"photo of {len(source)} bytes" if isinstance(source, bytes) else str(source)
