"""Hostile inputs the first catalogue left untested (issue 23): JPEG 2000 DICOM, pickles as
`model.init_checkpoint`, and a `silr predict` killed with SIGKILL in the middle of a batch."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from silr.core.errors import CheckpointError, DataError
from silr.data.imageio import read_dicom
from silr.model.network import build_model


def _pydicom_file(name: str) -> Path:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom's test file {name} is not installed")
    return Path(path)


def test_a_jpeg2000_dicom_reads_as_its_uncompressed_twin():
    """MR_small in JPEG 2000 lossless decodes to the same pixels as MR_small uncompressed (the
    Modality warning, MR, is the other test's)."""
    with pytest.warns(Warning, match="Modality is MR"):
        compressed, _ = read_dicom(_pydicom_file("MR_small_jp2klossless.dcm"))
    with pytest.warns(Warning, match="Modality is MR"):
        plain, _ = read_dicom(_pydicom_file("MR_small.dcm"))
    assert compressed.shape == plain.shape and np.array_equal(compressed, plain)


def test_a_jpeg2000_dicom_without_a_decoder_is_one_line(monkeypatch):
    """No JPEG 2000 plugin installed: one DataError line naming the compression and the plugin."""
    from pydicom.dataset import Dataset

    def no_decoder(self):
        raise RuntimeError("Unable to decode the pixel data: no plugin available\n(details...)")

    monkeypatch.setattr(Dataset, "pixel_array", property(no_decoder))
    path = _pydicom_file("MR_small_jp2klossless.dcm")
    with pytest.raises(DataError) as raised:
        read_dicom(path)  # the pixels fail before the Modality is looked at
    message = str(raised.value)
    assert "\n" not in message and "JPEG 2000" in message
    assert "pip install pylibjpeg pylibjpeg-openjpeg" in message


class _Payload:
    """Unpickling this runs `touch MARKER`: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("form", ["torch_zip", "plain_pickle"])
def test_a_pickle_payload_as_init_checkpoint_never_runs(tmp_path, form):
    marker = tmp_path / "pwned"
    path = tmp_path / "init.pt"
    payload = {"state_dict": {"conv1.weight": torch.zeros(1)}, "evil": _Payload(marker)}
    if form == "torch_zip":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(CheckpointError) as raised:
        build_model("hrnet_w18_small", [8, 8], init_checkpoint=path)
    message = str(raised.value)
    assert not marker.exists()
    assert message.startswith(f"model.init_checkpoint: {path}: not a readable torch state dict")
    assert "\n" not in message and len(message) < 400


@pytest.mark.slow
def test_predict_killed_mid_batch_leaves_whole_outputs_or_none(tmp_path):
    """SIGKILL while `silr predict` writes a folder's outputs: every input has its four outputs
    or none, and the next run into the folder removes the killed run's temporaries."""
    from PIL import Image

    from conftest import train_argv, write_tiny_run
    from silr import cli

    run = write_tiny_run(tmp_path / "run")
    assert cli.main(train_argv(run, "proposed")) == 0
    model = run["models"] / "proposed" / "fold1" / "best.pt"
    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(0)
    for index in range(40):
        pixels = (rng.random((360, 360)) * 60000).astype(np.uint16)
        Image.fromarray(pixels).save(frames / f"f{index:02d}.png")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "silr.cli", "predict", "--model", str(model), "--out",
               str(out), str(frames)]
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and child.poll() is None:
        if out.is_dir() and len(list(out.glob("*_landmarks.json"))) >= 3:
            break
        time.sleep(0.05)
    assert child.poll() is None, "predict ended before it could be killed"
    child.send_signal(signal.SIGKILL)
    child.wait()
    done = {p.name[: -len("_landmarks.json")] for p in out.glob("*_landmarks.json")}
    assert 3 <= len(done) < 40
    suffixes = ("_landmarks.json", "_landmarks.csv", "_seg.png", "_overlay.png")
    for stem in {p.name.split("_")[0] for p in out.iterdir() if not p.name.startswith(".")}:
        if stem.startswith("f"):
            present = [(out / f"{stem}{s}").exists() for s in suffixes]
            assert all(present) or not any(present), (stem, present)
    # the next run into the same folder completes and leaves no temporary behind
    assert subprocess.run(command, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL).returncode == 0
    assert len(list(out.glob("*_landmarks.json"))) == 40
    leftovers = [p.name for p in out.iterdir() if ".tmp" in p.name or p.name.startswith(".")]
    assert leftovers == [] or all(name == ".silr" for name in leftovers), leftovers
