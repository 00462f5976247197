"""Photo -> normalised tensor, the same geometry on the CPU (PIL) and GPU (nvjpeg) paths.

The whole photo is kept in view: it is scaled so its longer side is ``size`` and the short side
is padded symmetrically with the mean colour (0 after normalisation). A square 800x800 product
photo is simply resized; a wide photo keeps its toe and heel instead of being centre-cropped.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

Image.MAX_IMAGE_PIXELS = None  # replaced by the explicit max_pixels check below


REDUCING_GAP = 4.0  # formats without draft() are box-reduced to >= this many times the model's input size:
# descriptors then differ from a full-resolution resize by cosine >= 0.9993 (2.0: 0.997; JPEG draft(): 0.990)
Source = str | Path | bytes  # a photo file, or its bytes (an upload)


def load_rgb(source: Source, size: int, max_pixels: int) -> Image.Image:
    """Open a photo (file or bytes) as RGB, refusing decompression bombs, and reduce it while decoding:
    JPEGs decode at a reduced scale (DCT scaling, never below ``size``), which is several times faster
    for large photos; other formats are decoded once and box-reduced by an integer factor to no less
    than ``REDUCING_GAP * size`` on the longer side before any copy (a 40 Mpx PNG would otherwise be
    copied at full size by the orientation, conversion and tensor steps). EXIF orientation is applied.
    The catalogue and the query photos both come through here (and :func:`preprocess`)."""
    img = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    if img.size[0] * img.size[1] > max_pixels:
        img.close()
        raise ValueError(f"{_name(source)}: {img.size[0]}x{img.size[1]} pixels exceeds the {max_pixels} limit")
    with img:
        if img.format == "JPEG":
            img.draft("RGB", (size, size))
            return ImageOps.exif_transpose(img).convert("RGB")  # phone photos are often stored rotated
        factor = int(max(img.size) // (REDUCING_GAP * size))
        if factor < 2:
            return ImageOps.exif_transpose(img).convert("RGB")
        # RGB / L reduce as they are; other modes are made RGB first, as convert("RGB") always did
        # (alpha dropped, palette looked up). reduce() keeps .info, so the EXIF orientation still applies.
        rgb = img if img.mode in ("RGB", "L") else img.convert("RGB")
        return ImageOps.exif_transpose(rgb.reduce(factor)).convert("RGB")


def _name(source: Source) -> str:
    return f"photo of {len(source)} bytes" if isinstance(source, bytes) else str(source)


def pil_to_uint8(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> 3 x H x W uint8 tensor."""
    return torch.from_numpy(np.array(img, dtype=np.uint8, copy=True)).permute(2, 0, 1).contiguous()


def fit_square(x: torch.Tensor, size: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 3 x H x W -> float 3 x size x size: scale the longer side to ``size``, normalise, pad."""
    h, w = x.shape[-2:]
    scale = size / max(h, w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    y = x.float().div_(255.0).unsqueeze(0)
    y = F.interpolate(y, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)[0]
    mean_t = torch.tensor(mean, dtype=y.dtype, device=y.device).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=y.dtype, device=y.device).view(3, 1, 1)
    y = (y - mean_t) / std_t
    top, left = (size - new_h) // 2, (size - new_w) // 2
    return F.pad(y, (left, size - new_w - left, top, size - new_h - top), value=0.0)


def preprocess(img: Image.Image, size: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """An RGB PIL image -> the normalised 3 x size x size tensor an embedder takes."""
    return fit_square(pil_to_uint8(img), size, mean, std)


def preprocess_path(source: Source, size: int, mean: Sequence[float], std: Sequence[float],
                    max_pixels: int = 40_000_000) -> torch.Tensor:
    """A photo file (the catalogue) or its bytes (a query) -> the normalised 3 x size x size tensor (CPU path)."""
    return preprocess(load_rgb(source, size, max_pixels), size, mean, std)
