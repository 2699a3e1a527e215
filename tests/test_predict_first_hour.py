"""`silr predict` as a new user meets it: checks before any model loads, labels that do not
collide, turned frames shown upright, a stretched resize said so."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
import test_predict  # noqa: E402
from conftest import TEMPLATE_XY  # noqa: E402
from silr.core.anatomy import LANDMARK_NAMES  # noqa: E402
from silr.evaluation import overlay  # noqa: E402
from silr.inference import checks  # noqa: E402
from silr.model import checkpoint  # noqa: E402
from test_predict import MarkerModel, dot_image, landmarks_json, run_predict  # noqa: E402

fake_models = test_predict.fake_models  # the stand-in models fixture, shared


def test_a_missing_input_fails_before_any_model_loads(tmp_path, monkeypatch, capsys):
    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(b"never read")
    loaded = []
    monkeypatch.setattr(checkpoint, "load_model", lambda *a, **k: loaded.append(a))
    start = time.perf_counter()
    code = run_predict("--model", ckpt, "--out", tmp_path / "out", tmp_path / "my_frame.png")
    assert code == 1 and loaded == [] and time.perf_counter() - start < 2.0
    err = capsys.readouterr().err
    assert "my_frame.png: no such file" in err and "(no model was loaded)" in err
    assert not (tmp_path / "out").exists()


def test_a_missing_checkpoint_fails_before_anything(tmp_path, capsys):
    assert (
        run_predict("--model", tmp_path / "models" / "best.pt", "--out", tmp_path / "out", "x.png")
        == 2
    )
    assert "best.pt: no such checkpoint file" in capsys.readouterr().err


def _boxes_overlap(a, b) -> bool:
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


def test_landmark_names_do_not_collide_on_a_crowded_pelvis():
    anchors = TEMPLATE_XY.copy()
    anchors[4], anchors[10] = [100, 146], [98, 150]  # IOF-l right above IPS-l, as the issue found
    anchors_pt = anchors * 2.4  # 180 px drawn 6 inches wide: 2.4 points per pixel
    font = 9
    offsets = overlay.label_offsets(anchors_pt, LANDMARK_NAMES, font, 180 * 2.4)
    boxes = []
    for (x, y), (dx, dy), text in zip(anchors_pt, offsets, LANDMARK_NAMES):
        w, h = 0.6 * font * len(text), 1.2 * font
        left = x + dx if dx >= 0 else x + dx - w
        boxes.append((left, y - dy - h / 2, left + w, y - dy + h / 2))
    clashes = [
        (LANDMARK_NAMES[i], LANDMARK_NAMES[j])
        for i in range(len(boxes))
        for j in range(i)
        if _boxes_overlap(boxes[i], boxes[j])
    ]
    assert clashes == []
    # and the greedy rule is not vacuous: all labels to the right would clash here
    right = [
        (x + 7, y - 5.4, x + 7 + 0.6 * font * len(t), y + 5.4)
        for (x, y), t in zip(anchors_pt, LANDMARK_NAMES)
    ]
    assert any(_boxes_overlap(right[i], right[j]) for i in range(len(right)) for j in range(i))


def test_a_non_square_frame_is_noted_as_stretched(fake_models, tmp_path, capsys):
    ckpt = fake_models("marker.pt", MarkerModel())
    Image.fromarray(dot_image(140, 180, slice(3, 4), slice(4, 5))).save(tmp_path / "crop.png")
    assert run_predict("--model", ckpt, "--out", tmp_path / "out", tmp_path / "crop.png") == 0
    record = landmarks_json(tmp_path / "out", "crop")
    assert any("resized non-uniformly" in w and "1.286 along x" in w for w in record["warnings"])
    assert "resized non-uniformly" in capsys.readouterr().err


def test_a_turned_raw_frame_is_drawn_upright(fake_models, tmp_path, monkeypatch):
    ckpt = fake_models("marker.pt", MarkerModel())
    drawn = {}

    def stand_in(image, labels, xy, *args, **kwargs):
        drawn.update(image=image, xy=xy, subtitle=kwargs["subtitle"])
        return overlay.Figure()

    monkeypatch.setattr(overlay, "prediction_overlay", stand_in)
    frame, _ = test_predict.raw_frame_with_dot(40, 30, rotate=True)
    path = tmp_path / "turned.h5"
    test_predict.write_fullres_h5(path, [(frame, 1)])
    assert run_predict("--model", ckpt, "--out", tmp_path / "out", path) == 0
    stored = np.asarray(frame, dtype=np.float32)
    assert np.array_equal(drawn["image"], stored[::-1, ::-1])
    assert "shown turned 180 degrees" in drawn["subtitle"]
    record = next((tmp_path / "out").glob("*_landmarks.json"))
    import json

    row = next(
        r
        for r in json.loads(record.read_text())["landmarks"]
        if r["name"] not in test_predict.ABSENT
    )
    height, width = stored.shape
    shown = drawn["xy"][LANDMARK_NAMES.index(row["name"])]
    assert np.allclose(shown, [width - 1 - row["x"], height - 1 - row["y"]])
    assert checks.ANISOTROPY_TOLERANCE < 0.05


def test_the_presence_warning_names_the_shape_rules_base_score():
    """Under the shape rule the score is the base rule's: the warning says which."""
    from types import SimpleNamespace

    import numpy as np

    from silr.inference.checks import PresenceRule, presence_warning

    frame = SimpleNamespace(present=np.zeros(14, dtype=bool), score=np.full(14, 0.7))
    on_template = PresenceRule.of(SimpleNamespace(presence="shape", shape_base_rule="template"))
    on_learned = PresenceRule.of(SimpleNamespace(presence="shape", shape_base_rule="learned"))
    [template] = presence_warning(frame, on_template)
    assert "mean template score 0.70, presence rule shape on template" in template
    [learned] = presence_warning(frame, on_learned)
    assert "mean presence 0.70, presence rule shape on learned" in learned
    all_present = SimpleNamespace(present=np.ones(14, dtype=bool), score=np.full(14, 0.9))
    assert presence_warning(all_present, on_learned) == []
    # A collapsed learned presence warns even when most landmarks are called present...
    collapsed = SimpleNamespace(present=np.ones(14, dtype=bool), score=np.full(14, 0.3))
    [low] = presence_warning(collapsed, PresenceRule.of(SimpleNamespace(
        presence="learned", shape_base_rule="learned")))
    assert "(mean presence 0.30, presence rule learned)" in low
    # ... a low template NCC does not (it is no probability), nor does the threshold rule's name
    # get a base rule
    threshold = PresenceRule.of(SimpleNamespace(presence="threshold", shape_base_rule="learned"))
    assert presence_warning(collapsed, on_template) == []
    assert str(threshold) == "threshold" and not threshold.scores_probability
