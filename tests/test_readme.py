"""The examples of README.md and docs/*.md run: every `shoesearch ...` command (fenced blocks and inline
code), the duckdb CLI line and the Python snippet, through the real entry points, against a small built home.
Every relative link of README.md and docs/**/*.md points at an existing file (and heading, when it names one).

Examples are discovered by parsing the pages, so a new example is covered without touching this file.
Placeholders (RUN_ID, INDEX_ID, PHOTO, DIR, 'jd:100012345#3', "...") are replaced by real values of
the built home; one this file does not know fails the test, naming it. What cannot run here is skipped
by the rules and the explicit list below, each with its reason (and a stale entry fails too).

Each command runs the way a reader would type it: in a working directory whose ``data`` is the
home (the default ``--home``), with ``photo.jpg`` and ``../my_photos`` in place, without
``$SHOESEARCH_HOME``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e  # every documented command through the CLI: outside the fast loop

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]  # where runnable examples live
LINKED_PAGES = [README, *sorted((REPO / "docs").rglob("*.md"))]  # whose links must resolve
BIN = Path(sys.executable).parent
CLI = [sys.executable, "-m", "shoesearch"]
TIMEOUT_S = 300

# Sub-commands that cannot run in a test, and why (what covers them instead).
SKIP_COMMANDS = {
    "shop": "a long-running server (the demo shop); tests/test_shop.py serves it",
    "api": "a long-running server; tests/test_api.py serves the app",
    "serve-flows": "a long-running Prefect server process",
    "crawl": "needs a site on the network (JD, or a demo shop serving); tests/test_crawl.py crawls the shop",
    "nightly": "crawls a site (JD, or a demo shop given as URL) and trains; tests/test_nightly.py runs the flow",
    "demo": "serves a shop and trains (about a minute of CPU); tests/test_demo.py runs it",
}
# README code that names a command in prose rather than showing a runnable example.
SKIP_TEXT = {
    "shoesearch sql": "prose naming the command (`shoesearch sql` is read-only ...); its examples are above it",
}
GPU_MARKERS = ("--device cuda",)
# Tables the built home leaves empty (no training run): queries over them may return no rows.
UNFILLED_TABLES = ("splits", "models", "train_metrics", "evaluations")
PLACEHOLDER = re.compile(r"^(?:[A-Z][A-Z0-9_]*[A-Z0-9]|\.\.\.|jd:\d+#\d+|URL)$")


@dataclass(frozen=True)
class Example:
    text: str  # the command as written (whitespace collapsed)
    kind: str  # shoesearch | duckdb | python
    line: int  # where it starts in its file
    file: str = "README.md"  # the page it is in, relative to the repository

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    @property
    def argv(self) -> list[str]:
        return shlex.split(self.text, comments=True) if self.kind != "python" else []

    @property
    def command(self) -> str | None:
        """The sub-command (first argument that is not a global option or its value)."""
        args, i = self.argv[1:], 0
        while i < len(args) and args[i].startswith("-"):
            i += 2 if args[i] in ("--home", "--set") else 1
        return args[i] if i < len(args) else None


# --- discovery ---------------------------------------------------------------------------------------
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`((?:shoesearch|duckdb) [^`]*)`")


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _shell_commands(body: str, first_line: int, file: str = "README.md"):
    """(command, line) for each shoesearch / duckdb command of a shell block; quoted strings may span lines."""
    lines, i = body.splitlines(), 0
    while i < len(lines):
        start, chunk = i, lines[i]
        while True:
            try:
                shlex.split(chunk, comments=True)
                break
            except ValueError:  # an open quote: the command goes on on the next line
                i += 1
                if i >= len(lines):
                    raise AssertionError(f"{file}:{first_line + start}: unterminated quote") from None
                chunk += "\n" + lines[i]
        i += 1
        if chunk.strip().split(" ", 1)[0] in ("shoesearch", "duckdb"):
            yield chunk.strip(), first_line + start


def page_examples(text: str, file: str = "README.md") -> list[Example]:
    """Every example of one page (``file`` names it), in order, repeats included."""
    found: list[Example] = []
    for m in FENCE.finditer(text):
        lang, body, line = m.group(1), m.group(2), _line_of(text, m.start(2))
        if lang == "python" and "duckdb" in body:
            found.append(Example(body, "python", line, file))
        elif lang in ("", "bash", "sh", "shell", "console"):
            found += [Example(_collapse(cmd), cmd.split(" ", 1)[0], ln, file)
                      for cmd, ln in _shell_commands(body, line, file)]
    prose = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    for m in INLINE.finditer(prose):
        cmd = _collapse(m.group(1).replace("\\|", "|"))
        found.append(Example(cmd, cmd.split(" ", 1)[0], _line_of(prose, m.start()), file))
    return found


def readme_examples(pages: list[Path] | None = None) -> list[Example]:
    """Every example of README.md and docs/*.md, in order, without repeats (the first place it is shown)."""
    found = [ex for page in (PAGES if pages is None else pages)
             for ex in page_examples(page.read_text(encoding="utf-8"), str(page.relative_to(REPO)))]
    seen, unique = set(), []
    for ex in found:  # the same command written twice (with another comment, quoting) runs once
        key = (ex.kind, tuple(ex.argv) or ex.text)
        if key not in seen:
            seen.add(key)
            unique.append(ex)
    return unique


def _collapse(command: str) -> str:
    """One line: runs of whitespace outside and inside quotes become one space (as SQL reads them)."""
    return " ".join(command.split())


def skip_reason(ex: Example) -> str | None:
    if ex.kind != "shoesearch":
        return None
    if ex.text in SKIP_TEXT:
        return SKIP_TEXT[ex.text]
    if any(tok.startswith("[") or tok in ("|", "...]") for tok in ex.argv):
        return "a synopsis ([optional] / alternative arguments), not an example"
    if any(marker in ex.text for marker in GPU_MARKERS):
        return "needs a GPU (and VGG16 weights)"
    return SKIP_COMMANDS.get(ex.command)


WRITERS = {"ingest", "index", "embed", "denoise", "train", "evaluate", "catalog"}


# --- the built home ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Built:
    home: Path
    work: Path  # read-only examples run here: data -> home, photo.jpg, ../my_photos
    catalog: Path
    photo: Path  # a cataloged photo (position 0) of ``photo_product``
    photo_product: str
    values: dict  # placeholder -> real value
    n_products: int
    n_photos: int
    n_dropped: int


@pytest.fixture(scope="module")
def built(tmp_path_factory, indexed_home, synthetic_catalog) -> Built:
    """``indexed_home`` (ingest + ImageNet index) plus a denoise run, the catalog files and a snapshot."""
    from serving.search import current_index_id
    from tasks.denoise import denoise
    from tests.fixtures_search import search_settings
    from warehouse import open_warehouse
    from warehouse.views import write_views_file

    root = tmp_path_factory.mktemp("readme")
    home = root / "home"
    shutil.copytree(indexed_home, home)
    settings = search_settings(home)
    denoise_run = denoise(settings)  # the index's ImageNet embeddings are reused: nothing to embed
    wh = open_warehouse(settings)
    write_views_file(wh, settings.snapshot_path, materialize=True)
    front = wh.query("SELECT product_id, path FROM images_current WHERE position = 0 AND status = 'ok' "
                     "ORDER BY product_id LIMIT 1").to_pylist()[0]
    photo = settings.images_dir / front["path"]
    (settings.reports_dir).mkdir(parents=True, exist_ok=True)
    shutil.copy(photo, settings.reports_dir / "demo-query.jpg")  # what `shoesearch demo` leaves there
    image_id = wh.query("SELECT image_id FROM embeddings WHERE image_id LIKE '%#3' ORDER BY 1 LIMIT 1").column(0)[0]
    counts = wh.query("""SELECT (SELECT count(*) FROM products_current) AS products,
                                (SELECT count(*) FROM images_current) AS photos,
                                (SELECT count(*) FROM denoise_current WHERE NOT kept) AS dropped""").to_pylist()[0]
    values = {"RUN_ID": denoise_run, "INDEX_ID": current_index_id(settings), "IMAGE_ID": image_id.as_py(),
              "PHOTO": "photo.jpg", "CATALOG": str(synthetic_catalog),
              "...": "SELECT count(*) AS photos FROM images_current"}
    b = Built(home, root / "ro" / "work", synthetic_catalog, photo, front["product_id"], values,
              counts["products"], counts["photos"], counts["dropped"])
    make_workdir(b, root / "ro", copy=False)
    return b


def make_workdir(b: Built, base: Path, copy: bool) -> Path:
    """``base/work`` with ``data`` = the home (a private copy for writers), ``photo.jpg``, ``../my_photos``."""
    work = base / "work"
    work.mkdir(parents=True)
    if copy:
        shutil.copytree(b.home, work / "data")
    else:
        (work / "data").symlink_to(b.home)
    shutil.copy(b.photo, work / "photo.jpg")
    (base / "my_photos").symlink_to(b.catalog)
    return work


# --- running an example --------------------------------------------------------------------------------
def substitute(ex: Example, values: dict) -> list[str]:
    """The example's arguments with its placeholders replaced by the built home's values."""
    out, argv = [], ex.argv
    for i, tok in enumerate(argv[1:], start=1):
        if argv[i - 1] == "--home" and tok == "DIR":
            tok = "data"
        elif tok.startswith("DIR/"):
            tok = "data/" + tok[len("DIR/"):]
        elif ex.command == "ingest" and tok == "DIR":
            tok = values["CATALOG"]
        elif re.fullmatch(r"jd:\d+#\d+", tok):
            tok = values["IMAGE_ID"]
        elif PLACEHOLDER.match(tok):
            if tok not in values:
                pytest.fail(f"{ex.where}: placeholder {tok!r} in {ex.text!r} has no value: "
                            "add one to `values` in the `built` fixture, or a skip with its reason")
            tok = values[tok]
        out.append(tok)
    return out


def program(name: str) -> list[str]:
    exe = BIN / name
    if name == "shoesearch":
        return [str(exe)] if exe.exists() else CLI
    assert exe.exists() or shutil.which(name), f"{name} is not installed (the `test` extra installs duckdb-cli)"
    return [str(exe) if exe.exists() else shutil.which(name)]


def run_example(ex: Example, work: Path, values: dict) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SHOESEARCH_HOME"}  # the README's default home: ./data
    stdin = None
    if ex.kind == "python":
        argv = [sys.executable, "-c", python_snippet(ex.text)]
    else:
        argv = [*program(ex.kind), *substitute(ex, values)]
        if ex.kind == "duckdb" and "-c" not in argv:  # an interactive session: type one query
            stdin = values["..."] + ";\n"
    res = subprocess.run(argv, cwd=work, env=env, input=stdin, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert res.returncode == 0, f"{ex.where}: {ex.text}\n$ {shlex.join(argv)}\n{res.stdout}\n{res.stderr}"
    assert "Traceback" not in res.stderr, res.stderr
    return res


def python_snippet(code: str) -> str:
    """The snippet, plus lines that print what it read (``df`` rows, ``images`` rows) as JSON."""
    if importlib.util.find_spec("pandas") is None:  # the README marks .df() "needs pandas"; same query without
        code = code.replace(".df()", ".fetch_arrow_table()")
    return code + '\nimport json\nprint(json.dumps({"df_rows": len(df), ' \
                  '"images": con.sql("SELECT count(*) FROM images").fetchone()[0]}))\n'


def warehouse_files(home: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(home)), p.stat().st_mtime_ns) for p in (home / "warehouse").rglob("*"))


# --- what each command's output must show ---------------------------------------------------------------
def data_rows(out: str) -> list[str]:
    """The rows of a ``format_table`` table (between the dashes and the ``(N rows)`` footer; a row's wrapped
    lines, blank in the first column, are not rows), or of CSV."""
    lines = out.strip().splitlines()
    if len(lines) >= 2 and set(lines[1].replace(" ", "")) == {"-"}:
        footer = [i for i, line in enumerate(lines) if re.fullmatch(r"\(\d+ rows?(, \d+ shown)?\)", line)]
        assert footer, out  # a sentence may follow the table (search: the match level)
        first = len(lines[1].split(" ")[0])
        return [line for line in lines[2:footer[-1]] if line[:first].strip()]
    return lines[1:]  # CSV: a header, then the rows


def check_output(ex: Example, argv: list[str], out: str, b: Built, work: Path) -> None:
    if ex.kind == "duckdb":
        assert ("success" in out and "ingest" in out) if "runs" in ex.text else str(b.n_photos) in out, out
        return
    if ex.kind == "python":
        got = json.loads(out.strip().splitlines()[-1])
        assert got == {"df_rows": b.n_dropped, "images": b.n_photos}, got
        return
    cmd = ex.command
    if cmd is None:  # shoesearch --help
        assert "usage: shoesearch" in out and all(c in out for c in ("tables", "sql", "search", "ingest")), out
    elif cmd == "tables":
        from warehouse import TABLES

        assert {r.split()[0] for r in data_rows(out)} == set(TABLES), out
        assert all(int(r.split()[1]) > 0 for r in data_rows(out) if r.split()[0] in ("products", "images", "runs"))
    elif cmd == "sql":
        query = argv[argv.index("sql") + 1]
        fills = not any(re.search(rf"\b{t}\b", query) for t in UNFILLED_TABLES)
        assert len(data_rows(out)) >= (1 if fills else 0), out
    elif cmd == "lineage":
        rows = data_rows(out)
        assert len(rows) >= 2 and "ingest" in out, out  # the run itself and, upstream, the ingest
        assert b.values["RUN_ID"] not in argv or b.values["RUN_ID"] in rows[0], out  # depth 0: the run asked for
    elif cmd == "search":
        rows = data_rows(out)
        k = int(argv[argv.index("-k") + 1]) if "-k" in argv else 10
        assert len(rows) == min(k, b.n_products), out
        column = out.splitlines()[0].split().index("product_id")  # the cells before it are single words
        assert rows[0].split()[:1] == ["1"] and rows[0].split()[column] == b.photo_product, out
    elif cmd == "ingest":
        assert out.startswith("ingest run ingest-"), out
    elif cmd == "index":
        assert re.search(r"index \S+: current", out), out
    elif cmd == "catalog":
        assert "wrote" in out and (work / "data" / "catalog.duckdb").exists(), out
        assert ("--snapshot" not in argv) or (work / "data" / "snapshot.duckdb").exists(), out
    elif cmd == "settings":  # the home: a JSON row, or the line above the table
        home = [r["value"] for r in json.loads(out) if r["setting"] == "home"] if "json" in argv else \
            re.findall(r"^home: (\S+) \(", out, re.M)
        assert home == [str((work / "data").resolve())], out
    else:  # a command this file has no specific check for yet: it ran and said something
        assert out.strip(), f"{ex.where}: {ex.text} printed nothing"


# --- the tests ---------------------------------------------------------------------------------------------
EXAMPLES = readme_examples()


def test_examples_are_discovered_and_skips_are_current():
    texts = [ex.text for ex in EXAMPLES]
    runnable = [ex for ex in EXAMPLES if skip_reason(ex) is None]
    for expected in ('shoesearch sql "SELECT p.brand', "shoesearch lineage RUN_ID", "shoesearch lineage --index",
                     "shoesearch lineage --image", "shoesearch search photo.jpg", "duckdb -readonly data/catalog"):
        assert any(t.startswith(expected) for t in texts), (expected, texts)
    assert any(ex.kind == "python" for ex in runnable)
    assert len(runnable) >= 15, [ex.text for ex in runnable]
    for text in SKIP_TEXT:  # a skip whose example left the pages is removed too
        assert text in texts, f"SKIP_TEXT entry {text!r} matches no example of README.md or docs/*.md"
    assert {ex.file for ex in runnable} > {"README.md"}, "no runnable example found in docs/*.md"
    used = {ex.command for ex in EXAMPLES}
    assert set(SKIP_COMMANDS) <= used, set(SKIP_COMMANDS) - used


def test_readme_is_a_front_door():
    """Short (the manuals are in docs/), names the two commands, and shows a runnable SQL query first.

    ``../shared/checks/user-path`` runs the README's first ``shoesearch sql "SELECT ..."`` on a denoised home."""
    text = README.read_text(encoding="utf-8")
    assert len(text.encode()) <= 15 * 1024, f"README.md is {len(text.encode())} bytes: move manual text to docs/"
    assert "make demo" in text and "make test" in text
    first_sql = next(ex for ex in page_examples(text) if ex.kind == "shoesearch" and ex.command == "sql")
    assert re.match(r'shoesearch sql (SELECT|WITH)\b', " ".join(first_sql.argv)), first_sql.text
    assert skip_reason(first_sql) is None, first_sql.text


LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    prose = FENCE.sub("", page.read_text(encoding="utf-8"))
    return {_anchor(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", prose, re.M)}


def broken_links(page: Path) -> list[str]:
    """The relative links of a markdown page whose file (or heading anchor) does not exist."""
    broken = []
    for m in LINK.finditer(FENCE.sub("", page.read_text(encoding="utf-8"))):
        target = m.group(1)
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target} (no heading #{anchor} in {dest.name})")
    return broken


@pytest.mark.parametrize("page", LINKED_PAGES, ids=[str(p.relative_to(REPO)) for p in LINKED_PAGES])
def test_relative_links_resolve(page: Path):
    assert broken_links(page) == [], f"{page.relative_to(REPO)}: broken links"


def test_a_broken_link_is_found(tmp_path):
    (tmp_path / "there.md").write_text("# A heading, with `code`\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](there.md) [ok](there.md#a-heading-with-code) [web](https://x.org/y) ![img](no.png)\n"
                    "[gone](missing.md) [bad anchor](there.md#nope)\n```\n[in code](nowhere.md)\n```\n")
    assert broken_links(page) == ["missing.md (no such file)", "there.md#nope (no heading #nope in there.md)"]


@pytest.mark.parametrize("ex", EXAMPLES, ids=[f"{ex.file}:L{ex.line}:{ex.text[:50]}" for ex in EXAMPLES])
def test_readme_example_runs(ex: Example, built: Built, tmp_path):
    reason = skip_reason(ex)
    if reason:
        pytest.skip(reason)
    writer = ex.kind == "shoesearch" and ex.command in WRITERS
    work = make_workdir(built, tmp_path, copy=True) if writer else built.work
    before = warehouse_files(built.home)
    res = run_example(ex, work, built.values)
    argv = substitute(ex, built.values) if ex.kind != "python" else []
    check_output(ex, argv, res.stdout, built, work)
    assert warehouse_files(built.home) == before, "a read-only example changed the shared home's warehouse"
