"""`silr show`: the committed results in one screen, printed at the end of every run.

Reads what the report stage wrote (metrics/table2.md and metrics/details.json) and prints
Table 2 with its baselines, the presence and robustness summaries, and where every output
is. It writes nothing, so dvc.yaml runs it as an always-changed last stage: `dvc repro` and
`make repro` end with the results even when every other stage was restored or unchanged.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from silr.core.errors import DataError

__all__ = [
    "OUTPUT_LOCATIONS", "add_arguments", "main", "presence_line", "robustness_lines",
    "table2_lines",
]

# Where each output of the default pipeline lands (paths relative to the project root).
OUTPUT_LOCATIONS: tuple[tuple[str, str], ...] = (
    ("metrics/table2.md", "Table 2, paired differences, seeds, presence, consistency, robustness"),
    ("metrics/details.json", "every number of the report, machine-readable"),
    ("metrics/summary/<loss>.json", "per-loss means (what `dvc metrics show` lists)"),
    ("metrics/per_specimen.csv", "per-specimen errors of every loss"),
    ("plots/*.png", "Figure 1 overlays, error plots, segmentation, robustness"),
    ("models/<loss>/fold<k>/best.pt", "the trained models (for `silr predict`)"),
    ("dvclive/<loss>/fold<k>/", "training curves (`dvc plots show`)"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metrics", type=Path, default=Path("metrics"), metavar="DIR",
                        help="the report's metrics directory (default: metrics)")


def table2_lines(text: str, source: Path) -> list[str]:
    """The first section of table2.md: its title, data line and table (the baselines included)."""
    lines = text.splitlines()
    try:
        end = next(i for i, line in enumerate(lines) if i > 0 and line.startswith("## "))
    except StopIteration:
        end = len(lines)
    head = [line for line in lines[:end] if line.startswith(("# ", "Data:", "|"))]
    if not any(line.startswith("|") for line in head):
        raise DataError(f"{source}: holds no Table 2 (expected a markdown table after its title)")
    return head


def presence_line(presence: Mapping[str, Any]) -> str:
    parts = []
    for loss, entry in presence.items():
        rule = entry.get("rule")
        f1 = entry.get("by_rule", {}).get(rule, {}).get("absent_f1")
        parts.append(f"{loss} {f1:.2f} ({rule})" if isinstance(f1, (int, float)) else f"{loss} –")
    return "Presence, absent-landmark F1 of the rule in force: " + ", ".join(parts)


def robustness_lines(robustness: Mapping[str, Any]) -> list[str]:
    losses = {k: v for k, v in robustness.items() if not k.startswith("_")}
    if not losses:
        return ["Robustness: not evaluated (no metrics/robustness files)"]
    parts = []
    for loss, entry in losses.items():
        worst = entry.get("mean_over_types_px", {})
        top = worst.get(max(worst, key=int)) if worst else None
        top_text = f" -> {top:.2f} px at severity {max(worst, key=int)}" if top is not None else ""
        parts.append(f"{loss} {entry['clean_px']:.2f}{top_text} (x{entry['relative_error']:.2f})")
    best = min(losses, key=lambda name: losses[name]["relative_error"])
    return ["Robustness, mean error over corruption types, clean -> worst severity "
            "(relative error):", "  " + "; ".join(parts), f"  least degraded: {best}"]


def main(args: argparse.Namespace) -> int:
    table_path, details_path = args.metrics / "table2.md", args.metrics / "details.json"
    for path in (table_path, details_path):
        if not path.is_file():
            raise DataError(f"{path}: missing; run `dvc repro report` first")
    try:
        details = json.loads(details_path.read_text(encoding="utf-8"))
        table = table_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise DataError(f"{details_path}: cannot be read ({type(exc).__name__})") from None
    lines = ["", *table2_lines(table, table_path), ""]
    if isinstance(details.get("presence"), Mapping):
        lines.append(presence_line(details["presence"]))
    if isinstance(details.get("robustness"), Mapping):
        lines += robustness_lines(details["robustness"])
    width = max(len(path) for path, _ in OUTPUT_LOCATIONS)
    lines += ["", "Where the outputs are:"]
    lines += [f"  {path:<{width}}  {what}" for path, what in OUTPUT_LOCATIONS]
    print("\n".join(lines))
    return 0
