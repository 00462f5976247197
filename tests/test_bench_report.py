"""bench/REPORT.md is generated: the committed file is exactly what bench/results/*.json renders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bench import render_tables


def test_committed_report_is_what_the_json_renders():
    committed = render_tables.REPORT.read_text() if render_tables.REPORT.exists() else ""
    assert committed == render_tables.render_report(), (
        f"bench/REPORT.md differs from what bench/results/*.json renders: run {render_tables.WRITE_COMMAND}")


def test_every_committed_json_is_named_in_the_report():
    report = render_tables.render_report()
    unnamed = [p.name for p in sorted(render_tables.RESULTS.glob("*.json")) if p.name not in report]
    assert not unnamed, f"JSON under bench/results that bench/REPORT.md does not render: {unnamed}"
    for title, script, _, _ in render_tables.SECTIONS:
        assert f"## {title}\n" in report and f"python bench/{script}" in report


@pytest.fixture
def results_copy(tmp_path: Path) -> Path:
    return Path(shutil.copytree(render_tables.RESULTS, tmp_path / "results"))


def test_a_changed_figure_changes_the_report_and_fails_the_check(results_copy: Path, tmp_path: Path):
    report = tmp_path / "REPORT.md"
    report.write_text(render_tables.render_report(results_copy))
    assert render_tables.check(report, results_copy) is None
    data = json.loads((results_copy / "warehouse.json").read_text())
    data["timings"]["analyst query (snapshot.duckdb)"]["p50_ms"] = 41.7
    (results_copy / "warehouse.json").write_text(json.dumps(data))
    assert "| analyst query (snapshot.duckdb) | 41.7 |" in render_tables.render_report(results_copy)
    problem = render_tables.check(report, results_copy)
    assert problem is not None and "\n" not in problem and render_tables.WRITE_COMMAND in problem
    assert "missing" in render_tables.check(tmp_path / "absent.md", results_copy)


def test_a_missing_json_renders_a_notice_and_a_broken_one_a_one_line_error(results_copy: Path):
    (results_copy / "crawl.json").unlink()
    assert "No `bench/results/crawl.json` committed." in render_tables.render_report(results_copy)
    (results_copy / "train.json").write_text('{"config": {}}')
    with pytest.raises(render_tables.ReportError, match="Training throughput.*KeyError") as failure:
        render_tables.render_report(results_copy)
    assert "\n" not in str(failure.value)


def test_each_section_names_the_command_from_its_script_docstring():
    assert render_tables.command("quality.py") == (
        ".venv/bin/python bench/quality.py [--datasets footwear-dev] [--seeds 0] [--photos denoised] "
        "[--set train.epochs=4 ...] [--tag T]")
    assert render_tables.command("search.py") == ".venv/bin/python bench/search.py"  # its comment left out


def test_the_readme_results_table_is_what_the_json_renders(results_copy: Path, tmp_path: Path):
    """Issue 28: the README's results table is rendered from the JSON (between its markers), not typed."""
    from bench import report_readme

    assert render_tables.README.read_text() == render_tables.render_readme(), (
        f"README.md's results table differs from what bench/results/*.json renders: run {render_tables.WRITE_COMMAND}")
    readme = tmp_path / "README.md"
    readme.write_text(render_tables.README.read_text())
    data = json.loads((results_copy / "realshop.json").read_text())
    next(v for v in data["variants"] if v["variant"] == "trained")["recall_at_1"] = 0.1234
    (results_copy / "realshop.json").write_text(json.dumps(data))
    assert "Recall@1 **0.123**" in render_tables.render_readme(readme, results_copy)
    problem = render_tables.check(render_tables.REPORT, results_copy, readme)
    assert problem is not None and "\n" not in problem
    readme.write_text("# no markers\n")
    with pytest.raises(render_tables.ReportError, match="no results markers"):
        render_tables.render_readme(readme, results_copy)
    assert report_readme.START in render_tables.README.read_text()
