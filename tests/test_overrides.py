"""Corrections by hand (``warehouse.overrides``, table ``denoise_overrides``): recorded as runs, the newest wins,
``denoise_current`` applies them and stays exact when materialised, the next index and training use them, the
denoise report counts how often the rule disagreed, and the ``shoesearch override`` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from warehouse import lineage, open_warehouse, start_run
from warehouse.current import CURRENT_DIR, MATERIALISED, valid_files
from warehouse.overrides import (
    BadOverride,
    NothingToWithdraw,
    UnknownImage,
    overrides_for_product,
    record_override,
    withdraw_override,
)

PIDS = ("c:1", "c:2")


def crawl(wh, sha="a", statuses=None):
    """Two products of two photos each (photo 1 of c:2 may get another status)."""
    with start_run(wh, "crawl") as run:
        run.write("products", [{"product_id": p, "source": "catalog", "title": f"shoe {p}",
                                "crawled_at": datetime.now(timezone.utc)} for p in PIDS])
        run.write("images", [{"image_id": f"{p}#{k}", "product_id": p, "position": k, "sha1": f"{sha}{p}{k}",
                              "status": (statuses or {}).get(f"{p}#{k}", "ok"), "path": f"{p}-{k}.jpg"}
                             for p in PIDS for k in range(2)])
    return run.run_id


def denoise(wh, sha="a"):
    """The rule keeps each product's photo 0 and drops photo 1."""
    with start_run(wh, "denoise") as run:
        run.write("denoise", [{"image_id": f"{p}#{k}", "product_id": p, "position": k, "sha1": f"{sha}{p}{k}",
                               "threshold": 1.0, "distance": 0.0 if k == 0 else 1.3, "kept": k == 0,
                               "reason": "anchor" if k == 0 else "far"} for p in PIDS for k in range(2)])
    return run.run_id


def current(wh, materialised: bool = True) -> dict[str, tuple]:
    con = wh.connect(materialised=materialised)
    try:
        rows = con.execute("SELECT image_id, kept, rule_kept, decided_by FROM denoise_current").fetchall()
    finally:
        con.close()
    return {r[0]: r[1:] for r in rows}


@pytest.fixture
def home(settings):
    wh = open_warehouse(settings)
    crawl(wh)
    denoise(wh)
    return settings, wh


def test_a_correction_is_a_run_and_denoise_current_applies_it(home):
    settings, wh = home
    assert current(wh) == {"c:1#0": (True, True, "rule"), "c:1#1": (False, False, "rule"),
                           "c:2#0": (True, True, "rule"), "c:2#1": (False, False, "rule")}
    run_id = record_override(settings, "c:1#1", True, "ann", "  a sole\nview  ")
    assert current(wh)["c:1#1"] == (True, False, "person")
    drop = record_override(settings, "c:2#0", False, "bo", "a box, not the shoe")
    assert current(wh)["c:2#0"] == (False, True, "person")
    assert current(wh)["c:1#0"] == (True, True, "rule")
    # Lineage: the run that wrote the photo and the denoise run it corrects; the row says who, when, why.
    run = wh.query("SELECT * FROM runs WHERE run_id = ?", [run_id]).to_pylist()[0]
    assert run["step"] == "override" and run["status"] == "success"
    assert {r["step"] for r in lineage(wh, run_id)} == {"override", "crawl", "denoise"}
    assert json.loads(run["parameters"])["reason"] == "a sole view"  # on one line
    got = overrides_for_product(settings, "c:1")
    assert set(got) == {"c:1#1"} and got["c:1#1"]["kept"] is True and got["c:1#1"]["rule_kept"] is False
    assert (got["c:1#1"]["who"], got["c:1#1"]["reason"], got["c:1#1"]["run_id"]) == ("ann", "a sole view", run_id)
    assert got["c:1#1"]["when"] <= overrides_for_product(settings, "c:2")["c:2#0"]["when"]
    assert overrides_for_product(settings, "c:2")["c:2#0"]["run_id"] == drop
    assert overrides_for_product(settings, "c:9") == {}


def test_the_newest_correction_wins_and_a_withdrawal_hands_the_photo_back_to_the_rule(home):
    settings, wh = home
    record_override(settings, "c:1#1", True, "ann", "a sole view")
    record_override(settings, "c:1#1", False, "bo", "no: another shoe's sole")
    assert current(wh)["c:1#1"] == (False, False, "person")
    assert overrides_for_product(settings, "c:1")["c:1#1"]["who"] == "bo"
    record_override(settings, "c:1#1", True, "ann", "it is this shoe")
    assert current(wh)["c:1#1"] == (True, False, "person")
    withdraw_override(settings, "c:1#1", "ann", "let the rule decide")
    assert current(wh)["c:1#1"] == (False, False, "rule")
    assert overrides_for_product(settings, "c:1") == {}
    with pytest.raises(NothingToWithdraw, match="no correction by hand"):
        withdraw_override(settings, "c:1#1", "ann", "again")
    assert wh.query("SELECT count(*) FROM denoise_overrides").column(0)[0].as_py() == 4  # a log: nothing deleted


def test_unknown_photos_and_bad_corrections_are_refused_with_nothing_written(settings):
    wh = open_warehouse(settings)
    crawl(wh, statuses={"c:2#1": "corrupt"})
    denoise(wh)
    before = wh.query("SELECT count(*) FROM runs").column(0)[0].as_py()
    for image_id in ("c:9#0", "", "c:1", 7, "x" * 1000):
        with pytest.raises(UnknownImage, match="no current photo"):
            record_override(settings, image_id, True, "ann", "why")
    with pytest.raises(BadOverride, match="needs a reason"):
        record_override(settings, "c:1#1", True, "ann", " \n ")
    with pytest.raises(BadOverride, match="needs a who"):
        record_override(settings, "c:1#1", True, "", "why")
    with pytest.raises(BadOverride, match="control characters"):
        record_override(settings, "c:1#1", True, "ann", "fine \u202e enif")
    with pytest.raises(BadOverride, match="keeps .true. or drops"):
        record_override(settings, "c:1#1", "yes", "ann", "why")
    with pytest.raises(BadOverride, match="its photo is corrupt"):
        record_override(settings, "c:2#1", True, "ann", "keep it")
    record_override(settings, "c:2#1", False, "ann", "dropping a corrupt photo is fine")
    assert wh.query("SELECT count(*) FROM runs").column(0)[0].as_py() == before + 1
    assert wh.query("SELECT count(*) FROM denoise_overrides").column(0)[0].as_py() == 1


def test_a_correction_is_about_the_content_it_was_made_on(home):
    """It outlives denoise runs; a re-crawled photo with other content is judged afresh: it no longer applies."""
    settings, wh = home
    record_override(settings, "c:1#1", True, "ann", "a sole view")
    denoise(wh)  # a new denoise run over the same photos: the correction still holds
    assert current(wh)["c:1#1"] == (True, False, "person")
    crawl(wh, sha="b")
    denoise(wh, sha="b")
    assert current(wh)["c:1#1"] == (False, False, "rule")
    assert overrides_for_product(settings, "c:1") == {}


def test_materialised_views_stay_exact_after_a_correction(home):
    settings, wh = home
    assert set(valid_files(wh)) == set(MATERIALISED)
    before = json.loads((wh.root / CURRENT_DIR / "manifest.json").read_text())
    record_override(settings, "c:1#1", True, "ann", "a sole view")
    # Rewritten by the correction's run: the manifest names the new batch, the file holds the correction.
    assert set(valid_files(wh)) == set(MATERIALISED)
    manifest = json.loads((wh.root / CURRENT_DIR / "manifest.json").read_text())
    assert manifest["files"]["denoise_current"] != before["files"]["denoise_current"]
    assert len(manifest["tables"]["denoise_overrides"]) == len(before["tables"]["denoise_overrides"]) + 1
    assert current(wh, True) == current(wh, False) and current(wh, True)["c:1#1"] == (True, False, "person")
    sql = wh.connect().execute("SELECT sql FROM duckdb_views() WHERE view_name = 'denoise_current'").fetchone()[0]
    assert f"/{CURRENT_DIR}/denoise_current-" in sql
    # A correction committed without a refresh (killed before it): denoise_current is computed live, never stale.
    wh.write("override-by-hand", {"denoise_overrides": [{
        "image_id": "c:2#1", "product_id": "c:2", "sha1": "ac:21", "kept": True, "who": "cy", "reason": "r",
        "decided_at": datetime(2030, 1, 1, tzinfo=timezone.utc)}]})
    assert "denoise_current" not in valid_files(wh) and "images_current" in valid_files(wh)
    assert current(wh, True) == current(wh, False) and current(wh, True)["c:2#1"] == (True, False, "person")
    assert wh.query("SELECT kept FROM denoise_current WHERE image_id = 'c:2#1'").column(0)[0].as_py() is True


def test_the_next_index_and_training_use_the_corrections(embedded_settings):
    """Drop a kept photo by hand: the next index does not hold it; keep a dropped photo: it does (and training
    selects the same photos). Compared with the rule's own kept set, computed from the denoise table."""
    import tasks.index
    from tasks.denoise import denoise as run_denoise
    from tasks.split import make_split
    from training.data import load_photos

    settings = embedded_settings
    wh = open_warehouse(settings)
    denoise_run = run_denoise(settings)
    rule = {r["image_id"]: r["kept"] for r in wh.query(
        "SELECT image_id, kept FROM denoise WHERE run_id = ? AND reason IN ('near', 'far')", [denoise_run]
    ).to_pylist()}
    dropped_by_hand = min(i for i, kept in rule.items() if kept)
    kept_by_hand = min(i for i, kept in rule.items() if not kept)
    record_override(settings, dropped_by_hand, False, "ann", "another shoe")
    corrections = record_override(settings, kept_by_hand, True, "ann", "a heel view of this shoe")
    rule_kept = {r["image_id"] for r in wh.query("""SELECT d.image_id FROM denoise d JOIN images_current i
        ON i.image_id = d.image_id AND i.sha1 = d.sha1 WHERE d.run_id = ? AND d.kept AND i.status = 'ok'""",
                                                     [denoise_run]).to_pylist()}
    expected = (rule_kept - {dropped_by_hand}) | {kept_by_hand}

    index_id = tasks.index.build_index(settings, "imagenet:" + settings.embed.backbone)
    mapping = set(pq.read_table(settings.indexes_dir / index_id / "mapping.parquet").column("image_id").to_pylist())
    assert dropped_by_hand not in mapping and kept_by_hand in mapping
    assert mapping == expected
    assert corrections in {r["run_id"] for r in lineage(wh, index_id)}  # the index names the corrections it used
    photos = load_photos(wh, make_split(settings), "denoised", ("train", "val", "test"))
    assert set(photos.image_ids) == expected


def test_the_report_counts_disagreements_and_captions_each_pair(embedded_settings):
    from tasks.denoise import denoise as run_denoise
    from tasks.denoise_report import DROPPED_COLOUR, KEPT_COLOUR, _drawable, write_denoise_report

    settings = embedded_settings
    wh = open_warehouse(settings)
    run_id = run_denoise(settings)
    rows = wh.query("SELECT image_id, kept FROM denoise WHERE run_id = ? AND reason IN ('near', 'far') "
                    "ORDER BY image_id", [run_id]).to_pylist()
    kept, dropped = [r["image_id"] for r in rows if r["kept"]], [r["image_id"] for r in rows if not r["kept"]]
    record_override(settings, dropped[0], True, "ann", "a sole view")  # disagrees: the rule dropped it
    record_override(settings, kept[0], False, "bo", "a box")  # disagrees: the rule kept it
    record_override(settings, kept[1], True, "bo", "yes, this shoe")  # agrees
    out = write_denoise_report(settings, run_id)
    assert out == settings.reports_dir / run_id and not out.name.startswith("denoise-denoise")
    summary = json.loads((out / "summary.json").read_text())
    c = summary["corrections_by_hand"]
    assert (c["photos"], c["agree"], c["disagree"]) == (3, 1, 2)
    assert (c["rule_dropped_person_kept"], c["rule_kept_person_dropped"]) == (1, 1)
    assert c["disagreement_rate"] == pytest.approx(2 / 3)
    assert "disagreed with people on **2 of 3**" in (out / "summary.md").read_text()
    # The sheets: the far one frames dropped photos in red, the borderline one has kept photos in green too.
    from PIL import Image

    far = np.asarray(Image.open(out / "sheet_far.png").convert("RGB")).reshape(-1, 3)
    border = np.asarray(Image.open(out / "sheet_borderline.png").convert("RGB")).reshape(-1, 3)

    def count(pixels, colour):
        return int((pixels == colour).all(axis=1).sum())

    frame = 4 * 3 * settings.denoise.sheet_thumb_px  # one photo's frame: 4 sides, 3 px wide
    assert count(far, DROPPED_COLOUR) > 10 * frame and count(border, KEPT_COLOUR) > 2 * frame
    assert _drawable("Nike \x00\U0010fffe Air") == "Nike Air"  # what the font cannot draw is left out


CLI = [sys.executable, "-m", "shoesearch"]


@pytest.mark.e2e
def test_the_override_command(home, tmp_path):
    settings, wh = home
    env = {**{k: v for k, v in os.environ.items() if k != "SHOESEARCH_HOME"}, "USER": "dana", "LOGNAME": "dana"}

    def cli(*args):
        return subprocess.run([*CLI, "--home", str(settings.home), *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120, check=False)

    done = cli("override", "c:1#1", "--keep", "--reason", "a sole view")
    assert done.returncode == 0, done.stderr
    assert "c:1#1 kept by dana: a sole view (the rule: dropped)" in done.stdout
    assert current(wh)["c:1#1"] == (True, False, "person")
    done = cli("override", "c:1#0", "--drop", "--reason", "a box", "--who", "eve")
    assert done.returncode == 0 and "c:1#0 dropped by eve" in done.stdout, done.stderr
    assert cli("override", "c:1#1", "--withdraw", "--reason", "undo").returncode == 0
    assert current(wh)["c:1#1"] == (False, False, "rule")
    for args, message in ((("c:9#9", "--drop", "--reason", "x"), "no current photo 'c:9#9'"),
                          (("c:1#1", "--withdraw", "--reason", "x"), "no correction by hand to withdraw"),
                          (("c:1#1", "--keep", "--reason", ""), "needs a reason")):
        res = cli("override", *args)
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2 and res.stdout == "" and len(lines) == 1, res.stderr
        assert lines[0].startswith("shoesearch: error: ") and message in lines[0], res.stderr
    res = cli("override", "c:1#1", "--keep", "--drop", "--reason", "x")  # one decision at a time
    assert res.returncode == 2 and "not allowed with argument" in res.stderr
    res = cli("override", "c:1#1", "--keep")
    assert res.returncode == 2 and "--reason" in res.stderr
    missing = tmp_path / "nohome"
    res = subprocess.run([*CLI, "--home", str(missing), "override", "c:1#1", "--keep", "--reason", "x"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 2 and "no shoesearch home" in res.stderr and not Path(missing).exists()
