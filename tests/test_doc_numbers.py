"""Documents that cannot drift: every number in the README's and docs/' result sections is in
the record.

A result section is the text between `<!-- record:begin -->` and `<!-- record:end -->`. Every
number in it with a decimal point (3.57, 0.79, 21.4) must appear, as written, in the committed
record: `metrics/table2.md`, the values of `metrics/details.json` and `metrics/summary/*.json`
(rounded to 1, 2 or 3 decimals, shares also as percentages), or a `benchmarks/results/*.txt`
measurement file. A number typed by hand that the record does not hold fails, naming the file
and line.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BEGIN, END = "<!-- record:begin -->", "<!-- record:end -->"
NUMBER = re.compile(r"(?<![\w.])[-+]?\d+\.\d+(?![\w.]*\d)")


def record_numbers(repo: Path = REPO) -> set[str]:
    """Every way the record writes its numbers."""
    found: set[str] = set()
    texts = [
        repo / "metrics" / "table2.md",
        *sorted((repo / "benchmarks" / "results").glob("*.txt")),
    ]
    for path in texts:
        found.update(match.lstrip("+-") for match in NUMBER.findall(path.read_text()))

    def walk(value) -> None:
        if isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            for decimals in (1, 2, 3):
                found.add(f"{abs(value):.{decimals}f}")
                if abs(value) <= 1:
                    found.add(f"{100 * abs(value):.{decimals - 1 if decimals > 1 else 0}f}")
            if abs(value) <= 1:
                found.add(f"{100 * abs(value):.1f}")

    for path in [
        repo / "metrics" / "details.json",
        *sorted((repo / "metrics" / "summary").glob("*.json")),
    ]:
        walk(json.loads(path.read_text()))
    return found


def section_numbers(path: Path) -> list[tuple[int, str]]:
    """(line number, number) of every decimal number inside the file's record sections."""
    inside, result = False, []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if BEGIN in line:
            inside = True
            continue
        if END in line:
            inside = False
            continue
        if inside:
            result += [(number, match.lstrip("+-")) for match in NUMBER.findall(line)]
    return result


def stale_numbers(path: Path, known: set[str]) -> list[str]:
    return [
        f"{path.relative_to(REPO)}:{line}: {value}"
        for line, value in section_numbers(path)
        if value not in known
    ]


def test_every_result_number_in_the_docs_is_in_the_record():
    known = record_numbers()
    stale = [entry for path in DOCUMENTS for entry in stale_numbers(path, known)]
    assert not stale, (
        "numbers not in the committed record (metrics/, benchmarks/results/):\n" + "\n".join(stale)
    )
    assert any(section_numbers(path) for path in DOCUMENTS), (
        "no record section found: the check checks nothing"
    )


def test_a_deliberately_stale_number_fails(tmp_path):
    known = record_numbers()
    readme = (REPO / "README.md").read_text()
    numbers = section_numbers(REPO / "README.md")
    assert numbers, "the README has no record section"
    line, value = numbers[0]
    # Change the first number of the first section to one the record does not hold.
    wrong = next(
        f"{float(value) + step:.{len(value.split('.')[1])}f}"
        for step in (0.37, 1.37, 2.37, 5.37)
        if f"{float(value) + step:.{len(value.split('.')[1])}f}" not in known
    )
    lines = readme.splitlines()
    lines[line - 1] = lines[line - 1].replace(value, wrong, 1)
    copy = REPO / "README.md"
    doctored = tmp_path / "README.md"
    doctored.write_text("\n".join(lines))
    stale = [v for _, v in section_numbers(doctored) if v not in known]
    assert wrong in stale
    assert copy.read_text() == readme  # the real README is untouched


@pytest.mark.parametrize(
    "text, numbers",
    [
        ("mean 3.57 px, 0.79 and -0.12", ["3.57", "0.79", "0.12"]),
        ("version 3.67.1 and fold1_seed2 and v1.5", []),
    ],
)
def test_what_counts_as_a_number(text, numbers):
    assert [n.lstrip("+-") for n in NUMBER.findall(text)] == numbers
