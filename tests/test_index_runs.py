"""Index runs against other runs (issue 25): the lineage names the denoise run the index's photos came from
even when a denoise commits during the build (item 11), and concurrent ``index`` commands serialise instead of
pruning each other's fresh directories (item 13)."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

import tasks.index
from warehouse import lineage, open_warehouse, start_run


def _kept(wh, run_id: str) -> set[str]:
    return set(wh.query("""SELECT d.image_id FROM denoise d JOIN images_current i ON i.image_id = d.image_id
                           WHERE d.run_id = ? AND d.kept AND i.status = 'ok'""", [run_id]).column("image_id")
               .to_pylist())


def _commit_manual_denoise(wh, first_run: str) -> str:
    """A second denoise run that keeps every photo the first one judged (as a manual `denoise` would commit)."""
    rows = wh.query("SELECT * EXCLUDE (run_id) FROM denoise WHERE run_id = ?", [first_run]).to_pylist()
    with start_run(wh, step="denoise", params={"manual": True}, inputs=[first_run]) as run:
        run.write("denoise", [{**r, "kept": True, "reason": "manual"} for r in rows])
    return run.run_id


def test_index_lineage_names_the_denoise_run_its_photos_came_from(embedded_settings, monkeypatch):
    from tasks.denoise import denoise

    settings = embedded_settings
    wh = open_warehouse(settings)
    first = denoise(settings)
    second = []
    embed = tasks.index.embed_images

    def denoise_commits_meanwhile(*args, **kwargs):  # between choosing the photos and recording the lineage
        if not second:
            second.append(_commit_manual_denoise(wh, first))
        return embed(*args, **kwargs)

    monkeypatch.setattr(tasks.index, "embed_images", denoise_commits_meanwhile)
    index_id = tasks.index.build_index(settings, "imagenet:" + settings.embed.backbone)
    assert second and _kept(wh, second[0]) != _kept(wh, first)  # the race happened, and it matters

    named = [r["run_id"] for r in lineage(wh, index_id) if r["step"] == "denoise" and r["depth"] == 1]
    assert named == [first]
    mapping = pq.read_table(settings.indexes_dir / index_id / "mapping.parquet")
    assert set(mapping.column("image_id").to_pylist()) == _kept(wh, named[0])

    # Training photos are selected by the denoise run they are recorded with, too.
    from tasks.split import make_split
    from training.data import load_photos

    photos = load_photos(wh, make_split(settings), "denoised", ("train", "val", "test"))
    assert photos.denoise_run_id == second[0] and set(photos.image_ids) == _kept(wh, second[0])


SLOW_SWITCH = """
import time
import tasks.gate

_switch = tasks.gate.switch_index


def switch_index(*args, **kwargs):
    time.sleep(6)
    return _switch(*args, **kwargs)


tasks.gate.switch_index = switch_index
"""


@pytest.mark.e2e
def test_concurrent_index_commands_all_succeed_and_current_is_complete(tmp_path, indexed_home, monkeypatch):
    import os
    import subprocess

    from index.store import current_index
    from tests.fixtures_catalog import writable_copy
    from tests.fixtures_search import search_settings
    from tests.test_cli_readonly import CLI

    home = writable_copy(indexed_home, tmp_path, monkeypatch)
    env = {**os.environ, "SHOESEARCH_HOME": str(home)}
    argv = [*CLI, "--set", "index.keep_indexes=1", "index", "--model", "imagenet:" + search_settings(home).embed.backbone]
    # The first command pauses between its build and its switch (where a kill or a slow gate would), so the
    # others finish their builds and switches meanwhile: unserialised, their pruning deletes its fresh index.
    (tmp_path / "slow").mkdir()
    (tmp_path / "slow" / "sitecustomize.py").write_text(SLOW_SWITCH)
    slow = {**env, "PYTHONPATH": os.pathsep.join([str(tmp_path / "slow"), env.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen(argv, cwd=tmp_path, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for e in (slow, env, env)]
    outcomes = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    assert [rc for rc, _, _ in outcomes] == [0, 0, 0], outcomes

    settings = search_settings(home)
    info = current_index(settings)
    pointer = (settings.indexes_dir / "CURRENT").read_text().strip()
    assert info.index_id == pointer and (info.path / "index.faiss").is_file()
    wh = open_warehouse(settings)
    switched = wh.query("SELECT index_id FROM indexes WHERE status = 'current'").column("index_id").to_pylist()
    assert len(set(switched)) == 4  # the fixture's and one per command: each built its own and switched it in
