"""The check every step makes before it commits vectors, metrics or a model: every value is finite.

A NaN compares false with everything, so once one is stored it passes gates (``nan < old`` is false), sorts
anywhere and reads as "far" or "near" at random; a step refuses it at its commit point instead, with one line
naming what held it (``require_finite``), and the run is recorded ``failed``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from core.errors import ShoesearchError


class NotFinite(ShoesearchError, ValueError):
    """Values that a step would have committed hold NaN or infinity."""


def require_finite(what: str, values: Any, hint: str = "") -> None:
    """Raise :class:`NotFinite` naming ``what`` unless every value is finite. ``values``: a number, a numpy
    array or anything ``np.asarray`` takes, a torch tensor, or a mapping of those (``None`` values skipped:
    "missing" is the caller's business); ``hint`` (what to check) ends the message."""
    if isinstance(values, Mapping):
        for key, value in values.items():
            if value is not None:
                require_finite(f"{what} {key}", value, hint)
        return
    if hasattr(values, "detach"):  # a torch tensor (any device or dtype): checked where it lies
        bad_mask = ~values.detach().isfinite()
        bad = int(bad_mask.sum())
        first = values.detach()[bad_mask].flatten()[:1].tolist() if bad else []
        total = values.numel()
    else:
        array = np.asarray(values)
        bad_mask = ~np.isfinite(array)
        bad, total = int(bad_mask.sum()), array.size
        first = array[bad_mask][:1].tolist() if bad else []
    if bad:
        raise NotFinite(f"{what}: {bad} of {total} values are not finite (e.g. {first[0]}): refused before "
                        f"committing{f' ({hint})' if hint else ''}")
