"""Messages that say what to do: YAML numbers read as text, a loss-term typo in every command
that reads params, and evaluate's advice for a fold or checkpoint that does not exist.

Each CLI case follows the failure contract of tests/test_bad_input_catalogue.py (exit 2, one
`silr: error:` line, no traceback, nothing written)."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from silr import cli  # noqa: E402
from silr.core.choices import LOSS_TERM_NAMES  # noqa: E402
from silr.core.errors import ConfigError  # noqa: E402
from silr.core.params import params_from_dict  # noqa: E402
from silr.evaluation import results  # noqa: E402
from test_bad_input_catalogue import Case, World, check_failure, evaluate_outputs  # noqa: E402
from tiny_project import TinyProject  # noqa: E402


@pytest.fixture
def world(tmp_path) -> World:
    return World(tmp_path)


def run_case(case: Case, capsys) -> str:
    rc = cli.main(case.argv)
    captured = capsys.readouterr()
    return check_failure(case, rc, captured.out, captured.err)


# ------------------------------------------------------------------ numbers YAML reads as text


@pytest.mark.parametrize(
    "line, message",
    [
        (
            "train: {lr: 3e-3}",
            "train.lr must be a finite number, got '3e-3' (YAML reads 3e-3 as text: "
            "write 3.0e-3 or 0.003)",
        ),
        (
            "train: {lr: 1.5e3}",
            "train.lr must be a finite number, got '1.5e3' (YAML reads 1.5e3 as text: "
            "write 1.5e+3 or 1500)",
        ),
        (
            "train: {weight_decay: 1E-2}",
            "train.weight_decay must be a finite number, got '1E-2' (YAML reads 1E-2 as "
            "text: write 1.0e-2 or 0.01)",
        ),
        (
            "train: {epochs: 1e3}",
            "train.epochs must be an integer, got '1e3' (YAML reads 1e3 as text: write 1000)",
        ),
        (
            "train: {lr: '0.003'}",
            "train.lr must be a finite number, got '0.003' (quoted, so YAML reads it as text: "
            "write 0.003 without quotes)",
        ),
        (
            "losses: {proposed: {dice_ce: 1, kl: 1e-1}}",
            "losses.proposed.kl must be a finite number, got '1e-1' "
            "(YAML reads 1e-1 as text: write 1.0e-1 or 0.1)",
        ),
        (
            "augment: {zoom: [1, 13e-1]}",
            "augment.zoom[1] must be a finite number, got '13e-1' (YAML reads 13e-1 as "
            "text: write 13.0e-1 or 1.3)",
        ),
        # No hint where none applies: the messages stay as they were.
        ("train: {lr: fast}", "train.lr must be a finite number, got 'fast'"),
        ("train: {epochs: '2.5'}", "train.epochs must be an integer, got '2.5'"),
        ("train: {lr: .nan}", "train.lr must be a finite number, got nan"),
    ],
)
def test_a_number_yaml_reads_as_text_says_how_to_write_it(line, message):
    with pytest.raises(ConfigError) as raised:
        params_from_dict(yaml.safe_load(line))
    assert str(raised.value) == message


@pytest.mark.parametrize("text", ["3e-3", "1.5e3", "1e3", "1E-2", "13e-1", "-2e-4"])
def test_the_suggested_spellings_are_numbers_to_yaml(text):
    # The hint must be right: every spelling it suggests is read by PyYAML as the number meant.
    with pytest.raises(ConfigError) as raised:
        params_from_dict({"train": {"lr": text}})
    suggestions = str(raised.value).split("write ", 1)[1].rstrip(")").split(" or ")
    assert yaml.safe_load(f"x: {text}")["x"] == text  # the premise: YAML 1.1 gives text
    for suggestion in suggestions:
        value = yaml.safe_load(f"x: {suggestion}")["x"]
        assert isinstance(value, (int, float)) and not isinstance(value, bool), suggestion
        assert value == pytest.approx(float(text)), suggestion


def test_the_number_hint_is_not_an_acceptance():
    # Values must come from YAML typed: a string that reads as a number is still an error.
    with pytest.raises(ConfigError):
        params_from_dict({"train": {"lr": "0.003"}})
    with pytest.raises(ConfigError):
        params_from_dict({"train": {"epochs": "25"}})


# ------------------------------------------------------------------ a loss-term typo, everywhere

TYPO = {"losses": {"proposed": {"dice_ce": 1.0, "kll": 0.1}}}
TYPO_WORDS = ["losses.proposed: unknown term 'kll'", "known: " + ", ".join(sorted(LOSS_TERM_NAMES))]


def _synth(p: TinyProject, tmp: Path) -> Case:
    out = tmp / "synth" / "phantom.h5"
    return Case(
        [
            "synth",
            "--out",
            str(out),
            "--params",
            str(p.params),
            "--specimens",
            "2",
            "--frames",
            "1",
        ],
        [out],
        [],
    )


def _folds(p: TinyProject, tmp: Path) -> Case:
    out = tmp / "folds" / "folds.json"
    return Case(
        ["folds", "--data", str(p.processed), "--out", str(out), "--params", str(p.params)],
        [out],
        [],
    )


def _train(p: TinyProject, tmp: Path) -> Case:
    run = p.models / "proposed" / "fold1"
    return Case(p.argv("train"), [run / "best.pt", p.resume / "proposed", p.live / "proposed"], [])


def _evaluate(p: TinyProject, tmp: Path) -> Case:
    return Case(p.argv("evaluate"), evaluate_outputs(p), [])


def _robustness(p: TinyProject, tmp: Path) -> Case:
    return Case(p.argv("robustness"), [p.metrics / "robustness" / "proposed" / "fold1.json"], [])


def _report(p: TinyProject, tmp: Path) -> Case:
    return Case(p.argv("report"), [p.metrics / "summary.json", p.metrics / "table2.md"], [])


def _parallel(p: TinyProject, tmp: Path) -> Case:
    return Case(["parallel", "--params", str(p.params)], [p.root / ".silr"], [])


PARAMS_COMMANDS = {
    "synth": _synth,
    "folds": _folds,
    "train": _train,
    "evaluate": _evaluate,
    "report": _report,
    "parallel": _parallel,
    "robustness": _robustness,
}


def test_every_command_that_reads_params_is_checked_here():
    # evaluate and robustness read params through the shared heldout.fold_params.
    from silr.evaluation import heldout

    assert "load_params(" in inspect.getsource(heldout.fold_params)
    readers = {
        name
        for name, (module, _) in cli.COMMANDS.items()
        if any(call in inspect.getsource(__import__(module, fromlist=["_"]))
               for call in ("load_params(", "fold_params("))
    }
    assert readers == set(PARAMS_COMMANDS)


@pytest.mark.parametrize("command", sorted(PARAMS_COMMANDS))
def test_a_loss_term_typo_fails_in_every_command(command, world, capsys):
    p = world.project
    p.write_params(TYPO)
    case = PARAMS_COMMANDS[command](p, world.tmp)
    case.expected = [str(p.params), *TYPO_WORDS]
    run_case(case, capsys)


def test_params_term_names_are_the_loss_registry():
    from silr.model.losses import LOSS_TERMS

    assert tuple(LOSS_TERMS) == LOSS_TERM_NAMES


# ------------------------------------------------------------------ evaluate: folds and checkpoints


def test_evaluate_a_fold_the_folds_file_lacks_lists_the_folds(world, capsys):
    p = world.project  # specimens 1, 2, 3; the tiny study runs fold 1 only
    case = Case(
        p.argv("evaluate", fold=7),
        evaluate_outputs(p, fold=7),
        [str(p.folds), "no fold 7 (folds: 1, 2, 3; study.folds: 1)"],
    )
    line = run_case(case, capsys)
    assert "dvc repro" not in line and "train@" not in line


def test_evaluate_without_model_in_the_study_names_its_stage(world, capsys):
    p = world.project
    ckpt = results.checkpoint_path(p.models, "proposed", 1)
    line = run_case(
        Case(
            p.argv("evaluate"),
            evaluate_outputs(p),
            [str(ckpt), "no trained model", "train it first with `dvc repro train@proposed-1`"],
        ),
        capsys,
    )
    assert "study" not in line


def test_evaluate_without_model_of_a_fold_outside_the_study_says_how_to_add_it(world, capsys):
    p = world.project
    ckpt = results.checkpoint_path(p.models, "proposed", 2)
    line = run_case(
        Case(
            p.argv("evaluate", fold=2),
            evaluate_outputs(p, fold=2),
            [
                str(ckpt),
                "no trained model",
                "dvc.yaml has no stage train@proposed-2",
                "not in study.folds (1)",
                "`silr train --loss proposed --fold 2`",
            ],
        ),
        capsys,
    )
    assert "dvc repro" not in line


def test_evaluate_without_model_of_a_loss_outside_the_study_says_how_to_add_it(world, capsys):
    p = world.project
    ckpt = results.checkpoint_path(p.models, "dice_ce_kl", 3)
    line = run_case(
        Case(
            p.argv("evaluate", loss="dice_ce_kl", fold=3),
            evaluate_outputs(p, "dice_ce_kl", 3),
            [
                str(ckpt),
                "dvc.yaml has no stage train@dice_ce_kl-3",
                "not in study.losses (proposed) and study.folds (1)",
                "`silr train --loss dice_ce_kl --fold 3`",
            ],
        ),
        capsys,
    )
    assert "dvc repro" not in line
