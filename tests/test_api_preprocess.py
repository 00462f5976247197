"""Query photos are preprocessed exactly as catalog photos are, and cheaply.

* A catalog photo finds itself with score ~1 through the HTTP API (a real uvicorn server) and the
  `shoesearch search` command, uploaded as it is (a JPEG the catalog decoded through draft(): the home
  indexed at 48 px) or stored rotated with the EXIF Orientation that displays it upright again (lossless
  PNG of the full decode, so on the 96 px home where draft() leaves the catalog's 128 px JPEGs whole).
* Decoding a small-file, many-pixel PNG (6300 x 6300, under the 40 Mpx guard) costs about one decoded
  frame of memory, not several full-resolution copies and a float tensor (peak RSS of a subprocess).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from PIL import ExifTags, Image, ImageOps

from tests.fixtures_search import DRAFT_IMAGE_SIZE, search_settings, serve_api

REPO = Path(__file__).resolve().parent.parent
# How the pixels are stored for an EXIF orientation, so that exif_transpose() shows the original upright.
STORED_FOR = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}
SAME_PHOTO = 0.999  # cosine of a photo with itself, through another container / orientation
EXACT = 0.99999  # the same bytes: only float rounding may differ


def front_photo(settings) -> tuple[str, bytes]:
    """(product_id, JPEG bytes) of a catalog product's front photo."""
    from warehouse import open_warehouse

    row = open_warehouse(settings).query(
        "SELECT product_id, path FROM images_current WHERE status = 'ok' AND position = 0 ORDER BY product_id LIMIT 1"
    ).to_pylist()[0]
    return row["product_id"], (settings.images_dir / row["path"]).read_bytes()


def exif_rotated(jpeg: bytes, orientation: int) -> bytes:
    """The photo's pixels stored turned (lossless PNG) with the EXIF Orientation that turns them back."""
    upright = Image.open(io.BytesIO(jpeg)).convert("RGB")
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    buf = io.BytesIO()
    upright.transpose(STORED_FOR[orientation]).save(buf, "PNG", exif=exif.tobytes())
    shown = ImageOps.exif_transpose(Image.open(io.BytesIO(buf.getvalue()))).convert("RGB")
    assert shown.tobytes() == upright.tobytes()  # displayed, it is the original
    return buf.getvalue()


@pytest.fixture(scope="module")
def homes(draft_home, indexed_home):
    """(settings, {case: (photo bytes, score bound)}, product id) per home: the as-is JPEG on the draft()
    home, EXIF-rotated copies on the 96 px home."""
    draft, plain = search_settings(draft_home, DRAFT_IMAGE_SIZE), search_settings(indexed_home)
    (draft_product, draft_jpeg), (product, jpeg) = front_photo(draft), front_photo(plain)
    rotated = {f"exif {o}": (exif_rotated(jpeg, o), SAME_PHOTO) for o in STORED_FOR}
    return [(draft, {"as is": (draft_jpeg, EXACT)}, draft_product), (plain, rotated, product)]


def test_catalog_photo_finds_itself_through_the_api(homes):
    for settings, cases, product_id in homes:
        with serve_api(settings) as base:
            for name, (data, bound) in cases.items():
                r = httpx.post(f"{base}/search", params={"k": 1}, files={"photo": ("q", data)}, timeout=60)
                assert r.status_code == 200, (name, r.text)
                top = r.json()["results"][0]
                assert top["product_id"] == product_id and top["score"] > bound, (name, top["score"])


def test_catalog_photo_finds_itself_through_the_cli(homes, tmp_path, monkeypatch, capsys):
    from shoesearch.cli import main

    for settings, cases, product_id in homes:
        monkeypatch.setenv("SHOESEARCH_HOME", str(settings.home))  # main() sets it; restored after
        for i, (name, (data, bound)) in enumerate(cases.items()):
            photo = tmp_path / f"query{i}"
            photo.write_bytes(data)
            assert main(["--home", str(settings.home), "search", str(photo), "-k", "1", "--format", "json"]) == 0
            top = json.loads(capsys.readouterr().out)[0]
            assert top["product_id"] == product_id and top["score"] > bound, (name, top["score"])


# Peak RSS of the query path for one photo, in a fresh interpreter (torch and PIL imported first): this
# process's and its decode worker's (photos.decode_worker), each from its RSS before the photo.
MEMORY_PROBE = r"""
import json, sys, time
from photos import decode_worker, transforms
from photos.imagestore import ImageLimits
from serving.search import check_photo, photo_tensor

def kib(pid, field):
    return next(int(line.split()[1]) for line in open(f"/proc/{pid}/status") if line.startswith(field))

data = open(sys.argv[1], "rb").read()
limits = ImageLimits(max_bytes=10_000_000, max_pixels=40_000_000, min_side=16)
mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
photo_tensor(open(sys.argv[2], "rb").read(), limits, 224, mean, std, slots=1)  # starts the decode worker
pids = ["self", decode_worker._POOL._idle[0].proc.pid]
for pid in pids:
    with open(f"/proc/{pid}/clear_refs", "w") as fh:
        fh.write("5")  # reset the peak (VmHWM) to the current RSS
before, start = [kib(pid, "VmRSS:") for pid in pids], time.perf_counter()
check_photo(data, limits)
x = photo_tensor(data, limits, 224, mean, std, slots=1)
peak = sum(kib(pid, "VmHWM:") - b for pid, b in zip(pids, before))
print(json.dumps({"peak_mb": peak / 1024, "seconds": time.perf_counter() - start, "shape": list(x.shape)}))
"""


@pytest.mark.e2e
def test_a_many_pixel_png_costs_about_one_decoded_frame(tmp_path):
    side = 6300  # 39.7 Mpx: under the 40 Mpx guard; Pillow holds it at 4 bytes/pixel, 151 MiB
    photo = tmp_path / "big.png"
    Image.new("RGB", (side, side), (200, 30, 30)).save(photo)
    Image.new("RGB", (64, 64), (200, 30, 30)).save(small := tmp_path / "small.png")
    assert photo.stat().st_size < 200_000  # ~115 KB on the wire
    res = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(photo), str(small)], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    probe = json.loads(res.stdout.strip().splitlines()[-1])
    frame_mb = side * side * 4 / 2**20  # the one decoded frame
    assert probe["shape"] == [3, 224, 224]
    assert probe["peak_mb"] < 1.25 * frame_mb, probe  # was 885 MB (5.9 frames): two decodes, copies, float32
