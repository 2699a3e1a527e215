"""`silr predict`: every input kind, the ensemble, coordinates back in the input image, failures.

Most tests use `MarkerModel`, a deterministic stand-in for a trained network: every
landmark's heatmap peaks exactly at the brightest pixel of the input, so where a marker
dot is drawn is where the landmark must be reported, with no training and no tolerance.
It is served through `silr.model.checkpoint.load_model` (monkeypatched); the checkpoint round
trip itself is tested with a real tiny model at the end.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from silr import cli
from silr.core.anatomy import (
    FRAME_SIZE_PX,
    LABEL_NAMES,
    LANDMARK_BONE,
    LANDMARK_NAMES,
    LEFT_HEMIPELVIS,
    NETWORK_INPUT_PX,
    SPECIMEN_IDS,
)
from silr.core.coords import pad_offset
from silr.core.types import ModelOutput
from silr.inference import inputs
from silr.model import checkpoint
from silr.model.card import ModelCard
from silr.model.run_config import params_hash_of

PEAK_LOGIT = 10.0
ABSENT = {"GSN-r", "IPS-l"}  # MarkerModel predicts these two absent


class MarkerModel(torch.nn.Module):
    """Heatmap logits +10 at the brightest input pixel (Gaussian fall-off to -10) for every
    landmark except those in ABSENT (-10 everywhere); segmentation: `label` everywhere."""

    def __init__(self, label: int = LEFT_HEMIPELVIS):
        super().__init__()
        self.label = label

    def forward(self, images: torch.Tensor) -> ModelOutput:
        batch, _, height, width = images.shape
        flat = images.flatten(1).argmax(dim=1)
        rows, cols = (flat // width).double(), (flat % width).double()
        yy, xx = torch.meshgrid(
            torch.arange(height, dtype=torch.float64),
            torch.arange(width, dtype=torch.float64),
            indexing="ij",
        )
        dist2 = (xx[None] - cols[:, None, None]) ** 2 + (yy[None] - rows[:, None, None]) ** 2
        peak = 2 * PEAK_LOGIT * torch.exp(-dist2 / 8.0) - PEAK_LOGIT
        heat = peak[:, None].repeat(1, len(LANDMARK_NAMES), 1, 1)
        for i, name in enumerate(LANDMARK_NAMES):
            if name in ABSENT:
                heat[:, i] = -PEAK_LOGIT
        seg = torch.zeros(batch, len(LABEL_NAMES), height, width, dtype=torch.float64)
        seg[:, self.label] = 5.0
        return ModelOutput(heat.float(), seg.float())


class FixedModel(torch.nn.Module):
    """Input-independent random logits (seeded): for checking the ensemble average by hand."""

    def __init__(self, seed: int):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        size = NETWORK_INPUT_PX
        self.heat = torch.randn(1, len(LANDMARK_NAMES), size, size, generator=generator) * 3
        self.seg = torch.randn(1, len(LABEL_NAMES), size, size, generator=generator) * 3

    def forward(self, images: torch.Tensor) -> ModelOutput:
        batch = images.shape[0]
        return ModelOutput(self.heat.expand(batch, -1, -1, -1), self.seg.expand(batch, -1, -1, -1))


def card(**changes) -> ModelCard:
    base = {
        "format": "silr-checkpoint",
        "format_version": 1,
        "landmark_names": list(LANDMARK_NAMES),
        "label_names": [LABEL_NAMES[k] for k in sorted(LABEL_NAMES)],
        "model": {"backbone": "marker", "decoder_channels": [4]},
        "input_size": NETWORK_INPUT_PX,
        "frame_size": FRAME_SIZE_PX,
        "pad_offset": pad_offset(),
        "preprocessing": {
            "crop": 50,
            "i0": 65487.0,
            "downsample": 8,
            "intensity": "min-max per frame",
        },
        "heatmap": {"sigma": 2.5, "presence_threshold": 0.5, "refine": "none"},
    }
    base.update(changes)
    return ModelCard.from_dict(base)


@pytest.fixture
def fake_models(monkeypatch, tmp_path):
    """add(name, model, card) -> a checkpoint path that load_model serves as (model, card)."""
    served: dict[str, tuple[torch.nn.Module, dict]] = {}
    real_load = checkpoint.load_model

    def load_model(path, device="cpu", *, fused=False):
        # The stand-ins are served as they are (most are not SILRNets, which alone can fuse).
        if str(path) in served:
            model, model_card = served[str(path)]
            return model.eval(), model_card
        return real_load(path, device, fused=fused)

    def add(name: str, model: torch.nn.Module, model_card: ModelCard | None = None) -> Path:
        path = tmp_path / "models" / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"stand-in")
        served[str(path)] = (model, model_card or card())
        return path

    monkeypatch.setattr(checkpoint, "load_model", load_model)
    return add


def run_predict(*argv) -> int:
    return cli.main(["predict", *map(str, argv)])


def landmarks_json(out: Path, stem: str) -> dict:
    return json.loads((out / f"{stem}_landmarks.json").read_text())


def assert_all_at(record: dict, x: float, y: float) -> None:
    """Every landmark MarkerModel predicts present is reported at input pixel (x, y)."""
    for row in record["landmarks"]:
        if row["name"] in ABSENT:
            continue
        assert (row["x"], row["y"]) == (pytest.approx(x, abs=1e-9), pytest.approx(y, abs=1e-9)), (
            row["name"]
        )


def dot_image(
    width: int, height: int, cols: slice, rows: slice, dtype=np.uint8, value=200
) -> np.ndarray:
    image = np.full((height, width), 10, dtype=dtype)
    image[rows, cols] = value
    return image


# ------------------------------------------------------------------ image inputs, coordinates


def test_png8_frame_of_another_size_maps_back_to_input_pixels(fake_models, tmp_path, capsys):
    # A 2x2 dot at columns 100-101, rows 200-201 of a 360x360 image: its centre (100.5, 200.5)
    # is one frame pixel (50, 100) after the 2x area mean, and must come back as (100.5, 200.5).
    ckpt = fake_models("marker.pt", MarkerModel())
    Image.fromarray(dot_image(360, 360, slice(100, 102), slice(200, 202))).save(
        tmp_path / "c_arm.png"
    )
    out = tmp_path / "out"
    assert run_predict("--model", ckpt, "--out", out, tmp_path / "c_arm.png") == 0

    record = landmarks_json(out, "c_arm")
    assert_all_at(record, 100.5, 200.5)
    assert record["treated_as"] == inputs.LINE_INTEGRAL
    assert record["input_size"] == [360, 360] and record["scale"] == [0.5, 0.5]
    assert record["resampling"] == "area" and record["ensemble"] is None
    by_name = {row["name"]: row for row in record["landmarks"]}
    assert by_name["FH-l"]["frame_x"] == 50 and by_name["FH-l"]["frame_y"] == 100
    # Presence and discrete visibility: the segmentation is left hemipelvis everywhere.
    for name, row in by_name.items():
        expected = (
            0.0 if name in ABSENT else (1.0 if LANDMARK_BONE[name] == LEFT_HEMIPELVIS else 0.5)
        )
        assert row["present"] is (name not in ABSENT) and row["visibility"] == expected, name
    assert by_name["FH-l"]["score"] == pytest.approx(
        torch.sigmoid(torch.tensor(PEAK_LOGIT)).item(), rel=1e-6
    )

    # The label map is on the input's own grid, an indexed PNG whose indices are the labels.
    with Image.open(out / "c_arm_seg.png") as seg:
        assert seg.mode == "P" and seg.size == (360, 360)
        labels = np.asarray(seg)
    assert labels.dtype == np.uint8 and (labels == LEFT_HEMIPELVIS).all()
    csv_lines = (out / "c_arm_landmarks.csv").read_text().splitlines()
    assert csv_lines[0] == "name,x,y,frame_x,frame_y,present,in_image,score,visibility"
    assert csv_lines[1].startswith("FH-l,100.5000,200.5000,50.0000,100.0000,True,True,")
    assert (out / "c_arm_overlay.png").stat().st_size > 1000
    summary = capsys.readouterr().out
    assert "c_arm" in summary and " 12/14" in summary


def test_png16_and_tiff16_non_square_frames(fake_models, tmp_path):
    # 720 x 540 (W x H): area factors 4 and 3. A 4x3 dot at columns 100-103, rows 60-62 is
    # frame pixel (25, 20), whose centre maps back to (101.5, 61.0).
    ckpt = fake_models("marker.pt", MarkerModel())
    image = dot_image(720, 540, slice(100, 104), slice(60, 63), dtype=np.uint16, value=60000)
    Image.fromarray(image).save(tmp_path / "wide16.png")
    Image.fromarray(image).save(tmp_path / "wide16.tif")
    out = tmp_path / "out"
    assert (
        run_predict("--model", ckpt, "--out", out, tmp_path / "wide16.png", tmp_path / "wide16.tif")
        == 0
    )
    # The same stem twice: each input's outputs carry its file type, so neither overwrites the
    # other.
    assert_all_at(landmarks_json(out, "wide16_png"), 101.5, 61.0)
    assert not (out / "wide16_landmarks.json").exists()
    second = landmarks_json(out, "wide16_tif")
    assert second["source"].endswith("wide16.tif") and second["scale"] == [
        0.25,
        pytest.approx(1 / 3),
    ]
    assert_all_at(second, 101.5, 61.0)


def test_smaller_npy_frame_is_upsampled_and_stack_frames_are_chosen(fake_models, tmp_path):
    ckpt = fake_models("marker.pt", MarkerModel())
    # A frame of the model's own size is used as it is: the bright pixel is the landmark.
    frame = np.zeros((FRAME_SIZE_PX, FRAME_SIZE_PX), dtype=np.float32)
    frame[70, 33] = 5.0
    np.save(tmp_path / "single.npy", frame)
    stack = np.zeros((3, 90, 90), dtype=np.float64)
    for i in range(3):
        stack[i, 10 + i, 20] = 1.0
    np.save(tmp_path / "stack.npy", stack)
    out = tmp_path / "out"
    assert (
        run_predict(
            "--model",
            ckpt,
            "--out",
            out,
            "--frames",
            "0,2",
            tmp_path / "single.npy",
            tmp_path / "stack.npy",
        )
        == 0
    )
    assert_all_at(landmarks_json(out, "single"), 33.0, 70.0)
    assert not (out / "stack_f001_landmarks.json").exists()
    for i in (0, 2):
        record = landmarks_json(out, f"stack_f{i:03d}")
        assert record["resampling"] == "bilinear" and record["scale"] == [2.0, 2.0]
        # Upsampled 2x: the bright pixel's centre lies between frame pixels; the argmax is
        # one of the two nearest, half a frame pixel = a quarter input pixel away.
        for row in (r for r in record["landmarks"] if r["name"] not in ABSENT):
            assert abs(row["x"] - 20) == pytest.approx(0.25) and abs(
                row["y"] - (10 + i)
            ) == pytest.approx(0.25)


# ------------------------------------------------------------------ raw frames, HDF5


def raw_frame_with_dot(
    block_col: int, block_row: int, *, rotate: bool
) -> tuple[np.ndarray, tuple[float, float]]:
    """A 1536x1536 detector frame (bone dark) with one dark 9x9 square that ingestion turns into
    frame pixel (block_col, block_row); returns it and the square's centre in raw pixels.

    The published construction: small pixel i sits on full-resolution pixel 50 + 8 i, and a
    stored-upside-down frame is turned in the small frame, so upright pixel (c, r) is stored
    small pixel (179 - c, 179 - r)."""
    raw = np.full((1536, 1536), 60000.0, dtype=np.float32)
    col, row = (179 - block_col, 179 - block_row) if rotate else (block_col, block_row)
    centre_col, centre_row = 50 + 8 * col, 50 + 8 * row
    raw[centre_row - 4 : centre_row + 5, centre_col - 4 : centre_col + 5] = 500.0
    return raw, (float(centre_col), float(centre_row))


def test_raw_npy_goes_through_ingestion_and_maps_to_detector_pixels(fake_models, tmp_path):
    ckpt = fake_models("marker.pt", MarkerModel())
    raw, centre = raw_frame_with_dot(40, 120, rotate=False)
    np.save(tmp_path / "detector.npy", raw)
    out = tmp_path / "out"
    assert run_predict("--model", ckpt, "--out", out, "--raw", tmp_path / "detector.npy") == 0
    record = landmarks_json(out, "detector")
    assert record["treated_as"].startswith(inputs.RAW_FRAME)
    assert record["input_size"] == [1536, 1536] and record["resampling"] == "none"
    assert record["landmarks"][0]["frame_x"] == 40 and record["landmarks"][0]["frame_y"] == 120
    assert_all_at(record, *centre)


def write_fullres_h5(path: Path, frames: list[tuple[np.ndarray, int]]) -> None:
    """A minimal full-resolution DeepFluoro file: specimen 1, frames (raw pixels,
    rot-180-for-up)."""
    with h5py.File(path, "w") as f:
        params = f.create_group("proj-params")
        params["intrinsic"] = np.eye(3)
        params["extrinsic"] = np.eye(4)
        params["num-cols"], params["num-rows"] = 1536, 1536
        params["pixel-col-spacing"], params["pixel-row-spacing"] = 0.194, 0.194
        specimen = f.create_group(SPECIMEN_IDS[1])
        for index, (pixels, rotate) in enumerate(frames):
            group = specimen.create_group(f"projections/{index:03d}")
            group["image/pixels"] = pixels
            group["image/spacing"] = np.array([0.194, 0.194])
            group["image/origin"] = np.zeros(2)
            group["image/dir-mat"] = np.eye(2)
            group.create_dataset(
                "gt-seg/pixels", data=np.zeros((1536, 1536), np.uint8), compression="gzip"
            )
            for name in LANDMARK_NAMES:
                group[f"gt-landmarks/{name}"] = np.array([[700.0], [700.0]])
            group["rot-180-for-up"] = np.array(rotate, dtype=np.uint8)


def test_fullres_hdf5_honours_rot180_and_maps_to_detector_pixels(fake_models, tmp_path):
    ckpt = fake_models("marker.pt", MarkerModel())
    upright, upright_centre = raw_frame_with_dot(30, 150, rotate=False)
    turned, turned_centre = raw_frame_with_dot(30, 150, rotate=True)
    write_fullres_h5(tmp_path / "full.h5", [(upright, 0), (turned, 1)])
    out = tmp_path / "out"
    assert run_predict("--model", ckpt, "--out", out, "--specimen", 1, tmp_path / "full.h5") == 0
    first, second = landmarks_json(out, "full_s01_f000"), landmarks_json(out, "full_s01_f001")
    assert_all_at(first, *upright_centre)
    assert_all_at(second, *turned_centre)
    # Both frames are the same upright picture, so the frame positions agree.
    assert second["landmarks"][0]["frame_x"] == 30 and second["landmarks"][0]["frame_y"] == 150
    assert "rot-180-for-up" in second["treated_as"] and "rot-180" not in first["treated_as"]


def write_processed_h5(path: Path, frames_per_specimen: dict[int, np.ndarray]) -> None:
    """A minimal preprocessed (ipcai_2020_ds_8x.h5 layout) file."""
    with h5py.File(path, "w") as f:
        f["land-names/num-lands"] = len(LANDMARK_NAMES)
        for i, name in enumerate(LANDMARK_NAMES):
            f[f"land-names/land-{i:02d}"] = name
        for number, projs in frames_per_specimen.items():
            group = f.create_group(f"{number:02d}")
            group["projs"] = projs.astype(np.float32)
            group["segs"] = np.zeros(projs.shape, np.uint8)
            group["lands"] = np.full((len(projs), 2, len(LANDMARK_NAMES)), 90.0)


def test_processed_hdf5_with_specimen_and_frames(fake_models, tmp_path):
    ckpt = fake_models("marker.pt", MarkerModel())
    projs = {number: np.zeros((3, FRAME_SIZE_PX, FRAME_SIZE_PX)) for number in (1, 2)}
    for number in (1, 2):
        for index in range(3):
            projs[number][index, 10 * number + index, 5 + index] = 2.0  # (x, y) = (5 + i, 10 n + i)
    write_processed_h5(tmp_path / "ds_8x.h5", projs)
    out = tmp_path / "out"
    assert (
        run_predict(
            "--model", ckpt, "--out", out, "--specimen", 2, "--frames", "1,2", tmp_path / "ds_8x.h5"
        )
        == 0
    )
    written = sorted(p.name for p in out.glob("*_landmarks.json"))
    assert written == ["ds_8x_s02_f001_landmarks.json", "ds_8x_s02_f002_landmarks.json"]
    assert_all_at(landmarks_json(out, "ds_8x_s02_f002"), 7.0, 22.0)
    # --raw makes no sense for line-integral frames: that file fails, clearly.
    assert run_predict("--model", ckpt, "--out", out, "--raw", tmp_path / "ds_8x.h5") == 1


# ------------------------------------------------------------------ the ensemble


def test_ensemble_averages_probabilities_exactly(fake_models, tmp_path):
    first, second = FixedModel(1), FixedModel(2)
    paths = [fake_models("a.pt", first), fake_models("b.pt", second)]
    np.save(tmp_path / "frame.npy", np.random.default_rng(0).random((FRAME_SIZE_PX, FRAME_SIZE_PX)))
    out = tmp_path / "out"
    assert (
        run_predict("--model", paths[0], "--model", paths[1], "--out", out, tmp_path / "frame.npy")
        == 0
    )
    record = landmarks_json(out, "frame")
    assert record["ensemble"] == [str(p) for p in paths]

    # KL-style logit maps are averaged as the softmax over each map (their level is free).
    def softmax_map(logits):
        return torch.softmax(logits.double().flatten(2), -1).view_as(logits)

    heat = (softmax_map(first.heat) + softmax_map(second.heat)) / 2
    seg = (torch.softmax(first.seg.double(), 1) + torch.softmax(second.seg.double(), 1)) / 2
    offset = pad_offset()
    inside = (slice(offset, offset + FRAME_SIZE_PX),) * 2
    for i, row in enumerate(record["landmarks"]):
        # Decoding only considers the frame, not the padding around it.
        channel = heat[0, i][inside]
        flat = int(channel.argmax())
        row_px, col_px = divmod(flat, FRAME_SIZE_PX)
        # The threshold score is the mean of the models' own max sigmoid(H) over the frame.
        score = (
            torch.sigmoid(first.heat[0, i][inside].max())
            + torch.sigmoid(second.heat[0, i][inside].max())
        ) / 2
        assert row["score"] == pytest.approx(float(score), rel=1e-6)
        assert (row["frame_x"], row["frame_y"]) == (col_px, row_px)
        assert row["present"] is (float(score) >= 0.5)
    expected_labels = seg[0].argmax(0)[
        offset : offset + FRAME_SIZE_PX, offset : offset + FRAME_SIZE_PX
    ]
    assert (np.asarray(Image.open(out / "frame_seg.png")) == expected_labels.numpy()).all()
    # The average differs from each member alone (the test would not notice a lost member
    # otherwise).
    assert not torch.equal(heat[0].flatten(1).argmax(1), first.heat[0].flatten(1).argmax(1))


def test_mismatched_models_cannot_be_ensembled(fake_models, tmp_path, capsys):
    a = fake_models("a.pt", MarkerModel())
    b = fake_models("b.pt", MarkerModel(), card(landmark_names=list(reversed(LANDMARK_NAMES))))
    np.save(tmp_path / "frame.npy", np.ones((64, 64)))  # a frame that passes the input checks
    assert (
        run_predict("--model", a, "--model", b, "--out", tmp_path / "out", tmp_path / "frame.npy")
        == 2
    )
    message = capsys.readouterr().err
    assert "b.pt" in message and "landmark_names differs" in message
    assert not (tmp_path / "out").exists()


def test_model_that_does_not_fit_its_card_fails_before_any_input(fake_models, tmp_path, capsys):
    small = fake_models("small.pt", FixedModel(0), card(input_size=224))
    np.save(tmp_path / "frame.npy", np.ones((64, 64)))  # a frame that passes the input checks
    assert run_predict("--model", small, "--out", tmp_path / "out", tmp_path / "frame.npy") == 2
    assert "small.pt: model outputs heatmaps (1, 14, 192, 192)" in capsys.readouterr().err


# ------------------------------------------------------------------ failures


def test_bad_inputs_fail_alone_and_are_listed(fake_models, tmp_path, capsys):
    ckpt = fake_models("marker.pt", MarkerModel())
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    (tmp_path / "notes.txt").write_text("hello")
    np.save(tmp_path / "cube.npy", np.zeros((2, 2, 2, 2)))
    Image.fromarray(dot_image(180, 180, slice(3, 4), slice(4, 5))).save(tmp_path / "good.png")
    out = tmp_path / "out"
    code = run_predict(
        "--model",
        ckpt,
        "--out",
        out,
        tmp_path / "broken.png",
        tmp_path / "missing.png",
        tmp_path / "notes.txt",
        tmp_path / "cube.npy",
        tmp_path / "good.png",
    )
    assert code == 1
    assert_all_at(landmarks_json(out, "good"), 3.0, 4.0)
    err = capsys.readouterr().err
    assert "4 input(s) failed" in err
    assert "broken.png: not a readable image" in err
    assert "missing.png: no such file" in err
    assert "notes.txt: unsupported input type '.txt'" in err
    assert "cube.npy: expected a real (H, W) frame or (N, H, W) stack" in err


def test_missing_model_and_non_checkpoint_file(tmp_path, capsys):
    np.save(tmp_path / "frame.npy", np.ones((64, 64)))  # a frame that passes the input checks
    assert run_predict("--out", tmp_path / "out", tmp_path / "frame.npy") == 2
    assert "--model CKPT is required" in capsys.readouterr().err
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00 this is not a checkpoint")
    assert run_predict("--model", junk, "--out", tmp_path / "out", tmp_path / "frame.npy") == 2
    assert str(junk) in capsys.readouterr().err
    assert run_predict("--model", tmp_path / "absent.pt", "--info") == 2
    assert "absent.pt: no such checkpoint file" in capsys.readouterr().err


# ------------------------------------------------------------------ a real checkpoint


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A real (untrained) smallest network saved as a silr checkpoint with its model card."""
    from silr.core.params import HeatmapParams, ModelParams, Params
    from silr.model.network import build_model

    # Argmax decoding (refine none), which the prediction test below recomputes from the network.
    params = Params(
        model=ModelParams(backbone="hrnet_w18_small", decoder_channels=(4, 4)),
        heatmap=HeatmapParams(refine="none"),
    )
    torch.manual_seed(0)
    model = build_model("hrnet_w18_small", (4, 4)).eval()
    model_card = ModelCard.for_run(
        params,
        loss_name="proposed",
        fold=3,
        data_hash="0123456789abcdef",
        params_hash=params_hash_of(params, "proposed"),
        val_score_px=4.25,
        epoch=7,
        data_source="tests",
    )
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    checkpoint.save_checkpoint(path, model, model_card)
    return path


def test_info_prints_the_model_card(tiny_checkpoint, capsys):
    assert run_predict("--model", tiny_checkpoint, "--info", "--full") == 0
    out = capsys.readouterr().out
    assert f"model card of {tiny_checkpoint}" in out
    for line in (
        "landmark_names: " + ", ".join(LANDMARK_NAMES),
        "label_names: " + ", ".join(LABEL_NAMES[k] for k in sorted(LABEL_NAMES)),
        "input_size: 192",
        "frame_size: 180",
        "pad_offset: 6",
        "intensity: per-frame min-max to [0, 1]",
        "crop: 50",
        "i0: 65487.0",
        "downsample: 8",
        "backbone: hrnet_w18_small",
        "fold: 3",
        "data_hash: 0123456789abcdef",
        "val_score_px: 4.25",
        "epoch: 7",
    ):
        assert line in out, line
    assert "params_hash: " + checkpoint.read_checkpoint(tiny_checkpoint)["card"].params_hash in out


def test_real_checkpoint_prediction_matches_the_network(tiny_checkpoint, tmp_path):
    from silr.core.network_input import to_network_input

    frame = np.random.default_rng(3).random((FRAME_SIZE_PX, FRAME_SIZE_PX)).astype(np.float32)
    np.save(tmp_path / "noise.npy", frame)
    out = tmp_path / "out"
    assert (
        run_predict(
            "--model", tiny_checkpoint, "--out", out, "--device", "cpu", tmp_path / "noise.npy"
        )
        == 0
    )

    model, _ = checkpoint.load_model(tiny_checkpoint)
    with torch.no_grad():
        output = model(to_network_input(frame[None]))
    heat = torch.sigmoid(output.heatmaps[0].double())
    offset = pad_offset()
    record = landmarks_json(out, "noise")
    rule = record["presence_rule"]
    for i, row in enumerate(record["landmarks"]):
        in_frame = heat[i, offset : offset + FRAME_SIZE_PX, offset : offset + FRAME_SIZE_PX]
        row_px, col_px = divmod(int(in_frame.argmax()), FRAME_SIZE_PX)
        assert (row["frame_x"], row["frame_y"]) == (col_px, row_px)
        assert (row["x"], row["y"]) == (row["frame_x"], row["frame_y"])  # same size: no resampling
        assert record["presence_scores"]["threshold"][i] == pytest.approx(
            float(in_frame.max()), rel=1e-6
        )
        assert row["score"] == pytest.approx(record["presence_scores"][rule][i], rel=1e-6)
    labels = output.segmentation[0].argmax(0)[
        offset : offset + FRAME_SIZE_PX, offset : offset + FRAME_SIZE_PX
    ]
    assert (np.asarray(Image.open(out / "noise_seg.png")) == labels.numpy()).all()


def test_weights_that_do_not_fit_the_card(tiny_checkpoint, tmp_path, capsys):
    payload = torch.load(tiny_checkpoint, weights_only=True)
    payload["card"]["model"]["decoder_channels"] = [8, 4]  # the weights are of a (4, 4) decoder
    wrong = tmp_path / "wrong.pt"
    torch.save(payload, wrong)
    np.save(tmp_path / "frame.npy", np.ones((64, 64)))  # a frame that passes the input checks
    assert run_predict("--model", wrong, "--out", tmp_path / "out", tmp_path / "frame.npy") == 2
    assert "wrong.pt: weights do not fit the network its card describes" in capsys.readouterr().err


# ------------------------------------------------------------------ issue 16: the command line


def test_model_takes_several_checkpoints_a_glob_and_folders(fake_models, tmp_path, capsys):
    for fold in (1, 2):
        (tmp_path / "models" / "run" / f"fold{fold}").mkdir(parents=True)
    a = fake_models("run/fold1/best.pt", MarkerModel())
    b = fake_models("run/fold2/best.pt", MarkerModel())
    np.save(tmp_path / "x.npy", dot_image(180, 180, slice(3, 4), slice(4, 5)).astype(np.float32))
    out = tmp_path / "out"
    # The README's form (as a shell expands a glob), the image first, and a folder of fold folders.
    assert run_predict("--model", a, b, "--out", out, tmp_path / "x.npy") == 0
    assert landmarks_json(out, "x")["ensemble"] == [str(a), str(b)]
    assert run_predict(tmp_path / "x.npy", "--model", a, b, "--out", out) == 0
    assert landmarks_json(out, "x")["ensemble"] == [str(a), str(b)]
    assert (
        run_predict("--model", tmp_path / "models" / "run", "--out", out, tmp_path / "x.npy") == 0
    )
    assert landmarks_json(out, "x")["ensemble"] == [str(a), str(b)]
    assert (
        run_predict("--model", a.parent, "--out", out, tmp_path / "x.npy") == 0
    )  # a folder with best.pt
    assert landmarks_json(out, "x")["models"] == [str(a)]
    capsys.readouterr()
    assert run_predict("--model", tmp_path, "--out", out, tmp_path / "x.npy") == 2
    assert (
        f"--model {tmp_path} is a folder without best.pt or fold*/best.pt"
        in capsys.readouterr().err
    )


def test_info_prints_every_card(tiny_checkpoint, tmp_path, capsys):
    import shutil

    second = tmp_path / "second.pt"
    shutil.copy(tiny_checkpoint, second)
    assert run_predict("--model", tiny_checkpoint, second, "--info") == 0
    lines = capsys.readouterr().out.splitlines()
    # one line per model, then the fields they share; no file date (it says when a file was copied)
    assert lines[0].startswith(
        f"{tiny_checkpoint}: fold 3, loss proposed, validation error 4.25 px"
    )
    assert lines[1].startswith(f"{second}: fold 3, loss proposed")
    assert lines[2] == "shared by the 2 models:"
    assert (
        "  model.backbone: hrnet_w18_small" in lines and "  model.decoder_channels: [4, 4]" in lines
    )
    assert "  loss.weights: dice_ce 1, kl 0.1, visibility 10" in lines
    assert len(lines) < 25 and not any("modified" in line for line in lines)
    assert run_predict("--model", tiny_checkpoint, second, "--info", "--full") == 0
    out = capsys.readouterr().out
    assert f"model card of {tiny_checkpoint}" in out and f"model card of {second}" in out


def test_out_that_is_a_file_fails_before_any_work(tmp_path, capsys):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not even a checkpoint")  # would fail too, but --out is checked first
    (tmp_path / "taken").write_text("a file")
    np.save(tmp_path / "frame.npy", np.ones((64, 64)))  # a frame that passes the input checks
    assert run_predict("--model", junk, "--out", tmp_path / "taken", tmp_path / "frame.npy") == 2
    assert (
        "--out " + str(tmp_path / "taken") + ": exists and is not a directory"
        in capsys.readouterr().err
    )


# ---------------------------------------------------------- issue 16: outputs in the input's pixels


def test_outputs_in_the_input_pixels_and_outside_landmarks_absent(fake_models, tmp_path):
    ckpt = fake_models("marker.pt", MarkerModel())
    # 300 x 200 PNG: the label map comes back 300 x 200, indexed, with the bone palette.
    Image.fromarray(dot_image(300, 200, slice(150, 152), slice(100, 102))).save(
        tmp_path / "wide.png"
    )
    # A 90 x 90 frame with its dot in the last column: frame x 179 maps to input x 89.25 > 89,
    # outside the image, so the landmark is reported absent there.
    np.save(
        tmp_path / "edge.npy", dot_image(90, 90, slice(89, 90), slice(40, 41)).astype(np.float32)
    )
    out = tmp_path / "out"
    assert (
        run_predict("--model", ckpt, "--out", out, tmp_path / "wide.png", tmp_path / "edge.npy")
        == 0
    )
    from silr.core.anatomy import LABEL_COLORS

    with Image.open(out / "wide_seg.png") as seg:
        assert seg.mode == "P" and seg.size == (300, 200)
        assert (np.asarray(seg) == LEFT_HEMIPELVIS).all()
        palette = seg.getpalette()[: 3 * len(LABEL_COLORS)]
    expected = [int(LABEL_COLORS[LEFT_HEMIPELVIS][i : i + 2], 16) for i in (1, 3, 5)]
    assert palette[3 * LEFT_HEMIPELVIS : 3 * LEFT_HEMIPELVIS + 3] == expected
    with Image.open(out / "wide_overlay.png") as overlay:
        width, height = overlay.size
    assert width >= 600 and height < width  # drawn at the input's aspect, not square
    edge = landmarks_json(out, "edge")
    for row in edge["landmarks"]:
        if row["name"] in ABSENT:
            continue
        assert row["frame_x"] == 179 and row["x"] == pytest.approx(89.25)
        assert row["in_image"] is False and row["present"] is False
    assert (out / "edge_overlay.png").stat().st_size > 1000


def test_raw_full_resolution_label_map_on_the_detector_grid(fake_models, tmp_path):
    ckpt = fake_models("marker.pt", MarkerModel())
    raw, _ = raw_frame_with_dot(40, 120, rotate=False)
    np.save(tmp_path / "detector.npy", raw)
    out = tmp_path / "out"
    assert run_predict("--model", ckpt, "--out", out, "--raw", tmp_path / "detector.npy") == 0
    labels = np.asarray(Image.open(out / "detector_seg.png"))
    assert labels.shape == (1536, 1536)
    # Frame pixel i sits on detector pixel 50 + 8 i: the cropped border (more than half a frame
    # pixel outside) is background, everything inside is the model's label.
    assert (labels[:, :46] == 0).all() and (labels[:46] == 0).all()
    assert (labels[46:1486, 46:1486] == LEFT_HEMIPELVIS).all()


# ------------------------------------------------------------------ issue 16: honest output


class MeanModel(torch.nn.Module):
    """Landmark logits from the input's mean brightness: a bright frame scores high, its inverse
    low. Segmentation: label 1 where the input is above its mean."""

    def forward(self, images: torch.Tensor) -> ModelOutput:
        batch, _, height, width = images.shape
        mean = images.mean(dim=(1, 2, 3))
        heat = torch.zeros(batch, len(LANDMARK_NAMES), height, width)
        heat[:, :, height // 2, width // 2] = (40 * (mean - 0.4))[:, None]
        heat[:, :, :, :] += -10.0 * (heat == 0)
        seg = torch.zeros(batch, len(LABEL_NAMES), height, width)
        seg[:, 1] = 5.0 * (images[:, 0] > mean[:, None, None])
        return ModelOutput(heat, seg)


def test_inverted_image_and_raw_on_processed_give_silr_warnings(fake_models, tmp_path, capsys):
    ckpt = fake_models("mean.pt", MeanModel())
    rng = np.random.default_rng(0)
    bright = np.clip(0.7 + 0.2 * rng.standard_normal((180, 180)), 0, 1).astype(np.float32)
    np.save(tmp_path / "normal.npy", bright)
    np.save(tmp_path / "inverted.npy", 1 - bright)
    out = tmp_path / "out"
    assert (
        run_predict(
            "--model", ckpt, "--out", out, tmp_path / "normal.npy", tmp_path / "inverted.npy"
        )
        == 0
    )
    err = capsys.readouterr().err
    assert f"silr: warning: {tmp_path / 'inverted.npy'}: the image looks inverted" in err
    assert f"{tmp_path / 'normal.npy'}: the image looks inverted" not in err
    assert (
        landmarks_json(out, "inverted")["warnings"]
        and not landmarks_json(out, "normal")["warnings"]
    )
    # --raw on an already processed (line-integral) frame: a silr warning, no Python warning text.
    np.save(tmp_path / "processed.npy", (1 + 4 * bright).astype(np.float32))
    assert run_predict("--model", ckpt, "--out", out, "--raw", tmp_path / "processed.npy") == 0
    err = capsys.readouterr().err
    assert "silr: warning:" in err and "looks like an already processed frame" in err
    assert "Warning:" not in err and "warnings.warn" not in err


def test_statistics_warning_and_card_facts_in_summary_and_json(tiny_checkpoint, tmp_path, capsys):
    Image.fromarray(dot_image(180, 180, slice(3, 4), slice(4, 5))).save(tmp_path / "dot.png")
    out = tmp_path / "out"
    assert (
        run_predict(
            "--model", tiny_checkpoint, "--out", out, "--device", "cpu", tmp_path / "dot.png"
        )
        == 0
    )
    captured = capsys.readouterr()
    assert "intensity statistics unlike the training frames" in captured.err
    assert "loss proposed, validation error 4.25 px (180x180 frame) at epoch 7" in captured.out
    assert "fold 3" in captured.out and "seconds" in captured.out and "modified" not in captured.out
    assert "; trained on data of unknown kind (tests)" in captured.out
    facts = landmarks_json(out, "dot")["model_facts"][0]
    assert (
        facts["loss"] == "proposed"
        and facts["val_score_px"] == 4.25
        and facts["data_source"] == "tests"
    )
    assert "checkpoint_file_modified" not in facts and facts["data_kind"] == "unknown"


def test_ensemble_of_different_losses_warns(fake_models, tmp_path, capsys):
    loss = {"name": "proposed", "weights": {"heatmap": 1.0}}
    a = fake_models("a.pt", MarkerModel(), card(loss=loss))
    b = fake_models("b.pt", MarkerModel(), card(loss={**loss, "name": "baseline"}))
    np.save(tmp_path / "x.npy", dot_image(180, 180, slice(3, 4), slice(4, 5)).astype(np.float32))
    assert run_predict("--model", a, b, "--out", tmp_path / "out", tmp_path / "x.npy") == 0
    assert (
        "silr: warning: the ensemble mixes models trained with different losses "
        "(baseline, proposed)"
        in capsys.readouterr().err
    )


# ------------------------------------------------------------------ issue 16: more inputs


def test_jpeg_dicom_and_folder_inputs(fake_models, tmp_path):
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ckpt = fake_models("marker.pt", MarkerModel())
    frames = tmp_path / "frames"
    frames.mkdir()
    Image.fromarray(dot_image(180, 180, slice(10, 11), slice(20, 21))).save(
        frames / "a.jpg", quality=100
    )
    # MONOCHROME1: the smallest value is shown white, so the dot is stored dark; 0.2 mm pixels.
    stored = (
        4095 - dot_image(180, 180, slice(30, 31), slice(40, 41), dtype=np.uint16, value=4000)
    ).astype(np.uint16)
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.12.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = (
        meta.MediaStorageSOPClassUID,
        meta.MediaStorageSOPInstanceUID,
    )
    ds.Rows, ds.Columns, ds.SamplesPerPixel = 180, 180, 1
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.ImagerPixelSpacing = [0.2, 0.2]
    ds.PixelData = stored.tobytes()
    ds.save_as(frames / "b.dcm", enforce_file_format=True)
    (frames / "notes.txt").write_text("ignored: not a supported type")
    out = tmp_path / "out"
    assert run_predict("--model", ckpt, "--out", out, frames) == 0
    assert_all_at(landmarks_json(out, "a"), 10.0, 20.0)
    dicom = landmarks_json(out, "b")
    assert_all_at(dicom, 30.0, 40.0)
    assert dicom["pixel_spacing_mm"] == [0.2, 0.2]


# ------------------------------------------------------------------ issue 16: hostile inputs


def test_decompression_bomb_fails_alone_and_the_batch_goes_on(fake_models, tmp_path, capsys):
    ckpt = fake_models("marker.pt", MarkerModel())
    Image.new("1", (16000, 16000)).save(tmp_path / "bomb.png")
    assert (tmp_path / "bomb.png").stat().st_size < 100_000
    Image.fromarray(dot_image(180, 180, slice(3, 4), slice(4, 5))).save(tmp_path / "next.png")
    out = tmp_path / "out"
    assert (
        run_predict("--model", ckpt, "--out", out, tmp_path / "bomb.png", tmp_path / "next.png")
        == 1
    )
    assert_all_at(landmarks_json(out, "next"), 3.0, 4.0)
    err = capsys.readouterr().err
    assert "bomb.png: refused as a possible decompression bomb" in err and "Traceback" not in err


def test_frames_too_large_for_memory_are_refused_before_decoding(fake_models, tmp_path, capsys):
    ckpt = fake_models("marker.pt", MarkerModel())
    with open(tmp_path / "huge.npy", "wb") as stream:  # a header declaring 20000 x 20000, no data
        np.lib.format.write_array_header_1_0(
            stream, {"descr": "<f4", "fortran_order": False, "shape": (20000, 20000)}
        )
    Image.new("L", (9000, 8000)).save(tmp_path / "big.png")  # under Pillow's bomb limit, over ours
    np.save(tmp_path / "ok.npy", dot_image(180, 180, slice(3, 4), slice(4, 5)).astype(np.float32))
    out = tmp_path / "out"
    assert (
        run_predict(
            "--model",
            ckpt,
            "--out",
            out,
            tmp_path / "huge.npy",
            tmp_path / "big.png",
            tmp_path / "ok.npy",
        )
        == 1
    )
    err = capsys.readouterr().err
    assert "huge.npy: declared size 20000 x 20000 px is beyond the limit" in err
    assert "big.png: declared size 9000 x 8000 px is beyond the limit" in err
    assert (out / "ok_landmarks.json").exists()


def test_constant_frames_fail_and_are_not_reported_present(fake_models, tmp_path, capsys):
    ckpt = fake_models("marker.pt", MarkerModel())
    Image.fromarray(np.zeros((180, 180), np.uint8)).save(tmp_path / "zeros.png")
    np.save(tmp_path / "flat.npy", np.full((50, 60), 7.0))
    np.save(tmp_path / "ok.npy", dot_image(180, 180, slice(3, 4), slice(4, 5)).astype(np.float32))
    out = tmp_path / "out"
    assert (
        run_predict(
            "--model",
            ckpt,
            "--out",
            out,
            tmp_path / "zeros.png",
            tmp_path / "flat.npy",
            tmp_path / "ok.npy",
        )
        == 1
    )
    err = capsys.readouterr().err
    assert "zeros.png: constant frame (every pixel is 0): nothing to predict" in err
    assert "flat.npy: constant frame (every pixel is 7)" in err
    assert not (out / "zeros_landmarks.json").exists() and (out / "ok_landmarks.json").exists()


# ------------------------------------------------------------------ presence you can trust


class PresenceModel(MarkerModel):
    """MarkerModel with a presence head: logits +6 for the landmarks in `present`, -6 for the
    rest."""

    def __init__(self, present: set[str]):
        super().__init__()
        self.logits = torch.tensor([6.0 if name in present else -6.0 for name in LANDMARK_NAMES])

    def forward(self, images: torch.Tensor) -> ModelOutput:
        output = super().forward(images)
        return ModelOutput(
            output.heatmaps, output.segmentation, self.logits.expand(images.shape[0], -1)
        )


def learned_card() -> ModelCard:
    return card(
        model={"backbone": "marker", "decoder_channels": [4], "presence_head": True},
        heatmap={
            "sigma": 2.5,
            "presence_threshold": 0.5,
            "refine": "none",
            "presence": "learned",
            "presence_source": "head",
        },
    )


def test_learned_presence_is_the_score_and_a_mostly_absent_frame_is_flagged(
    fake_models, tmp_path, capsys
):
    few = {"FH-l", "FH-r", "GSN-l"}
    ckpt = fake_models("presence.pt", PresenceModel(few), learned_card())
    Image.fromarray(dot_image(180, 180, slice(90, 91), slice(90, 91))).save(tmp_path / "frame.png")
    out = tmp_path / "out"
    assert run_predict("--model", ckpt, "--out", out, tmp_path / "frame.png") == 0
    record = landmarks_json(out, "frame")
    assert record["presence_rule"] == "learned"
    for row in record["landmarks"]:
        expected = 1 / (1 + np.exp(-6.0)) if row["name"] in few else 1 / (1 + np.exp(6.0))
        assert row["score"] == pytest.approx(expected, rel=1e-5)
        assert row["present"] is (row["name"] in few)
    err = capsys.readouterr().err
    assert "11 of 14 landmarks are called absent" in err and "unlike the training frames" in err
    assert any("11 of 14 landmarks are called absent" in w for w in record["warnings"])


def test_a_frame_with_most_landmarks_present_gets_no_presence_warning(
    fake_models, tmp_path, capsys
):
    ckpt = fake_models(
        "presence.pt", PresenceModel(set(LANDMARK_NAMES) - {"ASIS-r"}), learned_card()
    )
    Image.fromarray(dot_image(180, 180, slice(90, 91), slice(90, 91))).save(tmp_path / "frame.png")
    assert run_predict("--model", ckpt, "--out", tmp_path / "out", tmp_path / "frame.png") == 0
    assert "called absent" not in capsys.readouterr().err


def test_a_ct_or_mr_dicom_is_flagged_by_its_modality(fake_models, tmp_path, capsys):
    from pydicom.data import get_testdata_file

    ckpt = fake_models("marker.pt", MarkerModel())
    out = tmp_path / "out"
    for name in ("CT_small.dcm", "MR_small.dcm"):
        assert run_predict("--model", ckpt, "--out", out, get_testdata_file(name)) == 0
    err = capsys.readouterr().err
    assert "DICOM Modality is CT, not a projection radiograph (XA, RF, DX, CR)" in err
    assert "DICOM Modality is MR, not a projection radiograph" in err


def test_a_table_of_coordinates_is_not_an_image(fake_models, tmp_path, capsys):
    ckpt = fake_models("marker.pt", MarkerModel())
    np.save(tmp_path / "landmarks.npy", np.random.default_rng(0).random((2, 14)))
    assert run_predict("--model", ckpt, "--out", tmp_path / "out", tmp_path / "landmarks.npy") == 1
    assert "14 x 2 px is too small for a frame (at least 32 px per side" in capsys.readouterr().err


def test_the_summary_line_names_the_training_data_once(tmp_path):
    import h5py

    from silr.data import deepfluoro
    from silr.inference import model_info
    from silr.inference.model_info import describe_facts

    source = tmp_path / "phantom_full_res.h5"
    with h5py.File(source, "w") as f:
        f.attrs[deepfluoro.ATTR_DATA_KIND] = "synthetic"
    facts = {
        "path": "m.pt",
        "fold": 1,
        "loss": "proposed",
        "val_score_px": 4.1,
        "epoch": 23,
        "epochs_planned": 25,
        "finished": True,
        "data_source": str(source),
    }
    line = describe_facts(
        {
            **facts,
            **dict(zip(("data_kind", "data_kind_guessed"), model_info.data_kind(str(source)))),
        }
    )
    assert line == (
        f"m.pt: fold 1, loss proposed, validation error 4.10 px (180x180 frame) at epoch 23 of 25; "
        f"trained on the synthetic phantom ({source})"
    )
    gone = str(
        tmp_path / "elsewhere" / "phantom_full_res.h5"
    )  # the card's file is not on this machine
    line = describe_facts(
        {
            **facts,
            "data_source": gone,
            "finished": False,
            **dict(zip(("data_kind", "data_kind_guessed"), model_info.data_kind(gone))),
        }
    )
    assert line.endswith(
        f"at epoch 23 of 25 (run not finished); trained on the synthetic phantom "
        f"({gone}, kind guessed from its name)"
    )


def test_colliding_stems_carry_their_file_type_and_repeats_a_count():
    spec = lambda stem, source: inputs.InputSpec(stem, source, False, lambda: None)  # noqa: E731
    specs = [
        spec("s1_f3", "a/s1_f3.png"),
        spec("s1_f3", "a/s1_f3.jpg"),
        spec("s1_f3", "b/s1_f3.png"),
        spec("x", "a/x.png"),
        inputs.Failure("a/bad.png", "bad"),
        spec("st_f000", "a/st.npy [frame 0]"),
    ]
    stems = [s.stem for s in inputs.unique_stems(specs) if isinstance(s, inputs.InputSpec)]
    assert stems == ["s1_f3_png", "s1_f3_jpg", "s1_f3_png_2", "x", "st_f000"]
