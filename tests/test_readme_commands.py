"""The README's `silr predict` commands, run as written by a shell (globs and all).

The first code block of the README's "Applying a trained model to your own frames" is read
from README.md and every command in it is run by bash in a folder laid out like a project
after `make repro`: models/proposed/fold1..6/best.pt (a tiny trained checkpoint), a
one-frame phantom at data/synthetic/phantom_full_res.h5, my_frame.png and my_frames/.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def readme_predict_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Applying a trained model to your own frames", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    joined = block.replace("\\\n", " ")
    return [
        line.split("#", 1)[0].strip()
        for line in joined.splitlines()
        if line.strip().startswith("silr ")
    ]


def test_the_readme_shows_the_ensemble_with_a_glob():
    commands = readme_predict_commands()
    assert any("fold*/best.pt" in command and "--info" not in command for command in commands)
    assert len(commands) >= 4


@pytest.fixture
def project_after_repro(tmp_path, trained_tiny_run):
    root = tmp_path / "project"
    for fold in range(1, 7):
        target = root / "models" / "proposed" / f"fold{fold}" / "best.pt"
        target.parent.mkdir(parents=True)
        shutil.copyfile(trained_tiny_run["models"] / "proposed" / "fold1" / "best.pt", target)
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "OMP_NUM_THREADS": "1",
    }
    subprocess.run(
        [
            str(BIN / "silr"),
            "synth",
            "--out",
            "data/synthetic/phantom_full_res.h5",
            "--specimens",
            "1",
            "--frames",
            "1",
            "--seed",
            "0",
        ],
        cwd=root,
        env=env,
        check=True,
        capture_output=True,
    )
    rng = np.random.default_rng(0)
    frame = (rng.random((180, 180)) * 255).astype(np.uint8)
    Image.fromarray(frame).save(root / "my_frame.png")
    (root / "my_frames").mkdir()
    Image.fromarray(frame).save(root / "my_frames" / "frame_a.png")
    Image.fromarray(frame[::-1]).save(root / "my_frames" / "frame_b.png")
    return root, env


def test_every_readme_predict_command_runs_as_written(project_after_repro):
    root, env = project_after_repro
    for command in readme_predict_commands():
        done = subprocess.run(
            ["bash", "-c", command], cwd=root, env=env, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        assert "Traceback" not in done.stderr, command
        if "--info" in command:
            # one line per fold's model, then what the six share
            lines = done.stdout.splitlines()
            assert [line.split(":")[0] for line in lines[:6]] == [
                f"models/proposed/fold{k}/best.pt" for k in range(1, 7)
            ], command
            assert lines[6] == "shared by the 6 models:" and len(lines) < 30, command
    # The glob gave a six-model ensemble, and the outputs are where the README says.
    record = (root / "predictions" / "my_frame_landmarks.json").read_text()
    assert record.count("models/proposed/fold") >= 6
    for stem in ("my_frame", "frame_a", "frame_b", "phantom_full_res_s01_f000"):
        for suffix in ("_landmarks.csv", "_landmarks.json", "_seg.png", "_overlay.png"):
            assert (root / "predictions" / f"{stem}{suffix}").is_file(), stem + suffix
