"""What bench/scaling.py and bench/gpu.py share: a synthetic catalog ingested into a fresh home, peak memory.

Peak memory is measured two ways at once, because training and embedding run in several processes:

* ``self_peak_mb``: the step process's own high-water mark (``VmHWM``, reset before the step through
  ``/proc/self/clear_refs``, exact);
* ``tree_peak_mb``: the largest sum of resident memory over the process and its descendants (DataLoader
  workers, the forkserver), sampled every 50 ms (a peak shorter than that can be missed; shared pages are
  counted once per process, so it overstates what the machine holds).

Not a benchmark itself (``make bench`` runs it as a script: it does nothing).
"""

from __future__ import annotations

import math
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path

PHOTOS_PER_PRODUCT = 8.7  # the synthetic shop's mean gallery at noise_rate 0.2 (measured: 200 products)


def synthetic_home(tmp: Path, photos: int, photo_size: int = 800, overrides: dict | None = None,
                   noise_rate: float = 0.2, seed: int = 0, home: str = ""):
    """Settings of a home under ``tmp`` (``home``, default one per catalog size) holding a synthetic catalog of
    about ``photos`` photos (generated once under ``tmp``), ingested."""
    from core.settings import Settings
    from demo_shop.synthetic import generate_catalog
    from tasks.ingest import ingest_catalog

    products = max(2, math.ceil(photos / PHOTOS_PER_PRODUCT))
    catalog = generate_catalog(Path(tmp) / f"cat-{products}-{photo_size}", products, noise_rate=noise_rate,
                               seed=seed, image_size=photo_size)
    settings = Settings.load(home=Path(tmp) / (home or f"home-{products}"), overrides=overrides or {})
    ingest_catalog(settings, catalog, name="bench")
    return settings


def photo_count(settings) -> int:
    from warehouse import open_warehouse

    return open_warehouse(settings).query("SELECT count(*) AS n FROM images_current WHERE status = 'ok'"
                                          ).to_pylist()[0]["n"]


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _hwm_kb() -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (from /proc: parent of each process)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def reset_peak() -> bool:
    """Reset this process's ``VmHWM`` (Linux); False where it cannot be (then peaks include earlier steps)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


@contextmanager
def peak_memory(record: dict, interval_s: float = 0.05):
    """Fill ``record`` with ``self_peak_mb``, ``tree_peak_mb`` (see module docstring) and ``seconds``."""
    reset_peak()
    tree = [0]
    stop = threading.Event()

    def sample() -> None:
        me = os.getpid()
        while not stop.is_set():
            tree[0] = max(tree[0], _rss_kb(me) + sum(_rss_kb(p) for p in _descendants(me)))
            stop.wait(interval_s)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    started = time.perf_counter()
    try:
        yield record
    finally:
        record["seconds"] = round(time.perf_counter() - started, 3)
        stop.set()
        thread.join()
        record["self_peak_mb"] = round(_hwm_kb() / 1024, 1)
        record["tree_peak_mb"] = round(max(tree[0], _hwm_kb()) / 1024, 1)


def fit_growth(sizes: list[float], values: list[float]) -> dict:
    """Power-law fit ``value ~ a * size**b`` through the measured points (log-log least squares): ``b`` ~ 1 is
    linear, ~ 0 constant, ~ 2 quadratic. ``None`` where fewer than two positive points."""
    pts = [(math.log(s), math.log(v)) for s, v in zip(sizes, values) if s > 0 and v and v > 0]
    if len(pts) < 2:
        return {"exponent": None, "coefficient": None}
    mx, my = sum(p[0] for p in pts) / len(pts), sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    b = sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx if sxx else 0.0
    return {"exponent": round(b, 3), "coefficient": math.exp(my - b * mx)}


def fit_affine(sizes: list[float], values: list[float]) -> dict:
    """Least-squares ``value = fixed + per_unit * size``: the start-up part apart from the part that grows."""
    n = len(sizes)
    if n < 2:
        return {"fixed": None, "per_unit": None}
    mx, my = sum(sizes) / n, sum(values) / n
    sxx = sum((x - mx) ** 2 for x in sizes)
    slope = sum((x - mx) * (y - my) for x, y in zip(sizes, values)) / sxx if sxx else 0.0
    return {"fixed": my - slope * mx, "per_unit": slope}
