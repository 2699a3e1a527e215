"""Hostile params.yaml and folds.json: bounded time and memory, one line, every number bounded.

Each case runs `silr train` (which reads params, folds and data first) on a tiny project with
one thing broken, and checks the failure contract of tests/test_bad_input_catalogue.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from silr import cli  # noqa: E402
from test_bad_input_catalogue import check_failure, params_case, train_case  # noqa: E402
from test_bad_input_catalogue import world as world  # noqa: E402,F401 - the fixture

SILR = Path(sys.executable).parent / "silr"

# 344 bytes that expand to 9**9 (387 million) items with aliases.
BILLION_LAUGHS = "\n".join(
    ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    + ["train:", "  lr: *a8", ""]
)


def run_case(case, capsys) -> str:
    rc = cli.main(case.argv)
    captured = capsys.readouterr()
    return check_failure(case, rc, captured.out, captured.err)


def raw_params_case(world, text: bytes | str, *expected: str):
    case = train_case(world, str(world.project.params), *expected)
    data = text.encode() if isinstance(text, str) else text
    world.project.params.write_bytes(data)
    return case


def test_a_yaml_alias_bomb_fails_at_once_in_bounded_memory(world):
    case = raw_params_case(world, BILLION_LAUGHS, "aliases")
    start = time.perf_counter()
    done = subprocess.run(
        [str(SILR), *case.argv],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert time.perf_counter() - start < 30  # was 86 s and 8 GB
    check_failure(case, done.returncode, done.stdout, done.stderr)
    assert len(done.stderr) < 500


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (b"train:\n  lr: 0.1\n\xff\xfe\n", ["not UTF-8", "line 3"]),
        ("train:\n  lr: 0.1\ntrain:\n  epochs: 2\n", ["duplicate key 'train'", "line 3"]),
        ("train:\n  lr: 0.1\n  lr: 0.2\n", ["duplicate key 'lr'", "line 3"]),
        ("trian:\n  lr: 0.1\n", ["unknown section(s)", "trian"]),
        ("train:\n  lr: " + "[" * 100_000 + "]" * 100_000 + "\n", ["params"]),
    ],
)
def test_bad_params_text_fails_in_one_line(text, words, world, capsys):
    run_case(raw_params_case(world, text, *words), capsys)


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"train": {"seed": 10**23}}, ["train.seed", "<= 4294967295"]),
        ({"train": {"epochs": 10**44}}, ["train.epochs", "<= 100000"]),
        ({"train": {"lr": 1.0e300}}, ["train.lr", "<= 10.0"]),
        ({"heatmap": {"sigma": 1.0e-300}}, ["heatmap.sigma", ">= 0.1"]),
        ({"model": {"decoder_channels": [100_000_000]}}, ["model.decoder_channels[0]", "<= 4096"]),
        ({"synth": {"frames": [100_000_000, 100_000_000]}}, ["synth.frames[0]", "<= 10000"]),
        ({"train": {"batch_size": 10**9}}, ["train.batch_size", "<= 4096"]),
        ({"data": {"i0": 1.0e300}}, ["data.i0", "<= 1000000000.0"]),
    ],
)
def test_absurd_numbers_are_refused(changes, words, world, capsys):
    run_case(params_case(world, changes, *words), capsys)


def test_a_long_value_is_quoted_short(world, capsys):
    line = run_case(
        params_case(world, {"train": {"device": "x" * 100_000}}, "train.device"), capsys
    )
    assert len(line) < 400


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[" * 200_000 + "]" * 200_000, ["nested too deeply"]),
        ('{"²": {}}', []),
    ],
)
def test_a_hostile_folds_file_fails_in_one_line(text, words, world, capsys):
    case = train_case(world, str(world.project.folds), *words)
    world.project.folds.write_text(text)
    run_case(case, capsys)
