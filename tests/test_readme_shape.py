"""The README fits its job (issue 24): short, the time and where results land on its first
screen, a link to every docs page, and every relative link in README and docs/ resolving."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
LINK = re.compile(r"\]\(([^)#\s]+\.md)(?:#([\w-]+))?\)")


def _anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    anchors = set()
    for heading in re.findall(r"^#+ (.+)$", text, re.M):
        anchors.add(re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-"))
    return anchors


def test_the_readme_is_short_and_its_first_screen_says_time_and_where_results_land():
    lines = README.read_text().splitlines()
    assert len(lines) <= 220, len(lines)
    first_screen = "\n".join(lines[:40])
    assert "make repro" in first_screen and "make test" in first_screen
    assert re.search(r"\d+ min \d+ s", first_screen), "the measured time of make repro"
    assert "metrics/table2.md" in first_screen and "plots/" in first_screen


def test_the_readme_links_every_docs_page():
    text = README.read_text()
    missing = [page.name for page in DOCS if f"](docs/{page.name})" not in text]
    assert not missing, missing


def test_every_relative_markdown_link_resolves():
    broken, checked = [], 0
    for path in [README, *DOCS]:
        for target, anchor in LINK.findall(path.read_text()):
            checked += 1
            if target.startswith("http"):
                continue
            linked = (path.parent / target).resolve()
            if not linked.is_file():
                broken.append(f"{path.relative_to(REPO)}: {target}")
            elif anchor and anchor not in _anchors(linked.read_text()):
                broken.append(f"{path.relative_to(REPO)}: {target}#{anchor}")
    assert checked > 20 and not broken, broken


def test_each_docs_page_states_its_job_under_its_title():
    for page in DOCS:
        lines = [line for line in page.read_text().splitlines() if line.strip()]
        assert lines[0].startswith("# "), page.name
        assert not lines[1].startswith("#"), (
            f"{page.name}: a sentence saying the page's job comes first"
        )
