"""The layering the architecture (docs/architecture.md) promises, checked from the imports.

The package's folders are layers. A module imports only from its own folder and from the
folders in the tiers below it; `silr.cli` (the entry point) and `silr/__init__.py` sit above all.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import silr
from silr.cli import COMMANDS
from silr.training.resume import _imports_of, imported_modules

# Bottom to top. Folders in one tier do not import each other.
TIERS: list[set[str]] = [
    {"core"},
    {"data", "phantom"},
    {"model"},
    {"training", "inference"},
    {"evaluation"},
    {"stages"},
]
PACKAGE = Path(silr.__file__).resolve().parent
TIER_OF = {folder: rank for rank, tier in enumerate(TIERS) for folder in tier}


def _modules() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        names.append(".".join(("silr",) + (parts[:-1] if parts[-1] == "__init__" else parts)))
    return names


def _folder(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in TIER_OF) else None


def _source(module: str) -> str:
    path = PACKAGE.joinpath(*module.split(".")[1:])
    return (path / "__init__.py" if path.is_dir() else path.with_suffix(".py")).read_text()


def upward_imports(module: str, source: str) -> list[str]:
    """The silr modules `source` (the code of `module`) imports from its own tier or above,
    other than its own folder."""
    rank, own = TIER_OF[_folder(module)], _folder(module)
    imported = _imports_of(module, source) - {module}
    return sorted(
        name
        for name in imported
        if _folder(name) and _folder(name) != own and TIER_OF[_folder(name)] >= rank
    )


def test_every_folder_is_a_known_layer():
    folders = {path.parent.name for path in PACKAGE.glob("*/__init__.py")}
    assert folders == set(TIER_OF), (
        f"folders {sorted(folders ^ set(TIER_OF))} are not in TIERS (or gone)"
    )
    loose = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert loose == ["__init__.py", "__main__.py", "cli.py"], (
        f"modules outside a layer folder: {loose}"
    )


@pytest.mark.parametrize("module", [m for m in _modules() if _folder(m)])
def test_a_folder_imports_only_from_its_own_and_lower_tiers(module):
    upward = upward_imports(module, _source(module))
    assert not upward, f"{module} imports {upward}: a folder of its own tier or above"


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("silr.core.anatomy", "from silr.stages import train\n"),
        ("silr.data.splits", "def late():\n    from silr.model.codec import HeatmapCodec\n"),
        ("silr.training.dataset", "import silr.inference.predictor\n"),
    ],
)
def test_the_rule_catches_an_upward_or_sideways_import(module, source):
    assert upward_imports(module, source), f"{source!r} in {module} should break the layering"


@pytest.mark.parametrize("stage", sorted({module for module, _ in COMMANDS.values()}))
def test_no_stage_module_imports_another_stage_module(stage):
    others = sorted(
        name
        for name in imported_modules(stage)
        if _folder(name) == "stages" and name != stage and name != "silr.stages"
    )
    assert not others, (
        f"{stage} imports the stage module(s) {others}; share code through a lower layer"
    )


# core's torch plumbing: the device rule, the network-input padding and the batch types.
TORCH_PLUMBING = {"silr.core.device", "silr.core.network_input", "silr.core.types"}


@pytest.mark.parametrize(
    "module", [m for m in _modules() if _folder(m) in {"core", "data"} and m not in TORCH_PLUMBING]
)
def test_facts_and_formats_stay_light(module):
    # Users' scripts read the facts and the file formats: they must not pull in torch.
    import ast

    path = PACKAGE.joinpath(*module.split(".")[1:]).with_suffix(".py")
    if not path.exists():
        path = path.with_suffix("") / "__init__.py"
    tree = ast.parse(path.read_text())
    top_level = {
        alias.name.split(".")[0]
        for node in tree.body
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    top_level |= {
        node.module.split(".")[0]
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and node.module
    }
    assert not {"torch", "timm", "monai", "matplotlib"} & top_level, f"{module} imports {top_level}"


def test_the_architecture_page_names_every_module_in_its_folder_row():
    # docs/architecture.md's ownership table is the newcomer's map: a module missing from it (or
    # a row naming a module that is gone) is a map that lies.
    rows = [line for line in (PACKAGE.parents[1] / "docs" / "architecture.md").read_text()
            .splitlines() if line.startswith("| `")]
    missing = []
    for path in sorted(PACKAGE.glob("*/*.py")):
        folder, name = path.parent.name, path.name
        if name == "__init__.py" or any(row.startswith(f"| `{folder}/`") for row in rows):
            continue
        in_row = any(row.startswith(f"| `{folder}/") and (f"`{folder}/{name}`" in row
                                                        or f"`{name}`" in row) for row in rows)
        if not in_row:
            missing.append(f"{folder}/{name}")
    assert not missing, f"docs/architecture.md's table does not name {missing}"
    for row in rows:
        first = row.split("|")[1]
        folder = first.strip().strip("`").split("/")[0]
        for name in [n.strip("` ") for n in first.split(",")]:
            target = PACKAGE / folder if name.endswith("/") else \
                PACKAGE / (name if "/" in name else f"{folder}/{name}")
            assert target.exists(), f"docs/architecture.md names {name}, which is not in src/silr"


MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 60


def oversized(path: Path) -> list[str]:
    """Modules over MAX_MODULE_LINES lines and functions over MAX_FUNCTION_LINES (def to end)."""
    import ast

    text = path.read_text()
    found = []
    if len(text.splitlines()) > MAX_MODULE_LINES:
        found.append(f"{path.name}: {len(text.splitlines())} lines")
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                found.append(f"{path.name}:{node.lineno} {node.name}: {length} lines")
    return found


def test_no_module_over_400_lines_and_no_function_over_60():
    found = [item for path in sorted(PACKAGE.rglob("*.py")) for item in oversized(path)]
    assert not found, f"split these (issue 25's limits): {found}"


def test_the_size_rule_catches_a_long_function(tmp_path):
    long_function = tmp_path / "long.py"
    long_function.write_text("def f():\n" + "    x = 1\n" * 61)
    assert oversized(long_function) == ["long.py:1 f: 62 lines"]
