"""The repository stands alone: its method is docs/method.md, and no tracked file points outside
the clone (to the sibling `shared` folder the project was started from)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OUTSIDE = (
    "../" + "shared",
    "shared" + "/docs/",
)  # spelt in pieces so that this file does not match itself
METHOD = REPO / "docs" / "method.md"


def tracked_text_files() -> list[Path]:
    try:
        listing = subprocess.run(
            ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    files = []
    for name in listing.decode().split("\0"):
        path = REPO / name
        if not name or not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" not in data[:8192]:  # text, not a binary (PNG, HDF5, ...)
            files.append(path)
    return files


def test_no_tracked_file_refers_outside_the_repository():
    offenders = [
        str(p.relative_to(REPO))
        for p in tracked_text_files()
        if any(text in p.read_text(errors="replace") for text in OUTSIDE)
    ]
    assert not offenders, (
        f"these files refer to {OUTSIDE[0]}, which a clone does not have: {offenders}"
    )


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    anchors = set()
    for line in markdown.splitlines():
        match = re.match(r"#{1,6}\s+(.*)", line)
        if match:
            anchors.add(re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-"))
    return anchors


def test_method_doc_covers_the_method():
    anchors = _anchors(METHOD.read_text())
    for section in (
        "data",
        "preprocessing-the-published-construction",
        "folds",
        "network-input",
        "network",
        "heatmap-encoding",
        "decoding",
        "losses",
        "training",
        "evaluation",
        "baselines",
        "deviations-from-the-paper",
        "where-the-measurements-are",
    ):
        assert section in anchors, section
    text = METHOD.read_text()
    for term in ("dice_ce", "kl", "visibility", "visibility_soft", "mse", "ncc"):
        assert f"`{term}`" in text, term


def test_links_to_method_sections_resolve():
    # Every link to a section of docs/method.md in a tracked file names one of its headings, and
    # every link from docs/method.md to a README section one of the README's.
    method_anchors = _anchors(METHOD.read_text())
    readme_anchors = _anchors((REPO / "README.md").read_text())
    for path in tracked_text_files() + [METHOD]:
        text = path.read_text(errors="replace")
        for anchor in re.findall(r"method\.md#([\w-]+)", text):
            assert anchor in method_anchors, f"{path.name}: method.md#{anchor}"
        for anchor in re.findall(r"\]\(#([\w-]+)\)", text if path == METHOD else ""):
            assert anchor in method_anchors, f"method.md: #{anchor}"
        for anchor in re.findall(r"README\.md#([\w-]+)", text if path == METHOD else ""):
            assert anchor in readme_anchors, f"method.md: README.md#{anchor}"
