"""`silr predict` under hostile conditions: memory-bounded batches, inputs that fail while
their outputs are written, non-finite network output, and no output folder when nothing ran.

The stand-in models of tests/test_predict.py serve here too (no training, exact answers).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
import test_predict  # noqa: E402
from silr.core.limits import MEMORY_BUDGET_ENV  # noqa: E402
from silr.evaluation import overlay  # noqa: E402
from silr.inference import writers  # noqa: E402
from silr.stages import predict  # noqa: E402
from test_predict import MarkerModel, dot_image, run_predict  # noqa: E402

fake_models = test_predict.fake_models  # the stand-in models fixture, shared
OUTPUT_SUFFIXES = ("_landmarks.csv", "_landmarks.json", "_seg.png", "_overlay.png")


def outputs_of(out: Path, stem: str) -> list[Path]:
    return [out / f"{stem}{suffix}" for suffix in OUTPUT_SUFFIXES]


def save_png(path: Path, size: int = 180) -> Path:
    Image.fromarray(dot_image(size, size, slice(3, 4), slice(4, 5))).save(path)
    return path


def test_an_input_whose_overlay_runs_out_of_memory_fails_alone_and_leaves_nothing(
    fake_models, tmp_path, monkeypatch, capsys
):
    ckpt = fake_models("marker.pt", MarkerModel())
    good, doomed = save_png(tmp_path / "good.png"), save_png(tmp_path / "doomed.png")
    out = tmp_path / "out"
    out.mkdir()
    for stale in outputs_of(out, "doomed"):  # an earlier run's outputs of the failing input
        stale.write_text("stale")
    real_overlay = overlay.prediction_overlay

    def stand_in(*args, title, **kwargs):
        if title == "doomed":
            raise MemoryError
        return real_overlay(*args, title=title, **kwargs)

    monkeypatch.setattr(overlay, "prediction_overlay", stand_in)
    code = run_predict("--model", ckpt, "--out", out, good, doomed)
    err = capsys.readouterr().err
    assert code == 1
    assert "doomed.png: out of memory while writing its outputs" in err and "Traceback" not in err
    assert all(p.is_file() for p in outputs_of(out, "good"))
    assert not any(p.exists() for p in outputs_of(out, "doomed")), "a failed input kept outputs"
    assert not [p for p in out.iterdir() if p.name.startswith(".silr-tmp-")]


def test_a_full_disk_mid_input_publishes_none_of_its_files(
    fake_models, tmp_path, monkeypatch, capsys
):
    ckpt = fake_models("marker.pt", MarkerModel())
    frame = save_png(tmp_path / "frame.png")
    out = tmp_path / "out"

    def full_disk(path, labels):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writers, "write_label_png", full_disk)
    code = run_predict("--model", ckpt, "--out", out, frame)
    err = capsys.readouterr().err
    assert code == 1 and "No space left on device" in err and "Traceback" not in err
    assert not any(
        p.exists() for p in outputs_of(out, "frame")
    )  # csv and json were staged, not published


def test_non_finite_network_output_fails_the_input(fake_models, tmp_path, monkeypatch, capsys):
    ckpt = fake_models("marker.pt", MarkerModel())
    frame = save_png(tmp_path / "frame.png")
    real = predict.predict_inputs

    def broken(ensemble, prepared):
        import dataclasses

        return [
            dataclasses.replace(p, xy_frame=np.full_like(p.xy_frame, np.nan))
            for p in real(ensemble, prepared)
        ]

    monkeypatch.setattr(predict, "predict_inputs", broken)
    out = tmp_path / "out"
    code = run_predict("--model", ckpt, "--out", out, frame)
    err = capsys.readouterr().err
    assert code == 1 and "the models' output is not finite" in err
    assert not out.exists()


def test_no_output_folder_when_every_input_fails(fake_models, tmp_path, capsys):
    ckpt = fake_models("marker.pt", MarkerModel())
    (tmp_path / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    assert run_predict("--model", ckpt, "--out", out, tmp_path / "broken.png") == 1
    assert "1 input(s) failed" in capsys.readouterr().err
    assert not out.exists()


def test_batches_hold_at_most_a_share_of_the_memory_budget(fake_models, tmp_path, monkeypatch):
    """With a 64 MB budget a batch holds 16 MB of decoded pixels: one 2048 x 2048 float32 frame."""
    ckpt = fake_models("marker.pt", MarkerModel())
    frames = [save_png(tmp_path / f"f{i}.png", 2048) for i in range(3)] + [
        save_png(tmp_path / "small.png")
    ]
    sizes: list[int] = []
    real = predict.predict_inputs

    def counting(ensemble, prepared):
        sizes.append(len(prepared))
        return real(ensemble, prepared)

    monkeypatch.setattr(predict, "predict_inputs", counting)
    monkeypatch.setenv(MEMORY_BUDGET_ENV, "64")
    assert (
        run_predict("--model", ckpt, "--out", tmp_path / "out", "--batch-size", "16", *frames) == 0
    )
    assert sizes == [1, 1, 1, 1]
    monkeypatch.setenv(MEMORY_BUDGET_ENV, "4096")
    sizes.clear()
    assert (
        run_predict("--model", ckpt, "--out", tmp_path / "out2", "--batch-size", "16", *frames) == 0
    )
    assert sizes == [4]


def test_the_overlay_of_a_huge_frame_is_drawn_on_a_reduced_grid():
    image = np.arange(9000 * 30, dtype=np.float32).reshape(30, 9000)
    labels = np.zeros((30, 9000), np.uint8)
    labels[:, 4500:] = 3
    shown, shown_labels, k = overlay.display_grid(image, labels, 1400)
    assert k == 7 and shown.shape == (4, 1285) and shown_labels.shape == (4, 1285)
    assert shown[0, 0] == pytest.approx(image[:7, :7].mean())
    assert shown_labels[0, 0] == 0 and shown_labels[0, -1] == 3


# ------------------------------------------------------------------ a real process, huge frames

HUGE_RUN = textwrap.dedent("""
    import resource, sys
    def peak_mb():
        # VmHWM is this process's own peak; ru_maxrss would include the forking parent's
        # (pytest's) RSS, which Linux carries across fork and exec.
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    sys.path.insert(0, {tests!r})
    import torch
    from test_predict import MarkerModel, card
    from silr import cli
    from silr.model import checkpoint
    def load_model(path, device="cpu"):
        return MarkerModel().eval(), card()
    checkpoint.load_model = load_model
    code = cli.main(["predict", "--model", {ckpt!r}, "--out", {out!r}, {folder!r}])
    print(f"exit {{code}} peak_rss_mb {{peak_mb():.0f}}")
""")


@pytest.mark.slow
def test_sixteen_frames_of_8000_px_stay_within_a_few_gigabytes(tmp_path):
    """The issue's case: a folder of 16 PNGs of 8000 x 8000 px (about 400 KB each)."""
    folder = tmp_path / "frames"
    folder.mkdir()
    image = np.full((8000, 8000), 10, np.uint8)
    image[4000:4004, 3000:3004] = 200
    for i in range(16):
        Image.fromarray(image).save(folder / f"big{i:02d}.png")
    ckpt = tmp_path / "stand-in.pt"
    ckpt.write_bytes(b"stand-in")
    script = HUGE_RUN.format(
        tests=str(Path(__file__).parent),
        ckpt=str(ckpt),
        out=str(tmp_path / "out"),
        folder=str(folder),
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=1800,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    line = result.stdout.strip().splitlines()[-1]
    peak_mb = float(line.split()[-1])
    print(line)
    assert line.startswith("exit 0")
    assert peak_mb < 4096, line
    assert len(list((tmp_path / "out").glob("*_overlay.png"))) == 16
