"""Every relative link in README.md and docs/*.md points to a file that exists, and a link with
an anchor (`page.md#section`, `#section`) to a heading of that page, named as GitHub names it."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^(```|~~~).*?^\1", re.DOTALL | re.MULTILINE)
CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.MULTILINE)


def unfenced(text: str) -> str:
    """The page without its fenced blocks (a ```` block may hold ``` lines)."""
    return FENCE.sub("", re.sub(r"^````.*?^````", "", text, flags=re.DOTALL | re.MULTILINE))


def prose(text: str) -> str:
    """The page without its code: fenced blocks and inline code."""
    return CODE.sub("", unfenced(text))


def anchors(page: Path) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces to
    dashes; a repeated one gets -1, -2, ..."""
    seen: dict[str, int] = {}
    found = set()
    for title in HEADING.findall(unfenced(page.read_text(encoding="utf-8"))):
        slug = re.sub(r"[^\w\- ]", "", title.replace("`", "").strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        found.add(slug if n == 0 else f"{slug}-{n}")
    return found


def broken_links(page: Path) -> list[str]:
    broken = []
    for target in LINK.findall(prose(page.read_text(encoding="utf-8"))):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:: not ours to check
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.name}")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_relative_link_points_to_an_existing_file_and_heading(page):
    assert broken_links(page) == []


def test_the_readme_links_every_page_of_docs():
    readme = prose((ROOT / "README.md").read_text(encoding="utf-8"))
    linked = {(ROOT / target.partition("#")[0]).resolve() for target in LINK.findall(readme)}
    missing = [p.name for p in PAGES[1:] if p.resolve() not in linked]
    assert missing == []


def test_a_broken_link_and_a_missing_heading_are_found(tmp_path):
    (tmp_path / "other.md").write_text("# Other\n\n## A section: with `code`\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md#a-section-with-code) [gone](nothere.md) [no heading](other.md#nope)\n"
        "[self](#title) [self, missing](#missing)\n\n# Title\n\n```\n[in code](nothere.md)\n```\n",
        encoding="utf-8",
    )
    assert broken_links(page) == [
        "nothere.md: no such file",
        "other.md#nope: no heading #nope in other.md",
        "#missing: no heading #missing in page.md",
    ]
