"""``shoesearch ingest`` on hostile catalog folders, through the real entry point where the exit matters:

* a huge photo is refused by its size without being read (``stat`` first),
* a folder or file name that is not UTF-8 is skipped and named; the rest is ingested,
* links that leave the catalog folder (a file, ``/proc/self/environ``, a folder) are skipped and named,
* a ``products.json`` of the wrong shape is refused before anything is written, naming the file and the place,
* a full disk while a photo is written is named in one line and leaves no temporary file; tables stay as they were.
"""

from __future__ import annotations

import os
import random
import resource
import subprocess
import sys
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "shoesearch"]


def run_cli(*args: str, cwd: Path, preexec_fn=None, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SHOESEARCH_HOME"}
    return subprocess.run([*CLI, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                          preexec_fn=preexec_fn)


def one_line_error(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("shoesearch: error: "), res.stderr
    return lines[0].removeprefix("shoesearch: error: ")


def save_photo(path: Path, colour=(200, 30, 30), size: int = 96) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path)
    return path


def noisy_photo(path: Path, size: int = 320) -> Path:
    """A JPEG of random pixels: hundreds of KB, unlike a flat colour."""
    from PIL import Image

    rng = random.Random(7)
    img = Image.frombytes("RGB", (size, size), bytes(rng.getrandbits(8) for _ in range(size * size * 3)))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, quality=95)
    return path


@pytest.fixture
def catalog(tmp_path) -> Path:
    """Two products, boot and sneaker, with two photos each."""
    root = tmp_path / "catalog"
    for product, colour in (("boot", (120, 60, 20)), ("sneaker", (20, 60, 200))):
        for i in range(2):
            save_photo(root / product / f"{i}.jpg", tuple(c + 20 * i for c in colour))
    return root


def tables(home: Path) -> dict[str, list[tuple]]:
    from core.settings import Settings
    from warehouse import open_warehouse

    wh = open_warehouse(Settings.load(home=home))
    return {
        "products": sorted(tuple(r.values()) for r in wh.query(
            "SELECT product_id, title, price, run_id FROM products_current").to_pylist()),
        "images": sorted(tuple(r.values()) for r in wh.query(
            "SELECT image_id, status, reason, sha1, url FROM images_current").to_pylist()),
    }


def photo_files(home: Path) -> list[Path]:
    return sorted(p for p in (home / "images").rglob("*") if p.is_file()) if (home / "images").exists() else []


# --- 8. size first ---------------------------------------------------------------------------------------------
@pytest.mark.e2e
def test_a_huge_photo_is_counted_too_large_without_being_read(catalog, tmp_path):
    huge = catalog / "boot" / "2-huge.jpg"
    with open(huge, "wb") as fh:
        fh.truncate(1_500_000_000)  # sparse: no disk cost, but 1.5 GB of memory if read
    probe = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, r.returncode)")
    home = tmp_path / "home"
    res = subprocess.run([sys.executable, "-c", probe, *CLI, "--home", str(home), "ingest", str(catalog)],
                         capture_output=True, text=True, timeout=120)
    peak_kib, rc = map(int, res.stdout.split()[-2:])
    assert rc == 0, res.stderr
    assert peak_kib * 1024 < 600_000_000, f"ingest peaked at {peak_kib // 1024} MiB for a 1.5 GB photo"
    rows = {r[0]: r for r in tables(home)["images"]}
    assert rows["catalog:boot#2"][1:3] == ("too_large", "1500000000 bytes > limit 15000000")
    assert sum(r[1] == "ok" for r in rows.values()) == 4


# --- 15. names that are not UTF-8 --------------------------------------------------------------------------
@pytest.mark.e2e
def test_names_that_are_not_utf8_are_skipped_and_named(catalog, tmp_path):
    bad_folder = os.path.join(os.fsencode(catalog), b"\xff\xfe")
    os.mkdir(bad_folder)
    save_photo(Path(os.fsdecode(os.path.join(bad_folder, b"0.jpg"))))
    save_photo(Path(os.fsdecode(os.path.join(os.fsencode(catalog / "boot"), b"9-\xe9t\xe9.jpg"))), (1, 2, 3))
    home = tmp_path / "home"
    res = run_cli("--home", str(home), "ingest", str(catalog), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "2 skipped" in res.stdout and "name is not UTF-8" in res.stdout, res.stdout
    assert r"b'\xff\xfe'" in res.stdout and r"b'boot/9-\xe9t\xe9.jpg'" in res.stdout, res.stdout
    got = tables(home)
    assert [p[0] for p in got["products"]] == ["catalog:boot", "catalog:sneaker"]
    assert [i[0] for i in got["images"]] == ["catalog:boot#0", "catalog:boot#1", "catalog:sneaker#0",
                                              "catalog:sneaker#1"]


# --- 19. links out of the folder ---------------------------------------------------------------------------
@pytest.mark.e2e
def test_links_that_leave_the_catalog_are_skipped_and_named(catalog, tmp_path):
    outside = tmp_path / "outside"
    secret = save_photo(outside / "secret.jpg", (9, 9, 9))
    (catalog / "boot" / "5-out.jpg").symlink_to(secret)
    (catalog / "boot" / "6-env.jpg").symlink_to("/proc/self/environ")
    (catalog / "elsewhere").symlink_to(outside, target_is_directory=True)
    (catalog / "boot" / "7-in.jpg").symlink_to(Path("..") / "sneaker" / "0.jpg")  # inside: fine
    (catalog / "alias").symlink_to("sneaker", target_is_directory=True)  # inside: fine
    home = tmp_path / "home"
    res = run_cli("--home", str(home), "ingest", str(catalog), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "3 skipped" in res.stdout and "link leaves the catalog folder" in res.stdout, res.stdout
    for name in ("boot/5-out.jpg", "boot/6-env.jpg", "elsewhere"):
        assert name in res.stdout, res.stdout
    got = tables(home)
    assert [p[0] for p in got["products"]] == ["catalog:alias", "catalog:boot", "catalog:sneaker"]
    boot = [i for i in got["images"] if i[0].startswith("catalog:boot#")]
    assert [i[4].rsplit("/", 1)[1] for i in boot] == ["0.jpg", "1.jpg", "0.jpg"]  # 7-in.jpg is sneaker/0.jpg
    assert all(i[1] == "ok" for i in got["images"])
    import hashlib
    assert hashlib.sha1(secret.read_bytes()).hexdigest() not in {i[3] for i in got["images"]}


# --- 20. products.json of the wrong shape ------------------------------------------------------------------
@pytest.mark.e2e
def test_a_products_json_of_the_wrong_shape_is_refused_before_anything_is_written(catalog, tmp_path):
    (catalog / "products.json").write_text('[{"title": "boot", "price": 12}]')
    home = tmp_path / "home"
    error = one_line_error(run_cli("--home", str(home), "ingest", str(catalog), cwd=tmp_path))
    assert error.startswith(f"{catalog / 'products.json'}: top level: "), error
    assert "valid dictionary" in error, error
    assert photo_files(home) == []


@pytest.mark.parametrize("text, where", [
    ('{"boot": {"title": "Boot", "price": "cheap"}}', '"boot".price: Input should be a valid number'),
    ('{"boot": {"price": NaN}}', '"boot".price: Input should be a finite number'),
    ('{"boot": ["Boot", 12]}', '"boot": Input should be a valid dictionary'),
    ('{"boot": {"variants": ["1", {"sku": 2}]}}', '"boot".variants[1]: Input should be a valid string'),
    ('{"boot": {"title": ', 'not valid JSON: Expecting value: line 1 column 20'),
])
def test_products_json_errors_name_the_file_and_the_place(catalog, tmp_path, text, where):
    from core.errors import ShoesearchError
    from core.settings import Settings
    from tasks.ingest import ingest_catalog

    (catalog / "products.json").write_text(text)
    home = tmp_path / "home"
    with pytest.raises(ShoesearchError) as exc:
        ingest_catalog(Settings.load(home=home), catalog)
    assert str(exc.value).startswith(f"{catalog / 'products.json'}: {where}"), str(exc.value)
    assert "\n" not in str(exc.value)
    assert photo_files(home) == []


@pytest.mark.e2e
def test_products_json_fields_are_read_as_their_types(catalog, tmp_path):
    from core.settings import Settings
    from tasks.ingest import ingest_catalog

    (catalog / "products.json").write_text('{"boot": {"sku": 12345, "title": "Boot", "price": "19.5", '
                                             '"variants": [7, "8"], "colour": "brown"}}')
    home = tmp_path / "home"
    ingest_catalog(Settings.load(home=home), catalog)
    products = {p[0]: p for p in tables(home)["products"]}
    assert products["catalog:boot"][1:3] == ("Boot", 19.5)


# --- 21. disk full while a photo is written ----------------------------------------------------------------
def file_size_limit(limit: int):
    """For ``preexec_fn``: a write past ``limit`` bytes fails with EFBIG, a real OS error (Python ignores SIGXFSZ)."""
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


@pytest.fixture
def ingested(catalog, tmp_path) -> Path:
    from core.settings import Settings
    from tasks.ingest import ingest_catalog

    home = tmp_path / "home"
    ingest_catalog(Settings.load(home=home), catalog)
    return home


@pytest.mark.e2e
def test_a_failed_photo_write_is_named_and_leaves_no_temporary(catalog, ingested, tmp_path):
    before, files_before = tables(ingested), photo_files(ingested)
    big = noisy_photo(catalog / "sandal" / "0.jpg")
    res = run_cli("--home", str(ingested), "ingest", str(catalog), cwd=tmp_path,
                  preexec_fn=file_size_limit(big.stat().st_size // 2))
    error = one_line_error(res)
    assert error.startswith(f"cannot write photo {ingested / 'images'}/"), error
    assert error.endswith(".jpg: File too large"), error
    assert not (ingested / "images" / error.split(str(ingested / "images") + "/")[1].split(":")[0]).exists()
    assert list((ingested / "images").rglob("*.tmp")) == []
    assert photo_files(ingested) == files_before
    assert tables(ingested) == before


@pytest.mark.e2e
def test_a_failed_table_write_is_named_and_rolled_back(catalog, ingested, tmp_path):
    before = tables(ingested)
    (catalog / "products.json").write_text('{"boot": {"title": "' + "changed " * 500 + '"}}')
    res = run_cli("--home", str(ingested), "ingest", str(catalog), cwd=tmp_path, preexec_fn=file_size_limit(1500))
    error = one_line_error(res)
    assert error.startswith(f"cannot write {ingested / 'warehouse' / '_staging'}/"), error
    assert ".parquet: " in error and "File too large" in error, error
    assert list((ingested / "warehouse" / "_staging").iterdir()) == []
    assert tables(ingested) == before
