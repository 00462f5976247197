"""Decoding untrusted photos (issue 25, items 1, 6, 22), on photos made by the tests:

* a progressive JPEG whose last scan repeats is refused from its header, in every path (store, API check,
  catalog loading, the GPU path's JPEG test), before a decoder spends minutes on it;
* a decode that passes the header checks but uses more than its CPU-time bound is killed and reported as a
  ``bomb`` (store, and the API over HTTP, where a normal search keeps working beside two such uploads);
* an MPO (a JPEG with an MPF block, as phones write) is read as a JPEG: its first frame, everywhere;
* a 16-bit greyscale PNG is scaled to 8 bits, not clipped to white (models' input and contact sheets).
"""

from __future__ import annotations

import io
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from photos.imagestore import ImageLimits, inspect_image, store_image

MEAN, STD = [0.5] * 3, [0.5] * 3


def progressive_jpeg(side: int, repeats: int) -> bytes:
    """A flat ``side`` x ``side`` progressive JPEG (10 scans) with its last scan repeated ``repeats`` more times:
    a few bytes per scan, and every scan a pass over all the coefficients."""
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (120, 80, 40)).save(buf, "JPEG", progressive=True, quality=90)
    data = buf.getvalue()
    last, eoi = data.rfind(b"\xff\xda"), data.rfind(b"\xff\xd9")
    return data[:eoi] + data[last:eoi] * repeats + data[eoi:]


def mpo(first=(200, 30, 30), second=(30, 30, 200), size=(160, 96)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, first).save(buf, "MPO", save_all=True, append_images=[Image.new("RGB", size, second)])
    return buf.getvalue()


def grey16_png(width: int = 512, height: int = 64) -> tuple[bytes, np.ndarray]:
    """A 16-bit greyscale left-to-right gradient over the full range, and its 8-bit equivalent."""
    row = np.linspace(0, 65535, width).astype(np.uint16)
    pixels = np.tile(row, (height, 1))
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue(), (pixels >> 8).astype(np.uint8)


def test_a_jpeg_of_many_scans_is_refused_from_its_header_everywhere(tmp_path):
    from core.settings import Settings
    from photos.loading import PhotoError, is_upright_jpeg, read_photo
    from serving.search import BadPhoto, check_photo, upload_limits

    data = progressive_jpeg(3000, 1200)  # ~80 KB; decoding it takes ~9 s of CPU (minutes at 10 MB)
    assert len(data) < 120_000
    started = time.monotonic()
    info = inspect_image(data, ImageLimits())
    assert info.status == "bomb" and "more than 100 JPEG scans" in info.reason, info
    with pytest.raises(BadPhoto, match=r"bomb.*more than 100 JPEG scans"):
        check_photo(data, upload_limits(Settings.load(home=tmp_path / "home")))
    path = tmp_path / "stored.jpg"
    path.write_bytes(data)  # stored before the header check existed: the catalog's loaders refuse it too
    with pytest.raises(PhotoError, match="more than 100 JPEG scans"):
        read_photo(path, 224, MEAN, STD, 40_000_000)
    assert not is_upright_jpeg(data)  # so the GPU path hands it to the CPU path, which refuses it
    assert time.monotonic() - started < 5  # each check reads the markers only
    assert inspect_image(progressive_jpeg(300, 0), ImageLimits()).status == "ok"  # 10 scans: a normal photo


def test_a_decode_past_its_cpu_bound_is_killed_and_the_next_photo_decodes():
    slow = progressive_jpeg(2000, 2000)  # ~8 s of CPU to decode; the header check is lifted to reach it
    limits = ImageLimits(max_scans=100_000, decode_cpu_s=1.0)
    started = time.monotonic()
    info = inspect_image(slow, limits)
    assert info.status == "bomb" and info.reason == "decoding took more than 1 s of CPU time", info
    assert time.monotonic() - started < 60  # killed at 1 s of its CPU (wall time on a loaded machine: more)
    assert inspect_image(progressive_jpeg(300, 0), limits).status == "ok"  # a fresh worker took over


def test_api_refuses_costly_jpegs_while_a_normal_search_is_answered(indexed_home):
    from tests.fixtures_search import search_settings, serve_api

    settings = search_settings(indexed_home)
    settings.set("api.decode_cpu_s", 1.0)
    many_scans = progressive_jpeg(3000, 1200)
    slow = progressive_jpeg(6000, 89)  # 36 Mpx, 99 scans: passes the header checks, ~3 s of CPU to decode
    normal = next(settings.images_dir.glob("*/*.jpg")).read_bytes()

    def upload(base: str, data: bytes) -> httpx.Response:
        return httpx.post(f"{base}/search", files={"photo": ("q.jpg", data)}, timeout=120)

    with serve_api(settings) as base:
        refused = upload(base, many_scans)
        assert refused.status_code == 413, refused.text
        assert refused.json() == {"error": {"code": "bomb", "message": "more than 100 JPEG scans (a progressive JPEG "
                                                                       "has about 10)"}}, refused.text
        with ThreadPoolExecutor(3) as pool:  # two costly uploads hold both decode slots; a normal search too
            costly = [pool.submit(upload, base, slow) for _ in range(2)]
            time.sleep(0.5)
            answer = pool.submit(upload, base, normal).result()
            killed = [f.result() for f in costly]
        assert answer.status_code == 200 and answer.json()["results"], answer.text
        for r in killed:
            assert r.status_code == 413 and r.json() == {"error": {"code": "bomb", "message": "decoding took more "
                                                                   "than 1 s of CPU time"}}
        assert upload(base, normal).status_code == 200


def test_an_mpo_photo_is_read_as_a_jpeg_everywhere(tmp_path, indexed_home):
    from embedding.vectors import decode_on_gpu
    from photos.loading import PhotoBytes, PhotoTensors
    from photos.transforms import load_rgb
    from tests.fixtures_search import search_settings, serve_api

    data = mpo()
    assert Image.open(io.BytesIO(data)).format == "MPO"
    stored = store_image(data, tmp_path / "images", ImageLimits())  # crawl and ingest store through here
    assert stored.status == "ok" and stored.path.endswith(".jpg"), stored
    path = tmp_path / "images" / stored.path
    first = np.asarray(load_rgb(path, 64, 40_000_000)).reshape(-1, 3).mean(0)
    assert np.abs(first - (200, 30, 30)).max() < 4  # the first frame, not the second (blue)
    _, x, ok = PhotoTensors([path], 64, MEAN, STD, 40_000_000)[0]  # embed's CPU path
    _, raw, upright = PhotoBytes([path])[0]  # embed's GPU path (nvjpeg; torchvision's CPU decoder here)
    y, ok_gpu = decode_on_gpu([raw], torch.device("cpu"), 64, MEAN, STD, [upright])
    assert ok and upright and bool(ok_gpu[0]) and torch.allclose(x, y[0], atol=0.05)
    with serve_api(search_settings(indexed_home)) as base:
        r = httpx.post(f"{base}/search", files={"photo": ("phone.jpg", data)}, timeout=60)
    assert r.status_code == 200 and r.json()["results"], r.text


def test_an_mpo_photo_is_ingested_as_a_jpeg_and_a_many_scan_jpeg_is_counted_as_a_bomb(tmp_path):
    from core.settings import Settings
    from tasks.ingest import ingest_catalog
    from warehouse import open_warehouse

    folder = tmp_path / "catalog" / "phone-shoe"
    folder.mkdir(parents=True)
    (folder / "01.jpg").write_bytes(mpo())
    (folder / "02.jpg").write_bytes(progressive_jpeg(3000, 1200))
    settings = Settings.load(home=tmp_path / "home")
    ingest_catalog(settings, tmp_path / "catalog", name="phones")
    rows = open_warehouse(settings).query("SELECT position, status, reason, path FROM images ORDER BY position").to_pylist()
    assert [(r["status"], r["path"] is not None) for r in rows] == [("ok", True), ("bomb", False)], rows
    assert rows[0]["path"].endswith(".jpg") and "more than 100 JPEG scans" in rows[1]["reason"]


def test_a_16_bit_greyscale_png_is_scaled_to_8_bits_not_clipped_to_white(tmp_path):
    from photos.decode_worker import decode_rgb
    from photos.transforms import load_rgb

    data, expected = grey16_png()
    for size in (512, 64):  # decoded as it is, and box-reduced first (a large photo for the input size)
        img = load_rgb(data, size, 40_000_000)
        got = np.asarray(img)
        assert img.mode == "RGB" and (got[..., 0] == got[..., 2]).all()
        assert (got == 255).mean() < 0.01  # was 99.5 % white
        factor = 512 // got.shape[1]
        reference = expected.reshape(64 // factor, factor, 512 // factor, factor).mean((1, 3))
        assert np.abs(got[..., 0].astype(float) - reference).max() <= 1.0, size
    via_api = np.asarray(decode_rgb(data, 512, 40_000_000, 100, 10.0))  # the API's worker: the same pixels
    assert np.array_equal(via_api, np.asarray(load_rgb(data, 512, 40_000_000)))
    assert inspect_image(data, ImageLimits()).status == "ok"


def test_a_16_bit_greyscale_png_keeps_its_gradient_on_a_contact_sheet(tmp_path):
    from tasks.denoise_report import _thumb

    data, expected = grey16_png()
    (path := tmp_path / "grey16.png").write_bytes(data)
    thumb = np.asarray(_thumb(path, 128))[56:72, :, 0].astype(float)  # the photo's rows (512 x 64 -> 128 x 16)
    assert (thumb == 255).mean() < 0.05 and thumb[:, 0].max() < 16 and thumb[:, -1].min() > 230
