"""Readers of a data home through the real entry point (subprocesses of ``python -m shoesearch``):

* a home mounted read-only (or not writable by this user) is read as committed by ``tables``, ``sql``,
  ``lineage`` and ``search``: no recovery, no migration, no lock file (issue 25 item 4);
* a truncated Parquet file is named in one line, relative to the home, with a non-zero exit, and a search
  does not depend on tables it does not read (issue 25 item 3, the CLI side).
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.fixtures_catalog import writable_copy
from tests.test_cli_readonly import CLI, one_line_error, run_cli

pytestmark = pytest.mark.e2e  # every reader command run as a process on a built home: outside the fast loop

READ_ONLY_MOUNT = "mount --bind {h} {h} && mount -o remount,bind,ro {h} && exec \"$@\""


def _can_mount_read_only(tmp_path: Path) -> bool:
    probe = tmp_path / "probe"
    probe.mkdir()
    script = READ_ONLY_MOUNT.format(h=shlex.quote(str(probe)))
    res = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh",
                          "touch", str(probe / "x")], capture_output=True)
    return b"Read-only file system" in res.stderr and not (probe / "x").exists()


@pytest.fixture
def read_only(tmp_path):
    """Runs the CLI on a home it cannot write: a private read-only bind mount as root (chmod does not stop
    root), chmod -R a-w otherwise. Yields ``run(home, *args)``."""
    as_root = os.geteuid() == 0
    if as_root and not _can_mount_read_only(tmp_path):
        pytest.skip("running as root without mount namespaces: a read-only home cannot be made here")
    made = []

    def run(home: Path, *args: str) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k != "SHOESEARCH_HOME"}
        argv = [*CLI, "--home", str(home), *args]
        if as_root:
            argv = ["unshare", "-m", "--propagation", "private", "sh", "-c",
                    READ_ONLY_MOUNT.format(h=shlex.quote(str(home))), "sh", *argv]
        elif home not in made:
            subprocess.run(["chmod", "-R", "a-w", str(home)], check=True)
            made.append(home)
        return subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)

    yield run
    for home in made:
        subprocess.run(["chmod", "-R", "u+w", str(home)], check=True)


def _tree(home: Path) -> dict[str, float]:
    return {str(p.relative_to(home)): p.stat().st_mtime for p in home.rglob("*")}


def test_readers_read_a_read_only_home_as_committed(read_only, tmp_path, indexed_home, monkeypatch):
    from PIL import Image

    home = writable_copy(indexed_home, tmp_path, monkeypatch)
    (home / "warehouse" / ".staging.lock").unlink(missing_ok=True)  # reading must not need to create it
    photo = tmp_path / "query.jpg"
    Image.open(next((home / "images").rglob("*.jpg"))).save(photo)
    index_id = (home / "indexes" / "CURRENT").read_text().strip()
    before = _tree(home)

    tables = read_only(home, "tables", "--format", "csv")
    assert tables.returncode == 0, tables.stderr
    assert "products,16," in tables.stdout, tables.stdout
    sql = read_only(home, "sql", "--format", "csv", "SELECT count(*) AS n FROM indexes_current")
    assert (sql.returncode, sql.stdout.split()) == (0, ["n", "1"]), sql.stderr
    lineage = read_only(home, "lineage", "--index", index_id, "--format", "csv")
    assert lineage.returncode == 0 and index_id in lineage.stdout, lineage.stderr
    search = read_only(home, "search", str(photo), "-k", "3", "--format", "csv")
    assert search.returncode == 0, search.stderr
    assert len(search.stdout.strip().splitlines()) == 4, search.stdout
    assert _tree(home) == before  # nothing written, not even a lock file


def _truncate_a_products_part(home: Path) -> str:
    part = sorted((home / "warehouse" / "products").glob("batch-*/part-*.parquet"))[-1]  # not batch-0-schema
    data = part.read_bytes()
    part.write_bytes(data[: len(data) // 2])
    return str(part.relative_to(home))


def test_a_truncated_part_is_named_in_one_line_and_search_does_not_need_it(tmp_path, indexed_home, monkeypatch,
                                                                            synthetic_catalog):
    from PIL import Image

    home = writable_copy(indexed_home, tmp_path, monkeypatch)
    bad = _truncate_a_products_part(home)
    expected = f"cannot read {bad}: No magic bytes found at end of file"
    for args in (["tables"], ["sql", "SELECT count(*) FROM products_current"],
                 ["ingest", str(synthetic_catalog), "--name", "shoes"]):
        assert one_line_error(run_cli("--home", str(home), *args, cwd=tmp_path)).startswith(expected), args
    # Tables the failing file does not feed still answer, and a search reads none of them.
    runs = run_cli("--home", str(home), "sql", "--format", "csv", "SELECT count(*) AS n FROM runs", cwd=tmp_path)
    assert runs.returncode == 0 and int(runs.stdout.split()[1]) > 0, runs.stderr
    photo = tmp_path / "query.jpg"
    Image.open(next((home / "images").rglob("*.jpg"))).save(photo)
    search = run_cli("--home", str(home), "search", str(photo), "-k", "2", "--format", "csv", cwd=tmp_path)
    assert search.returncode == 0 and len(search.stdout.strip().splitlines()) == 3, (search.stdout, search.stderr)
