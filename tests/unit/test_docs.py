"""The README stays a short page and every relative link in it and in docs/ leads somewhere: to a file
that exists and, when the link names a heading (``page.md#heading``), to a heading of that page."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from helpers import ROOT

README_MAX_LINES = 200

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)
CODE_SPAN = re.compile(r"`[^`\n]*`")


def heading_anchors(text: str) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces as hyphens,
    a repeated anchor numbered -1, -2, ..."""
    anchors: set[str] = set()
    for line in FENCE.sub("", text).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).lower()).replace(" ", "-")
        base, n = slug, 0
        while slug in anchors:
            n += 1
            slug = f"{base}-{n}"
        anchors.add(slug)
    return anchors


def broken_links(page: Path) -> list[str]:
    """Relative links of ``page`` (outside code) whose file or heading does not exist, as
    ``'target: reason'`` strings."""
    text = CODE_SPAN.sub("", FENCE.sub("", page.read_text()))
    broken = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}")
        elif anchor and dest.suffix == ".md" and anchor not in heading_anchors(dest.read_text()):
            broken.append(f"{target}: no heading with anchor #{anchor} in {dest.name}")
    return broken


def doc_pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_readme_is_at_most_200_lines():
    n = len((ROOT / "README.md").read_text().splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines; move detail into a docs/ page and link it"


@pytest.mark.parametrize("page", doc_pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    assert not broken_links(page), f"broken links in {page.relative_to(ROOT)}: {broken_links(page)}"


def test_readme_links_every_docs_page():
    readme = (ROOT / "README.md").read_text()
    unlinked = [p.name for p in sorted((ROOT / "docs").glob("*.md")) if f"(docs/{p.name}" not in readme]
    assert not unlinked, f"docs pages the README does not link: {unlinked}"


def test_link_checker_finds_a_missing_file_and_a_missing_heading(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## A heading, with `code` (and more)\n")
    page = tmp_path / "page.md"
    page.write_text("# Page\n\n[ok](other.md#a-heading-with-code-and-more) [ok](#page) [web](https://example.org/x)\n"
                    "`[not a link](nowhere.md)`\n```\n[not a link](nowhere.md)\n```\n"
                    "[gone](missing.md) [bad anchor](other.md#no-such-heading) ![img](missing.png)\n")
    broken = broken_links(page)
    assert [b.split(":")[0] for b in broken] == ["missing.md", "other.md#no-such-heading", "missing.png"]


REPO_PATH = re.compile(r"(?<![\w./-])((?:tests|applications|utils|z_task_shell|benchmarks|models|dataloader|engine|"
                       r"export|explain|demos|criterions|optim|docs|config|experiments)/"
                       r"[\w./-]*\w\.(?:py|sh|yaml|md|txt|ini))")


def test_every_repository_file_named_in_docs_and_code_exists():
    """A repository path named in a page, a docstring or a comment is a file that exists (three went stale
    when the tests moved under tests/unit and tests/e2e)."""
    pages = [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]
    code = [p for p in ROOT.rglob("*.py") if not {".venv", "output", "data"} & set(p.relative_to(ROOT).parts)]
    missing = [f"{page.relative_to(ROOT)}: {m.group(1)}" for page in [*pages, *code]
               for m in REPO_PATH.finditer(page.read_text()) if not (ROOT / m.group(1)).exists()]
    assert not missing, missing
