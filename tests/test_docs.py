"""The documentation cites only what ships: links and anchors resolve, no unshipped files are cited."""

import ast
import configparser
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SOURCES = [p for folder in ("qpm_sklearn", "benchmarks", "examples") for p in sorted((ROOT / folder).rglob("*.py"))]

LINK = re.compile(r"\]\(([^)\s]+)\)")  # markdown [text](target)
DOCS_REFERENCE = re.compile(r"docs/([\w.-]+\.md)(?:#([\w-]+))?")  # "see docs/method.md#anchor" in code


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors of a markdown page, plus explicit ``<a id="...">`` anchors."""
    text = page.read_text(encoding="utf-8")
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)  # no headings inside code blocks
    found = set(re.findall(r'<a id="([^"]+)"', text))
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*$", text, flags=re.M):
        found.add(re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-"))
    return found


def source_url() -> str:
    """The repository address setup.cfg declares (``project_urls`` Source)."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    urls = dict(line.split("=", 1) for line in config["metadata"]["project_urls"].strip().splitlines())
    return {key.strip(): value.strip() for key, value in urls.items()}["Source"]


# Links into this repository, written absolutely in README.md (the package index shows it too).
IN_REPOSITORY = source_url() + "/blob/main/"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_into_the_repository_and_anchors_resolve(page):
    broken = []
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if target.startswith(IN_REPOSITORY):
            path, _, anchor = target.removeprefix(IN_REPOSITORY).partition("#")
            linked = ROOT / path
        elif re.match(r"[a-z]+:", target):  # other http(s), mailto: not checked offline
            continue
        else:
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target}: no file {linked}")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}: no anchor #{anchor} in {linked.name}")
    assert not broken, f"{page.name}: " + "; ".join(broken)


def test_readme_links_are_absolute():
    # README.md is also the package index page, where a relative link leads nowhere.
    relative = [target for target in LINK.findall((ROOT / "README.md").read_text(encoding="utf-8"))
                if not re.match(r"https?://", target)]  # fmt: skip
    assert relative == [], f"README.md: relative links {relative}; write them as {IN_REPOSITORY}<path>"
    assert sum(t.startswith(IN_REPOSITORY) for t in LINK.findall((ROOT / "README.md").read_text())) > 5


def test_code_cites_docs_pages_that_exist():
    broken = []
    for source in SOURCES:
        for page, anchor in DOCS_REFERENCE.findall(source.read_text(encoding="utf-8")):
            target = ROOT / "docs" / page
            if not target.exists() or (anchor and anchor not in anchors(target)):
                broken.append(f"{source.relative_to(ROOT)}: docs/{page}#{anchor}")
    assert not broken, broken


def test_no_citation_of_files_that_do_not_ship():
    cited = []
    for path in PAGES + SOURCES:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if re.search(r"\bSPEC\b|SPEC\.md|DESIGN\.md", line):
                cited.append(f"{path.relative_to(ROOT)}:{number}")
    assert not cited, f"SPEC/DESIGN citations (those files are not shipped; link docs/method.md): {cited}"


@pytest.mark.parametrize("script", sorted((ROOT / "benchmarks").glob("*.py")), ids=lambda p: p.name)
def test_benchmark_help_cites_no_issue(script):
    """``--help`` prints the docstring's first paragraph: it must make sense to a user, not cite an issue."""
    docstring = ast.get_docstring(ast.parse(script.read_text(encoding="utf-8"))) or ""
    assert not re.search(r"\bissue\b|\bSPEC\b", docstring.split("\n\n")[0], flags=re.I), docstring.split("\n\n")[0]
