"""Shared test fixtures: a tiny processed data set in the published 8x layout.

`write_tiny_processed` writes what `ipcai_2020_ds_8x.h5` holds (`land-names/...`,
`<NN>/projs`, `<NN>/segs`, `<NN>/lands` as N x 2 x 14) for a few specimens of a few
180x180 frames each: a bright dot on every landmark, a disk of the landmark's bone label
around it, and a little noise, on a pelvis-like layout that shifts and turns from frame
to frame. Frame 0 of every specimen is shifted so far that one landmark leaves the frame.
A network can learn it in a few epochs, which is what the training tests need.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml

from silr import cli
from silr.core.anatomy import (
    FRAME_SIZE_PX,
    LANDMARK_BONE_INDEX,
    LANDMARK_NAMES,
    VERTEBRAE,
    specimen_group,
)

# A rough AP pelvis in the 180x180 frame, (x, y) per landmark in LANDMARK_NAMES order.
TEMPLATE_XY = np.array(
    [
        [130.0, 108.0],
        [50.0, 108.0],  # FH
        [122.0, 62.0],
        [58.0, 62.0],  # GSN
        [112.0, 140.0],
        [68.0, 140.0],  # IOF
        [104.0, 122.0],
        [76.0, 122.0],  # MOF
        [96.0, 106.0],
        [84.0, 106.0],  # SPS
        [97.0, 152.0],
        [83.0, 152.0],  # IPS
        [150.0, 38.0],
        [30.0, 38.0],  # ASIS
    ]
)


@pytest.fixture
def one_thread():
    """Pin torch to one thread for the test.

    Two OpenMP threads on a shared 2-core machine can run 10x slower than one; results
    are compared within one thread count, never across.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_frames(
    count: int, rng: np.random.Generator, size: int = FRAME_SIZE_PX, shift_out_first: bool = True
):
    """(images float32 (N,H,W), labels uint8 (N,H,W), landmarks (N,14,2) frame (x, y))."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    images = np.zeros((count, size, size), np.float32)
    labels = np.zeros((count, size, size), np.uint8)
    landmarks = np.zeros((count, len(LANDMARK_NAMES), 2))
    centre = (size - 1) / 2
    for n in range(count):
        angle = rng.uniform(-0.12, 0.12)
        scale = rng.uniform(0.92, 1.08)
        shift = rng.uniform(-10, 10, size=2)
        if shift_out_first and n == 0:
            shift = np.array([38.0, 0.0])  # pushes ASIS-l (x = 150) out of the frame
        rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        xy = (TEMPLATE_XY - centre) @ rot.T * scale + centre + shift
        landmarks[n] = xy
        # Vertebrae as a central band, then a disk of each landmark's bone around it.
        band = (np.abs(xx - (centre + shift[0])) < 12) & (yy < 60 + shift[1])
        labels[n][band] = VERTEBRAE
        image = 0.4 * band.astype(np.float64)
        for (x, y), bone in zip(xy, LANDMARK_BONE_INDEX):
            r2 = (xx - x) ** 2 + (yy - y) ** 2
            labels[n][r2 <= 8.0**2] = bone
            image += 0.3 * (r2 <= 8.0**2) + 1.5 * np.exp(-r2 / (2 * 1.5**2))
        image += rng.normal(0.0, 0.02, size=image.shape)
        images[n] = (image + 1.0).astype(np.float32)  # line integrals are positive
    return images, labels, landmarks


def write_tiny_processed(path: Path, specimens=(1, 2, 3), frames: int = 4, seed: int = 0) -> dict:
    """Write the tiny data set; returns {specimen: (images, labels, landmarks)}."""
    rng = np.random.default_rng(seed)
    truth = {}
    with h5py.File(path, "w") as f:
        f["land-names/num-lands"] = np.int64(len(LANDMARK_NAMES))
        for i, name in enumerate(LANDMARK_NAMES):
            f[f"land-names/land-{i:02d}"] = name
        for specimen in specimens:
            images, labels, landmarks = tiny_frames(frames, rng)
            group = f.create_group(specimen_group(specimen))
            group["projs"] = images
            group["segs"] = labels
            group["lands"] = landmarks.transpose(0, 2, 1).astype(np.float32)  # N x 2 x 14
            truth[specimen] = (images, labels, landmarks)
    return truth


def tiny_folds(specimens, frames: int, val_per_fold: int = 1) -> dict:
    """A folds.json document: fold k tests specimen k; the last `val_per_fold` frames of each
    training specimen (in order) validate."""
    folds = {}
    for test in specimens:
        train, val = [], []
        for specimen in specimens:
            if specimen == test:
                continue
            keys = [[specimen, n] for n in range(frames)]
            train += keys[: frames - val_per_fold]
            val += keys[frames - val_per_fold :]
        folds[str(test)] = {
            "test_specimen": test,
            "train": train,
            "val": val,
            "test": [[test, n] for n in range(frames)],
        }
    return {
        "data": "tiny.h5",
        "val_fraction": 0.25,
        "seed": 0,
        "specimens": list(specimens),
        "folds": folds,
    }


@pytest.fixture
def tiny_data(tmp_path_factory) -> dict:
    """{'processed': path, 'folds': path, 'truth': ...}: 3 specimens x 4 frames, folds 1-3."""
    root = tmp_path_factory.mktemp("tiny-data")
    processed = root / "ds_8x.h5"
    truth = write_tiny_processed(processed, specimens=(1, 2, 3), frames=4)
    folds_path = root / "folds.json"
    document = tiny_folds((1, 2, 3), frames=4)
    document["data"] = str(processed)
    folds_path.write_text(json.dumps(document, indent=2))
    return {"processed": processed, "folds": folds_path, "truth": truth}


# A training configuration small enough for tests: smallest HRNet, 4-channel decoders.
TINY_TRAIN_PARAMS = {
    "model": {"backbone": "hrnet_w18_small", "decoder_channels": [4, 4]},
    "train": {
        "epochs": 3,
        "batch_size": 2,
        "lr": 0.001,
        "val_every": 1,
        "seed": 0,
        "device": "cpu",
        "checkpoint_every": 1,
    },
}


def write_tiny_run(root: Path, frames: int = 3, params: dict | None = None) -> dict:
    """A processed file, folds.json and params.yaml for `silr train` in `root`; returns their paths.

    With 3 specimens x 3 frames, fold 1 trains on 4 frames and validates on 2.
    """
    root.mkdir(parents=True, exist_ok=True)
    processed = root / "ds_8x.h5"
    write_tiny_processed(processed, specimens=(1, 2, 3), frames=frames)
    folds_path = root / "folds.json"
    document = tiny_folds((1, 2, 3), frames=frames)
    document["data"] = str(processed)
    folds_path.write_text(json.dumps(document, indent=2))
    merged = {section: dict(values) for section, values in TINY_TRAIN_PARAMS.items()}
    for section, values in (params or {}).items():
        merged.setdefault(section, {}).update(values)
    merged["data"] = {"processed": str(processed)}
    params_path = root / "params.yaml"
    params_path.write_text(yaml.safe_dump(merged))
    return {
        "root": root,
        "processed": processed,
        "folds": folds_path,
        "params": params_path,
        "models": root / "models",
        "live": root / "dvclive",
        "resume": root / "resume",
    }


def train_argv(run: dict, loss: str = "proposed", fold: int = 1, *extra: str) -> list[str]:
    return [
        "train",
        "--loss",
        loss,
        "--fold",
        str(fold),
        "--params",
        str(run["params"]),
        "--folds",
        str(run["folds"]),
        "--out-dir",
        str(run["models"]),
        "--live-dir",
        str(run["live"]),
        "--resume-dir",
        str(run["resume"]),
        "--no-progress",
        *extra,
    ]


def resume_state(run: dict, loss: str = "proposed", fold: int = 1, seed: int = 0) -> Path:
    """The one training state of (loss, fold, seed) in the run's resume store
    (silr.training.resume)."""
    states = sorted((Path(run["resume"]) / loss / f"fold{fold}" / f"seed{seed}").glob("*.pt"))
    assert len(states) == 1, f"expected one resume state, found {states}"
    return states[0]


@pytest.fixture(scope="session")
def trained_tiny_run(tmp_path_factory) -> dict:
    """`silr train --loss proposed --fold 1` on the tiny data, 3 epochs, once per session.

    Read-only for the tests that use it (they compare other runs with it). Trained on one
    thread: two OpenMP threads on a busy 2-core machine can be 10x slower.
    """
    run = write_tiny_run(tmp_path_factory.mktemp("trained-tiny-run"))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert cli.main(train_argv(run)) == 0
    finally:
        torch.set_num_threads(before)
    return run
