"""bench/REPORT.md: every benchmark's figures as tables, rendered from the committed bench/results/*.json.

    .venv/bin/python bench/render_tables.py            # prints the report
    .venv/bin/python bench/render_tables.py --write    # writes bench/REPORT.md and README.md's results table
    .venv/bin/python bench/render_tables.py --check    # exits 1 when either differs from the rendering

Each section names the JSON its tables come from and the command (from its bench script's docstring) that
writes that JSON. The rendering reads nothing but the JSON and the bench scripts' docstrings, in a fixed order
with fixed formatting, so the same files always give the same report (``tests/test_bench_report.py`` holds it).
"""

from __future__ import annotations

import argparse
import ast
import itertools
import re
import sys
from pathlib import Path
from typing import Callable

if not __package__:  # run as a script: import bench.* from the repo, not from bench/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench import report_perf as perf  # noqa: E402
from bench import report_quality as quality  # noqa: E402
from bench import report_readme  # noqa: E402

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
REPORT = BENCH / "REPORT.md"
README = BENCH.parent / "README.md"
WRITE_COMMAND = ".venv/bin/python bench/render_tables.py --write"

QUALITY_FLAGS = ("Each run's seeds and `--set` values are in its table; `--tag T` names the file "
                 "`quality-<dataset>-T.json`.")
# (title, the bench script writing the JSON, a note on how the committed JSON was made, the renderer)
SECTIONS: tuple[tuple[str, str, str, Callable[[Path], list[str]]], ...] = (
    ("Warehouse analyst query", "warehouse.py", "", perf.warehouse),
    ("Crawl", "crawl.py", "", perf.crawl),
    ("Embedding", "embed.py", "`embed-f16d00e.json` is the same command run in a `git worktree` of commit f16d00e "
     "(before the hardening of issue 25), its `embed.json` renamed.", perf.embed),
    ("Embedding engines", "embed.py", "`bench/embed.py --engine ray`: the local engine and Ray Data on the same "
     "photos in one run; the Ray cluster's start-up is paid once per process.", perf.embed_engines),
    ("API search latency", "api_search.py", "", perf.api_search),
    ("API load", "api.py", "`--quick` writes `api-quick.json` at tiny sizes: it proves the script runs, its figures "
     "mean nothing.", perf.api_load),
    ("Search index", "search.py", "", perf.search),
    ("Training throughput", "train.py", "", perf.train),
    ("Cost of growth", "scaling.py", "", perf.scaling),
    ("GPU", "gpu.py", "Ratios to the limits measured on one H100 (bf16, channels_last, 224 px). `--device cpu` "
     "writes `gpu-cpu.json` at tiny sizes: it proves the script runs (`tests/test_bench_gpu.py`), its figures mean "
     "nothing.", perf.gpu),
    ("Retrieval quality", "quality.py", "Runs over three or more seeds (splits). " + QUALITY_FLAGS,
     quality.multi_seed_runs),
    ("Recipe sweep", "quality.py", "Every footwear-dev run, against the three-seed run at the same number of "
     "trainable blocks on the same splits. " + QUALITY_FLAGS, quality.recipe),
    ("Raw vs denoised", "quality.py", "`--datasets footwear-dev-noisy --seeds 0 --photos raw denoised`, then "
     "`--seeds 1 2 ... --tag seeds12`, pooled over both files (they ran the same settings).", quality.raw_vs_denoised),
    ("Whitening and backbones", "whitening.py", "The backbone runs add `--set train.backbone=B --set "
     "embed.backbone=B --tag B`.", perf.whitening),
    ("Re-ranking", "rerank.py", "", quality.rerank),
    ("Denoise rules", "denoise_rules.py", "", quality.denoise_rules),
    ("Denoise threshold", "denoise_threshold.py", "", perf.denoise_threshold),
    ("Real catalog", "realshop.py", "", quality.realshop),
)


class ReportError(Exception):
    """A JSON under bench/results that the report cannot be rendered from."""


def command(script: str, bench: Path = BENCH) -> str:
    """The command that runs ``bench/<script>``, as its docstring gives it (option lines joined, comments off)."""
    lines = (ast.get_docstring(ast.parse((bench / script).read_text())) or "").splitlines()
    for i, line in enumerate(lines):
        found = re.search(r"(?:\.venv/bin/)?python bench/\S+\.py.*", line)
        if found:
            more = itertools.takewhile(lambda x: x.startswith("["), (x.strip() for x in lines[i + 1:]))
            return " ".join(" ".join(re.sub(r"\s#.*$", "", x) for x in (found.group(0), *more)).split())
    return f".venv/bin/python bench/{script}"


def anchor(title: str) -> str:
    """The anchor GitHub gives a markdown heading."""
    return re.sub(r"[^a-z0-9 -]", "", title.lower()).replace(" ", "-")


def header() -> list[str]:
    out = ["# Benchmark report", "",
           f"Generated from `bench/results/*.json` by `{WRITE_COMMAND}`; do not edit by hand. "
           "`.venv/bin/python bench/render_tables.py --check` and `tests/test_bench_report.py` fail when this file "
           "differs from what the JSON renders. Every table names its JSON; each section gives the command that "
           "writes it (from its bench script's docstring). Machine, date and settings are the ones each JSON records.",
           "", "Contents:", ""]
    return out + [f"- [{title}](#{anchor(title)}) (`bench/{script}`)" for title, script, _, _ in SECTIONS]


def render_report(results: Path = RESULTS, bench: Path = BENCH) -> str:
    """The whole report, rendered from the JSON under ``results``; a JSON it cannot read raises ReportError."""
    out = header()
    for title, script, note, render in SECTIONS:
        try:
            body = render(results)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
            raise ReportError(f"section {title!r} (bench/{script}'s JSON under {results}): "
                              f"{type(e).__name__}: {e}") from e
        written = f"Written by `{command(script, bench)}`."
        out += ["", f"## {title}", "", f"{written} {note}".strip(), "", *body]
    return "\n".join(out) + "\n"


def render_readme(readme: Path = README, results: Path = RESULTS) -> str:
    """``readme`` with its results table (between ``report_readme``'s markers) rendered from ``results``."""
    try:
        return report_readme.splice(readme.read_text(), report_readme.readme_block(results))
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, StopIteration) as e:
        raise ReportError(f"README results table (from {results}): {type(e).__name__}: {e}") from e


def check(report: Path = REPORT, results: Path = RESULTS, readme: Path | None = README) -> str | None:
    """None when ``report`` (and ``readme``'s results table) hold what ``results`` renders, else the one line
    saying what is wrong and the fix."""
    for path, render in ((report, lambda: render_report(results)), (readme, lambda: render_readme(readme, results))):
        if path is None:
            continue
        shown = path.relative_to(BENCH.parent) if path.is_relative_to(BENCH.parent) else path
        if not path.exists():
            return f"{shown} is missing: run {WRITE_COMMAND}"
        if path.read_text() != render():
            return f"{shown} differs from what bench/results/*.json renders: run {WRITE_COMMAND}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help=f"write {REPORT.name}")
    mode.add_argument("--check", action="store_true", help=f"exit 1 when {REPORT.name} differs from the rendering")
    args = parser.parse_args(argv)
    try:
        if args.check:
            problem = check()
            if problem:
                print(f"render_tables: {problem}", file=sys.stderr)
            return 1 if problem else 0
        text = render_report()
        readme = render_readme()
    except ReportError as e:
        print(f"render_tables: error: {e}", file=sys.stderr)
        return 2
    if args.write:
        REPORT.write_text(text)
        README.write_text(readme)
        print(f"wrote {REPORT} and the results table of {README}")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
