"""The code deps each dvc.yaml stage must list: exactly the silr files its command imports.

A folder stands for its files when the stage imports every module in it. Run as a script to
print them (`python tests/code_deps.py train`), or with `--write` to update dvc.yaml in place.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import silr
from silr.training import resume

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(silr.__file__).resolve().parent
# dvc.yaml stage -> the module its `cmd` runs
STAGE_MODULES = {
    "synth": "synth",
    "ingest": "ingest",
    "folds": "folds",
    "train": "train",
    "train_seed": "train",
    "evaluate": "evaluate",
    "evaluate_seed": "evaluate",
    "robustness": "robustness",
    "report": "report",
}


def code_deps(stage: str) -> list[str]:
    """The `src/silr/...` deps of `stage`, sorted, the command's own module first."""
    entry = f"silr.stages.{STAGE_MODULES[stage]}"
    files = {path.resolve() for path in resume.imported_modules(entry).values()}
    deps = set()
    for path in files:
        folder = path.parent
        if folder != PACKAGE and set(folder.glob("*.py")) <= files:
            deps.add(f"src/silr/{folder.relative_to(PACKAGE).as_posix()}")
        else:
            deps.add(f"src/silr/{path.relative_to(PACKAGE).as_posix()}")
    own = f"src/silr/stages/{STAGE_MODULES[stage]}.py"
    return [own] + sorted(deps - {own})


def write_dvc_yaml(path: Path = ROOT / "dvc.yaml") -> None:
    """Replace each stage's block of `src/silr/` deps by `code_deps(stage)`."""
    out: list[str] = []
    stage, in_block = None, False
    for line in path.read_text().splitlines(keepends=True):
        match = re.match(r"^  ([a-z_]+):$", line)
        if match:
            stage = match.group(1)
        is_code_dep = line.startswith("      - src/silr/") and stage in STAGE_MODULES
        if is_code_dep and not in_block:
            out.extend(f"      - {dep}\n" for dep in code_deps(stage))
        in_block = is_code_dep
        if not is_code_dep:
            out.append(line)
    path.write_text("".join(out))


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        write_dvc_yaml()
    else:
        for name in sys.argv[1:] or STAGE_MODULES:
            print(name, *code_deps(name), sep="\n  ")
