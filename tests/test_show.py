"""`silr show`: the results screen that ends every run, read from the committed record."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from silr import cli

REPO = Path(__file__).resolve().parents[1]


def test_show_prints_table2_with_baselines_presence_robustness_and_locations(capsys):
    assert cli.main(["show", "--metrics", str(REPO / "metrics")]) == 0
    out = capsys.readouterr().out
    table = (REPO / "metrics" / "table2.md").read_text()
    mean_row = next(line for line in table.splitlines() if line.startswith("| Mean ± Std"))
    assert mean_row in out  # Table 2's summary row, as the record writes it
    assert "Frame centre (baseline)" in out and "Mean shape (baseline)" in out
    details = json.loads((REPO / "metrics" / "details.json").read_text())
    rule = details["presence"]["proposed_plus"]["rule"]
    assert rule == "shape"  # the rule in force for every model silr train writes
    f1 = details["presence"]["proposed_plus"]["by_rule"][rule]["absent_f1"]
    assert f"proposed_plus {f1:.2f} ({rule})" in out
    assert f"{details['robustness']['proposed']['clean_px']:.2f}" in out
    assert "metrics/table2.md" in out and "models/<loss>/fold<k>/best.pt" in out
    assert len(out.splitlines()) <= 30  # it is the tail of `make repro`: all of it must fit there


def test_show_without_a_report_says_what_to_run(tmp_path, capsys):
    assert cli.main(["show", "--metrics", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("silr: error: ") and "dvc repro report" in err and len(err.splitlines()) == 1
    )


def test_show_on_a_garbled_table_fails_in_one_line(tmp_path, capsys):
    shutil.copy(REPO / "metrics" / "details.json", tmp_path / "details.json")
    (tmp_path / "table2.md").write_text("# Table 2\nno table here\n")
    assert cli.main(["show", "--metrics", str(tmp_path)]) == 2
    assert "holds no Table 2" in capsys.readouterr().err


def test_the_show_stage_runs_last_and_always():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert list(stages)[-1] == "show" and stages["show"]["always_changed"] is True
    assert {"metrics/table2.md", "metrics/details.json"} <= set(stages["show"]["deps"])
