"""Compare DVC experiments in a table that fits the terminal: the changed params, each loss's
mean error and the folds behind it.

`dvc exp show` names a metric by its file and key (`metrics/summary/proposed_plus.json:mean_px`,
42 characters), so four losses and the changed params of two experiments run past 190
columns. This reads the same data (`dvc exp show --json`) and prints one row per commit,
workspace and experiment: its name, each trained loss's mean error in px over the folds it
covers (`3.57/6`: 3.57 px over 6 folds; the baselines are left out, they train nothing), and
the params that differ between the rows, as `key=value`, wrapped to the width.

  silr exps                 # every experiment of the current commit
  silr exps --width 100 --all-commits
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from silr.core.dvc_workspace import dvc_executable
from silr.core.errors import ConfigError, SilrError

__all__ = ["Row", "add_arguments", "changed_params", "format_table", "main", "rows_of"]

SUMMARY_PREFIX = "metrics/summary/"
# The losses come first in this order when present; others follow alphabetically.
LOSS_ORDER = ("proposed", "proposed_plus", "mse", "ncc")


@dataclass
class Row:
    name: str
    depth: int  # 0: workspace or a commit, 1: an experiment of that commit
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)  # loss -> summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--width", type=int, default=None,
                        help="table width in characters (default: the terminal's, at most 120)")
    parser.add_argument("--all-commits", action="store_true",
                        help="every commit's experiments, not only the current commit's")
    parser.add_argument("--repo", type=Path, default=Path("."), help="the DVC repository")


def main(args: argparse.Namespace) -> int:
    width = args.width or min(120, shutil.get_terminal_size((120, 24)).columns)
    if width < 60:
        raise ConfigError(f"--width must be at least 60, got {width}")
    command = [dvc_executable(), "exp", "show", "--json"]
    command += ["--all-commits"] if args.all_commits else []
    try:
        done = subprocess.run(command, cwd=args.repo, capture_output=True, text=True,
                              env=dict(os.environ))
    except OSError as exc:
        raise SilrError(f"cannot run dvc ({exc.strerror}); is it installed in this environment?"
                        ) from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise SilrError(f"`dvc exp show --json` failed in {args.repo}: {last}")
    try:
        shown = json.loads(done.stdout)
    except json.JSONDecodeError:
        raise SilrError("`dvc exp show --json` printed something that is not JSON") from None
    print(format_table(rows_of(shown), width))
    return 0


def rows_of(shown: Sequence[Mapping[str, Any]]) -> list[Row]:
    """The rows of `dvc exp show --json`: each commit (or the workspace), then its experiments."""
    rows = []
    for entry in shown:
        name = entry.get("name") or _short(str(entry.get("rev", "?")))
        rows.append(_row(name, 0, entry.get("data") or {}))
        for experiment in entry.get("experiments") or []:
            for rev in experiment.get("revs") or []:
                label = rev.get("name") or _short(str(rev.get("rev", "?")))
                rows.append(_row(label, 1, rev.get("data") or {}))
    return rows


def _short(rev: str) -> str:
    """A commit's hash shortened as git does; other revs (`workspace`) as they are."""
    return rev[:7] if len(rev) == 40 else rev


def _row(name: str, depth: int, data: Mapping[str, Any]) -> Row:
    params = _flatten(((data.get("params") or {}).get("params.yaml") or {}).get("data") or {})
    metrics = {}
    for path, content in (data.get("metrics") or {}).items():
        loss = Path(path).stem
        if path.startswith(SUMMARY_PREFIX) and not loss.startswith("baseline"):
            metrics[loss] = (content or {}).get("data") or {}
    return Row(name=name, depth=depth, params=params, metrics=metrics)


def _flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def changed_params(rows: Sequence[Row]) -> list[str]:
    """The params whose value is not the same in every row (a missing one counts as a value)."""
    keys = sorted({key for row in rows for key in row.params})
    missing = object()
    return [key for key in keys
            if len({json.dumps(row.params.get(key, missing), default=str) for row in rows}) > 1]


def format_table(rows: Sequence[Row], width: int = 120) -> str:
    """The table: experiment, one column per trained loss (mean px / folds), changed params."""
    if not rows:
        return "no experiments (run `dvc exp run` first)"
    present = {loss for row in rows for loss in row.metrics}
    losses = [loss for loss in LOSS_ORDER if loss in present] + sorted(present - set(LOSS_ORDER))
    changed = changed_params(rows)
    names = [("  " * row.depth + ("└ " if row.depth else "") + row.name) for row in rows]
    name_width = max(10, *(len(n) for n in names))
    cells = [[_metric_cell(row.metrics.get(loss)) for loss in losses] for row in rows]
    widths = [max(len(loss), *(len(c[i]) for c in cells)) for i, loss in enumerate(losses)]
    fixed = name_width + sum(w + 2 for w in widths) + 2
    params_width = max(20, width - fixed)
    header = ("experiment".ljust(name_width) + "".join(f"  {loss:>{w}}" for loss, w in
                                                       zip(losses, widths)) + "  changed params")
    lines = [header, "-" * min(width, max(len(header), fixed + 14))]
    for name, row, row_cells in zip(names, rows, cells):
        text = "; ".join(f"{key}={_value(row.params.get(key))}" for key in changed) or "-"
        wrapped = textwrap.wrap(text, params_width, break_on_hyphens=False) or ["-"]
        start = name.ljust(name_width) + "".join(f"  {c:>{w}}" for c, w in zip(row_cells, widths))
        lines.append(f"{start}  {wrapped[0]}")
        lines.extend(" " * (len(start) + 2) + more for more in wrapped[1:])
    lines.append("")
    lines.extend(textwrap.wrap("px/folds: mean error in px of the 180x180 frame over the folds "
                               "the run covers (metrics/summary/<loss>.json); - where a row has "
                               "no such loss", width))
    return "\n".join(lines)


def _metric_cell(summary: Mapping[str, Any] | None) -> str:
    if not summary or not isinstance(summary.get("mean_px"), (int, float)):
        return "-"
    folds = summary.get("n_folds")
    return f"{summary['mean_px']:.2f}" + (f"/{folds}" if isinstance(folds, int) else "")


def _value(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ",".join(_value(v) for v in value) + "]"
    if value is None:
        return "null"
    return str(value)
