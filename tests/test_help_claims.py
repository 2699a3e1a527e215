"""What `silr train --help` and the docs say about resume agree, and say what the store does.

The behaviour each claim names is pinned in tests/test_resume.py: states keyed by run hash
(test_states_live_in_the_store_keyed_by_run_hash), a state of other params, data or code not
used and named (test_last_checkpoint_of_other_params_data_or_code_is_ignored), finished states
of other runs pruned and unfinished ones kept
(test_unfinished_states_of_other_runs_survive_pruning).
"""

from __future__ import annotations

from pathlib import Path

from silr import cli

REPO = Path(__file__).resolve().parents[1]


def _help(command: str) -> str:
    return " ".join(
        cli.build_parser(command)
        ._subparsers._group_actions[0]
        .choices[command]
        .format_help()
        .split()
    )


def test_train_help_and_reliability_doc_describe_the_resume_store_as_it_is():
    help_text = _help("train")
    doc = " ".join((REPO / "docs" / "reliability.md").read_text().split())
    # states are kept per run hash, beside each other; none is overwritten by another run
    assert "<run hash>.pt" in help_text and "<run hash>.pt" in doc
    assert "never overwritten" in help_text and "overwritten" not in help_text.replace(
        "never overwritten", ""
    )
    assert "naming what differs" in help_text and "naming what differs" in doc
    assert "finished states of" in help_text and "finished states of" in doc
