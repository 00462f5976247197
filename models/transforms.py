"""Photo -> normalised tensor, the same geometry on the CPU (PIL) and GPU (nvjpeg) paths.

The whole photo is kept in view: it is scaled so its longer side is ``size`` and the short side
is padded symmetrically with the mean colour (0 after normalisation). A square 800x800 product
photo is simply resized; a wide photo keeps its toe and heel instead of being centre-cropped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

Image.MAX_IMAGE_PIXELS = None  # replaced by the explicit max_pixels check below


def load_rgb(path: str | Path, size: int, max_pixels: int) -> Image.Image:
    """Open a photo as RGB, refusing decompression bombs; JPEGs decode at a reduced scale
    (DCT scaling, never below ``size``) which is several times faster for large photos."""
    img = Image.open(path)
    if img.size[0] * img.size[1] > max_pixels:
        img.close()
        raise ValueError(f"{path}: {img.size[0]}x{img.size[1]} pixels exceeds the {max_pixels} limit")
    if img.format == "JPEG":
        img.draft("RGB", (size, size))
    return ImageOps.exif_transpose(img).convert("RGB")  # phone photos are often stored rotated


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


def preprocess_path(path: str | Path, size: int, mean: Sequence[float], std: Sequence[float],
                    max_pixels: int = 40_000_000) -> torch.Tensor:
    """A photo file -> the normalised 3 x size x size tensor (CPU path)."""
    return preprocess(load_rgb(path, size, max_pixels), size, mean, std)
