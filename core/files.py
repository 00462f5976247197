"""Atomic file writes: a reader sees the old content or the new one, never a mix (temp file beside the target,
fsync, one ``os.replace``). Every file the project writes outside a warehouse transaction goes through here."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def fsync_file(path: Path) -> None:
    """Flush a written file's bytes to disk (a rename or a commit that names it must not outrun them)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: Path, fsync: bool = True) -> Iterator[Path]:
    """A temporary path beside ``path`` for any writer (``torch.save``, ``pq.write_table``, DuckDB ...) to fill.

    When the block ends it is flushed to disk (unless ``fsync`` is off) and renamed onto ``path`` in one step;
    when the block raises, or the flush or rename fails, the temporary is removed and ``path`` is untouched.
    Temporaries are named ``.<name>.<hex>.tmp``, so a sweep after a kill can find them.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        if fsync:
            fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, payload: bytes, fsync: bool = True) -> None:
    """Write a file so that readers see either the old or the new content, never a mix."""
    with atomic_path(path, fsync) as tmp:
        tmp.write_bytes(payload)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
