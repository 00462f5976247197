"""Where every benchmark writes its JSON: ``bench/results/<name>`` (committed when the README quotes it)."""

from __future__ import annotations

import json
import os
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def write_result(data, path: str | Path) -> Path:
    """Write ``data`` as JSON to ``path`` (a file name resolves under ``bench/results/``) atomically; say where."""
    path = Path(path)
    path = path if path.is_absolute() or path.parent != Path(".") else RESULTS / path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
    tmp.replace(path)
    print(f"wrote {path}")
    return path
