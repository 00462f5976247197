"""Photo -> normalised tensor, the same geometry on the CPU (PIL) and GPU (nvjpeg) paths.

The whole photo is kept in view: it is scaled so its longer side is ``size`` and the short side
is padded symmetrically with the mean colour (0 after normalisation). A square 800x800 product
photo is simply resized; a wide photo keeps its toe and heel instead of being centre-cropped.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from photos.decoding import MAX_SCANS, Source, load_rgb


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
                    max_pixels: int = 40_000_000, max_scans: int = MAX_SCANS) -> torch.Tensor:
    """A photo file (the catalog) or its bytes -> the normalised 3 x size x size tensor (CPU path), decoded
    in this process (``photos.decoding.load_rgb``): for photos in the store, which passed the bounded decode
    of ``photos.imagestore.inspect_image``; a query photo from outside is decoded by ``serving.search``."""
    return preprocess(load_rgb(source, size, max_pixels, max_scans), size, mean, std)
