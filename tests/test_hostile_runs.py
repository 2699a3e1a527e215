"""Interrupted runs and hostile checkpoints: a best.pt says whether its run finished, evaluate
refuses an unfinished one and predict warns; NaN weights and absurd cards fail in one line."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from silr import cli  # noqa: E402
from silr.model import checkpoint  # noqa: E402
from test_bad_input_catalogue import Case, check_failure, evaluate_outputs, save_tiny_checkpoint  # noqa: E402
from test_bad_input_catalogue import world as world  # noqa: E402,F401 - the fixture


def rewrite(path: Path, edit) -> None:
    payload = torch.load(path, weights_only=True)
    edit(payload)
    torch.save(payload, path)


def evaluate_fails(world, capsys, *words: str) -> str:
    p = world.project
    case = Case(
        p.argv("evaluate", loss="proposed", fold=1), evaluate_outputs(p), list(words), scan=[p.root]
    )
    rc = cli.main(case.argv)
    captured = capsys.readouterr()
    return check_failure(case, rc, captured.out, captured.err)


def test_an_unfinished_runs_best_pt_is_refused_by_evaluate(world, capsys):
    path = save_tiny_checkpoint(world.project)

    def unfinished(payload):
        payload["card"].update(finished=False, epochs_planned=3, epoch=2)

    rewrite(path, unfinished)
    assert checkpoint.read_checkpoint(path)["card"].unfinished_note() is not None
    evaluate_fails(world, capsys, str(path), "unfinished training run", "epoch 2 of 3")


def test_non_finite_weights_are_refused(world, capsys):
    path = save_tiny_checkpoint(world.project)

    def poison(payload):
        name = next(k for k, v in payload["model_state"].items() if v.is_floating_point())
        payload["model_state"][name] = torch.full_like(payload["model_state"][name], float("nan"))

    rewrite(path, poison)
    evaluate_fails(world, capsys, str(path), "non-finite weights")


def test_an_absurd_card_fails_before_anything_is_built(world, capsys):
    path = save_tiny_checkpoint(world.project)
    rewrite(path, lambda payload: payload["card"]["model"].update(decoder_channels=[100_000_000]))
    evaluate_fails(world, capsys, str(path), "decoder_channels", "1..4096")
    rewrite(
        path,
        lambda payload: payload["card"]["model"].update(decoder_channels=[], num_landmarks=10**9),
    )
    evaluate_fails(world, capsys, str(path), "1000000000 landmarks")


def test_a_completed_training_marks_its_best_pt_finished(world, capsys):
    p = world.project
    p.write_params({"train": {"epochs": 1}})
    assert cli.main(p.argv("train", loss="proposed", fold=1)) == 0
    capsys.readouterr()
    card = checkpoint.read_checkpoint(p.models / "proposed" / "fold1" / "best.pt")["card"]
    assert card.finished is True and card.epochs_planned == 1 and card.unfinished_note() is None
