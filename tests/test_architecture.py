"""The layering the architecture (docs/architecture.md) promises, checked from the imports."""

from __future__ import annotations

import pytest

from silr.cli import COMMANDS
from silr.resume import imported_modules

STAGE_MODULES = {module for module, _ in COMMANDS.values()}


@pytest.mark.parametrize("stage", sorted(STAGE_MODULES))
def test_no_stage_module_imports_another_stage_module(stage):
    others = sorted((set(imported_modules(stage)) & STAGE_MODULES) - {stage})
    assert not others, f"{stage} imports the stage module(s) {others}; share code through a library module"


@pytest.mark.parametrize("library", ["silr.anatomy", "silr.coords", "silr.errors", "silr.io", "silr.params",
                                     "silr.deepfluoro", "silr.preprocess", "silr.results", "silr.splits", "silr.types"])
def test_fact_and_format_modules_stay_light(library):
    # The facts and file formats are read by every stage and by users' scripts: they must not
    # pull in the network, the losses or the figures.
    heavy = {"silr.model", "silr.losses", "silr.plots", "silr.train"} & set(imported_modules(library))
    assert not heavy, f"{library} imports {sorted(heavy)}"
