"""The bad-input catalogue: the real CLI on every kind of bad input, stage by stage.

Each case builds a tiny project (tests/tiny_project.py) or a small full-resolution file
(tests/fullres_writer.py), breaks one thing, runs `silr <stage>` in-process and checks
the failure contract of every stage:

- a non-zero exit status (2, the SilrError status);
- exactly one line on stderr, `silr: error: ...`, naming the file or params key and
  saying what was expected (each case lists the words its message must contain);
- no traceback;
- nothing at the stage's output paths, and no temporary file left beside them.

A few cases also run the installed `silr` executable in a subprocess, to prove the exit
status and the clean stderr of a real process. Read-only outputs are made real for root
too (tests run as root in CI, where chmod does not stop writes): an output path under a
regular file, and a path in /sys, which refuses new files even to root.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from fullres_writer import Specimen, blank_frame, write_fullres  # noqa: E402
from silr import cli  # noqa: E402
from silr.core.anatomy import LANDMARK_NAMES  # noqa: E402
from silr.core.io import TMP_PREFIX, write_json  # noqa: E402
from silr.core.params import load_params  # noqa: E402
from silr.evaluation import results  # noqa: E402
from silr.inference import predictor  # noqa: E402
from silr.model import checkpoint  # noqa: E402
from silr.model.card import ModelCard  # noqa: E402
from silr.model.run_config import params_hash_of  # noqa: E402
from tiny_project import TinyProject, make_project  # noqa: E402

SILR = Path(sys.executable).parent / "silr"
FRAME = "17-1882/projections/001"  # the frame the full-resolution cases break


@dataclass
class Case:
    """A command line, the outputs it must not leave, the words its one-line message must hold."""

    argv: list[str]
    outputs: list[Path]
    expected: list[str]
    scan: list[Path] = field(default_factory=list)  # directories that must hold no temporary file


class World:
    """What a case may break: a tiny project and a full-resolution file, made fresh per test
    when first used."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp

    @functools.cached_property
    def project(self) -> TinyProject:
        return make_project(self.tmp / "project")

    @functools.cached_property
    def fullres(self) -> Path:
        specimens = [
            Specimen(sid, [blank_frame(32), blank_frame(32, rot180=1)])
            for sid in ("17-1882", "18-1109")
        ]
        return write_fullres(self.tmp / "full.h5", specimens)


@pytest.fixture
def world(tmp_path) -> World:
    return World(tmp_path)


def sys_is_read_only() -> bool:
    """/sys refuses new files even to root in containers and on hosts alike; check, do not
    assume."""
    probe = Path("/sys") / f"{TMP_PREFIX}probe"
    try:
        probe.write_bytes(b"")
    except OSError:
        return True
    probe.unlink()
    return False


def check_failure(case: Case, rc: int, out: str, err: str) -> str:
    """The failure contract; returns the message line."""
    lines = err.strip().splitlines()
    assert rc == 2, f"exit status {rc}; stderr:\n{err}"
    assert "Traceback" not in err and "Traceback" not in out, err
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    line = lines[0]
    assert line.startswith("silr: error: "), line
    for text in case.expected:
        assert text in line, f"{text!r} not in {line!r}"
    for output in case.outputs:
        assert not output.exists(), f"{output} was left behind"
    for directory in {o.parent for o in case.outputs} | set(case.scan):
        if directory.is_dir():
            leftovers = [p.name for p in directory.rglob(f"{TMP_PREFIX}*")]
            assert not leftovers, f"temporary files left in {directory}: {leftovers}"
    return line


# ------------------------------------------------------------------ helpers that break things


def fullres_case(w: World, *expected: str) -> Case:
    out = w.tmp / "out" / "ds_8x.h5"
    return Case(
        ["ingest", "--raw", str(w.fullres), "--out", str(out), "--crop", "4", "--downsample", "4"],
        [out],
        [str(w.fullres), *expected],
    )


def edit_fullres(w: World, edit: Callable[[h5py.File], None]) -> None:
    with h5py.File(w.fullres, "r+") as f:
        edit(f)


def replace_dataset(f: h5py.File, name: str, value: np.ndarray) -> None:
    del f[name]
    f[name] = value


def train_case(
    w: World,
    *expected: str,
    fold: int = 1,
    loss: str = "proposed",
    params_changes: dict | None = None,
) -> Case:
    p = w.project
    if params_changes is not None:
        p.write_params(params_changes)
    run = p.models / loss / f"fold{fold}"
    return Case(
        p.argv("train", loss=loss, fold=fold),
        [run / "best.pt", p.resume / loss, p.live / loss],
        list(expected),
        scan=[p.root],
    )


def params_case(w: World, changes: dict, *expected: str) -> Case:
    """Bad params: `silr train` must name params.yaml and the key."""
    return train_case(w, str(w.project.params), *expected, params_changes=changes)


def evaluate_outputs(p: TinyProject, loss: str = "proposed", fold: int = 1) -> list[Path]:
    paths = results.output_paths(p.metrics, loss, fold)
    return [paths.predictions, paths.fold_metrics, paths.segmentation]


def report_outputs(p: TinyProject) -> list[Path]:
    from silr.evaluation.curves import CURVE_FILES
    from silr.stages.report import PLOT_NAMES

    return (
        [
            p.metrics / n
            for n in ("summary/proposed.json", "details.json", "table2.md", "per_specimen.csv")
        ]
        + [p.metrics / "curves" / n for n in CURVE_FILES.values()]
        + [p.plots / n for n in PLOT_NAMES]
    )


def save_tiny_checkpoint(p: TinyProject, *, fold: int = 1, trained_fold: int | None = None) -> Path:
    """A real silr checkpoint of an untrained tiny network at models/proposed/fold<fold>/best.pt."""
    from silr.model.network import build_model

    params = load_params(p.params)
    card = ModelCard.for_run(
        params,
        loss_name="proposed",
        fold=trained_fold or fold,
        data_hash="d" * 16,
        params_hash=params_hash_of(params, "proposed"),
        val_score_px=None,
        epoch=1,
    )
    torch.manual_seed(0)
    model = build_model(params.model.backbone, params.model.decoder_channels)
    path = results.checkpoint_path(p.models, "proposed", fold)
    checkpoint.save_checkpoint(path, model, card)
    return path


def write_evaluation(p: TinyProject, fold: int = 1) -> None:
    """A well-formed evaluation of fold `fold` (predictions = truth + 1 px), without a network."""
    from silr.data.processed import read_processed

    data = read_processed(p.processed)
    spec = data.specimens[fold]
    count = spec.images.shape[0]
    predicted = predictor.FramePredictions(
        xy=spec.landmarks_xy + 1.0,
        present=np.ones((count, len(LANDMARK_NAMES)), bool),
        score=np.full((count, len(LANDMARK_NAMES)), 0.9),
        visibility_hat=np.ones((count, len(LANDMARK_NAMES))),
        labels=spec.labels.copy(),
    )
    table = results.predictions_table(
        loss="proposed",
        fold=fold,
        specimens=[fold] * count,
        frame_indices=list(range(count)),
        gt_xy=spec.landmarks_xy,
        predicted=predicted,
        frame_size=(180, 180),
    )
    paths = results.output_paths(p.metrics, "proposed", fold)
    results.write_predictions_csv(paths.predictions, table)
    results.write_label_maps(
        paths.segmentation,
        specimens=[fold] * count,
        frame_indices=list(range(count)),
        labels=predicted.labels,
    )
    write_json(paths.fold_metrics, {"heatmap_kind": "logit"})


# ------------------------------------------------------------------ the catalogue


def synth_specimens_zero(w: World) -> Case:
    out = w.tmp / "synth" / "phantom.h5"
    return Case(
        ["synth", "--out", str(out), "--specimens", "0", "--frames", "1"],
        [out],
        ["synth.specimens", "between 1 and 9999", "got 0"],
    )


def synth_frames_zero(w: World) -> Case:
    out = w.tmp / "synth" / "phantom.h5"
    return Case(
        ["synth", "--out", str(out), "--specimens", "2", "--frames", "0"],
        [out],
        ["synth.frames", ">= 1", "got 0"],
    )


def synth_output_under_a_file(w: World) -> Case:
    (w.tmp / "blocker").write_text("a file where a directory should be")
    out = w.tmp / "blocker" / "phantom.h5"
    return Case(
        ["synth", "--out", str(out), "--specimens", "2", "--frames", "1"],
        [out],
        [str(out), "cannot create directory", "blocker is a file, expected a directory"],
    )


def synth_preview_blocked(w: World) -> Case:
    (w.tmp / "blocker").write_text("")
    out, preview = w.tmp / "synth" / "phantom.h5", w.tmp / "blocker" / "preview.png"
    return Case(
        [
            "synth",
            "--out",
            str(out),
            "--specimens",
            "2",
            "--frames",
            "1",
            "--preview",
            str(preview),
        ],
        [out, preview],
        [str(preview), "cannot create directory"],
    )


def ingest_missing_file(w: World) -> Case:
    w.fullres.unlink()
    return fullres_case(w, "no such file", "silr synth", "data/raw/README.md")


def ingest_empty_file(w: World) -> Case:
    w.fullres.write_bytes(b"")
    return fullres_case(w, "not an HDF5 file", "expected a DeepFluoro .h5 file")


def ingest_truncated_hdf5(w: World) -> Case:
    size = w.fullres.stat().st_size
    with open(w.fullres, "r+b") as f:
        f.truncate(size // 3)
    return fullres_case(w, "truncated or corrupt")


def ingest_not_hdf5(w: World) -> Case:
    w.fullres.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    return fullres_case(w, "not an HDF5 file")


def ingest_missing_group(w: World) -> Case:
    edit_fullres(w, lambda f: f.__delitem__(f"{FRAME}/gt-seg"))
    return fullres_case(w, f"missing group {FRAME}/gt-seg")


def ingest_missing_dataset(w: World) -> Case:
    edit_fullres(w, lambda f: f.__delitem__(f"{FRAME}/image/pixels"))
    return fullres_case(w, f"missing dataset {FRAME}/image/pixels")


def ingest_missing_landmark(w: World) -> Case:
    edit_fullres(w, lambda f: f.__delitem__(f"{FRAME}/gt-landmarks/MOF-r"))
    return fullres_case(w, f"{FRAME}/gt-landmarks has no landmark(s) ['MOF-r']")


def ingest_wrong_shape(w: World) -> Case:
    edit_fullres(
        w, lambda f: replace_dataset(f, f"{FRAME}/image/pixels", np.full((30, 32), 6e4, np.float32))
    )
    return fullres_case(w, f"{FRAME}/image/pixels has shape (30, 32), expected (32, 32)")


def ingest_wrong_label_dtype(w: World) -> Case:
    edit_fullres(
        w, lambda f: replace_dataset(f, f"{FRAME}/gt-seg/pixels", np.zeros((32, 32), np.float32))
    )
    return fullres_case(
        w, f"{FRAME}/gt-seg/pixels must hold integer labels 0..6, found dtype float32"
    )


def ingest_text_pixels(w: World) -> Case:
    edit_fullres(
        w, lambda f: replace_dataset(f, f"{FRAME}/image/pixels", np.full((32, 32), b"x", "S1"))
    )
    return fullres_case(w, f"{FRAME}/image/pixels must be numeric")


def ingest_nan_pixel(w: World) -> Case:
    def edit(f):
        f[f"{FRAME}/image/pixels"][4, 9] = np.nan

    edit_fullres(w, edit)
    return fullres_case(
        w, f"{FRAME}/image/pixels has 1 non-finite value(s) (first at index (4, 9))"
    )


def ingest_infinite_pixel(w: World) -> Case:
    def edit(f):
        f[f"{FRAME}/image/pixels"][0, 31] = np.inf

    edit_fullres(w, edit)
    return fullres_case(
        w, f"{FRAME}/image/pixels has 1 non-finite value(s) (first at index (0, 31))"
    )


def ingest_label_above_six(w: World) -> Case:
    def edit(f):
        f[f"{FRAME}/gt-seg/pixels"][2, 2] = 7

    edit_fullres(w, edit)
    return fullres_case(w, f"{FRAME}/gt-seg/pixels has label value(s) [7] outside 0..6")


def ingest_specimen_without_frames(w: World) -> Case:
    def edit(f):
        del f["18-1109/projections/000"], f["18-1109/projections/001"]

    edit_fullres(w, edit)
    return fullres_case(w, "specimen 18-1109 has no frames")


def ingest_output_under_a_file(w: World) -> Case:
    (w.tmp / "blocker").write_text("")
    out = w.tmp / "blocker" / "ds_8x.h5"
    return Case(
        ["ingest", "--raw", str(w.fullres), "--out", str(out), "--crop", "4", "--downsample", "4"],
        [out],
        [str(out), "cannot create directory"],
    )


def folds_of_fullres_file(w: World) -> Case:
    out = w.tmp / "folds.json"
    return Case(
        ["folds", "--data", str(w.fullres), "--out", str(out), "--params", str(w.project.params)],
        [out],
        [str(w.fullres), "expected a preprocessed one", "silr ingest"],
    )


def folds_nan_in_processed(w: World) -> Case:
    with h5py.File(w.project.processed, "r+") as f:
        f["02/projs"][0, 10, 20] = np.nan
    out = w.tmp / "folds.json"
    return Case(
        ["folds", "--data", str(w.project.processed), "--out", str(out)],
        [out],
        [str(w.project.processed), "02/projs has 1 non-finite value(s)"],
    )


def folds_processed_missing_landmark_name(w: World) -> Case:
    with h5py.File(w.project.processed, "r+") as f:
        del f["land-names/land-05"]
    out = w.tmp / "folds.json"
    return Case(
        ["folds", "--data", str(w.project.processed), "--out", str(out)],
        [out],
        [str(w.project.processed), "missing dataset land-names/land-05"],
    )


def folds_non_numeric_val_fraction(w: World) -> Case:
    w.project.write_params({"folds": {"val_fraction": "a tenth"}})
    out = w.tmp / "folds.json"
    return Case(
        [
            "folds",
            "--data",
            str(w.project.processed),
            "--out",
            str(out),
            "--params",
            str(w.project.params),
        ],
        [out],
        [str(w.project.params), "folds.val_fraction must be a finite number", "'a tenth'"],
    )


def train_unknown_loss(w: World) -> Case:
    defined = sorted(load_params(w.project.params).losses.named)
    return train_case(
        w,
        "losses.focal: no such loss in params.yaml",
        "defined: " + ", ".join(defined),
        loss="focal",
    )


def train_unknown_term(w: World) -> Case:
    return train_case(
        w,
        "losses.proposed: unknown term 'focal'",
        "known:",
        params_changes={"losses": {"proposed": {"dice_ce": 1.0, "focal": 2.0}}},
    )


def params_negative_weight(w: World) -> Case:
    return params_case(
        w,
        {"losses": {"proposed": {"dice_ce": 1.0, "kl": -0.1, "visibility": 10.0}}},
        "losses.proposed.kl must be >= 0.0, got -0.1",
    )


def params_non_numeric_weight(w: World) -> Case:
    return params_case(
        w,
        {"losses": {"proposed": {"dice_ce": 1.0, "kl": "heavy", "visibility": 10.0}}},
        "losses.proposed.kl must be a finite number, got 'heavy'",
    )


def params_batch_size_zero(w: World) -> Case:
    return params_case(w, {"train": {"batch_size": 0}}, "train.batch_size must be >= 1, got 0")


def params_epochs_zero(w: World) -> Case:
    return params_case(w, {"train": {"epochs": 0}}, "train.epochs must be >= 1, got 0")


def params_unknown_key(w: World) -> Case:
    return params_case(w, {"train": {"epoch": 3}}, "train: unknown key(s) epoch", "known:")


def params_study_fold_zero(w: World) -> Case:
    return params_case(w, {"study": {"folds": [0, 1]}}, "study.folds[] must be >= 1, got 0")


def params_not_yaml(w: World) -> Case:
    case = train_case(
        w, str(w.project.params), "not valid YAML at line 2, column 6", "expected ',' or '}'"
    )
    w.project.write_params(text="train: {epochs: 1\nmodel: [")
    return case


def train_unknown_backbone(w: World) -> Case:
    return train_case(
        w,
        "model.backbone: unknown backbone 'resnet9000'",
        "known: hrnet_w18_small",
        params_changes={"model": {"backbone": "resnet9000"}},
    )


def train_fold_not_in_data(w: World) -> Case:
    return train_case(w, str(w.project.folds), "no fold 9", "folds: 1, 2, 3", fold=9)


def train_folds_name_missing_frames(w: World) -> Case:
    import json

    document = json.loads(w.project.folds.read_text())
    document["folds"]["1"]["train"].append([2, 5])
    w.project.folds.write_text(json.dumps(document))
    return train_case(
        w,
        str(w.project.folds),
        "fold 1 train names frame [2, 5]",
        "specimen 2 has 1 frames",
        "rerun `silr folds`",
    )


def train_missing_folds_file(w: World) -> Case:
    w.project.folds.unlink()
    return train_case(w, str(w.project.folds), "no such file", "silr folds")


def train_missing_data(w: World) -> Case:
    w.project.processed.unlink()
    return train_case(w, str(w.project.processed), "no such file")


def train_output_under_a_file(w: World) -> Case:
    p = w.project
    p.models.write_text("models is a file here")
    case = train_case(
        w,
        str(p.models / "proposed" / "fold1"),
        "cannot create directory",
        "models is a file, expected a directory",
    )
    case.outputs = [p.live / "proposed"]  # and nothing is trained: no dvclive logs either
    return case


def train_live_dir_under_a_file(w: World) -> Case:
    p = w.project
    p.live.write_text("dvclive is a file here")
    case = train_case(w, str(p.live / "proposed" / "fold1"), "cannot create directory")
    case.outputs = [p.models / "proposed" / "fold1" / "best.pt", p.resume / "proposed"]
    return case


def evaluate_before_train(w: World) -> Case:
    p = w.project
    ckpt = results.checkpoint_path(p.models, "proposed", 1)
    return Case(
        p.argv("evaluate"),
        evaluate_outputs(p),
        [str(ckpt), "no trained model", "train it first"],
        scan=[p.root],
    )


def evaluate_corrupt_checkpoint(w: World) -> Case:
    p = w.project
    ckpt = results.checkpoint_path(p.models, "proposed", 1)
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(np.random.default_rng(0).bytes(4096))
    return Case(
        p.argv("evaluate"),
        evaluate_outputs(p),
        [str(ckpt), "not a readable silr checkpoint"],
        scan=[p.root],
    )


def evaluate_truncated_checkpoint(w: World) -> Case:
    p = w.project
    ckpt = save_tiny_checkpoint(p)
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    return Case(
        p.argv("evaluate"),
        evaluate_outputs(p),
        [str(ckpt), "not a readable silr checkpoint"],
        scan=[p.root],
    )


def evaluate_foreign_checkpoint(w: World) -> Case:
    p = w.project
    ckpt = results.checkpoint_path(p.models, "proposed", 1)
    ckpt.parent.mkdir(parents=True)
    torch.save(
        {"state_dict": {"conv.weight": torch.zeros(2, 2)}, "epoch": 3}, ckpt
    )  # someone else's format
    return Case(
        p.argv("evaluate"),
        evaluate_outputs(p),
        [str(ckpt), "not a silr checkpoint", "expected format 'silr-checkpoint'"],
        scan=[p.root],
    )


def evaluate_checkpoint_of_another_fold(w: World) -> Case:
    p = w.project
    ckpt = save_tiny_checkpoint(p, fold=1, trained_fold=2)
    return Case(
        p.argv("evaluate"),
        evaluate_outputs(p),
        [str(ckpt), "fold 2", "expected loss 'proposed' fold 1"],
        scan=[p.root],
    )


def evaluate_output_blocked(w: World) -> Case:
    p = w.project
    save_tiny_checkpoint(p)
    p.metrics.mkdir()
    (p.metrics / "segmentation").write_text("a file where the label maps' directory should be")
    return Case(
        p.argv("evaluate"),
        evaluate_outputs(p)[:2],
        [str(p.metrics / "segmentation"), "cannot create directory"],
        scan=[p.root],
    )


def report_before_evaluate(w: World) -> Case:
    p = w.project
    missing = results.output_paths(p.metrics, "proposed", 1).predictions
    return Case(
        p.argv("report"),
        report_outputs(p),
        [str(missing), "missing", "dvc repro evaluate@proposed-1"],
        scan=[p.root],
    )


def report_garbage_predictions(w: World) -> Case:
    p = w.project
    write_evaluation(p)
    csv = results.output_paths(p.metrics, "proposed", 1).predictions
    csv.write_text("loss,fold\nproposed,one\n")
    return Case(p.argv("report"), report_outputs(p), [str(csv)], scan=[p.root])


def report_truncated_label_maps(w: World) -> Case:
    p = w.project
    write_evaluation(p)
    npz = results.output_paths(p.metrics, "proposed", 1).segmentation
    npz.write_bytes(npz.read_bytes()[:40])
    return Case(
        p.argv("report"), report_outputs(p), [str(npz), "not a label-map archive"], scan=[p.root]
    )


def report_plots_blocked(w: World) -> Case:
    p = w.project
    write_evaluation(p)
    p.plots.write_text("a file where the plots directory should be")
    return Case(
        p.argv("report"),
        report_outputs(p)[:-6],
        [str(p.plots), "cannot create directory"],
        scan=[p.metrics],
    )


CATALOGUE: dict[str, Callable[[World], Case]] = {
    f.__name__: f
    for f in (
        synth_specimens_zero,
        synth_frames_zero,
        synth_output_under_a_file,
        synth_preview_blocked,
        ingest_missing_file,
        ingest_empty_file,
        ingest_truncated_hdf5,
        ingest_not_hdf5,
        ingest_missing_group,
        ingest_missing_dataset,
        ingest_missing_landmark,
        ingest_wrong_shape,
        ingest_wrong_label_dtype,
        ingest_text_pixels,
        ingest_nan_pixel,
        ingest_infinite_pixel,
        ingest_label_above_six,
        ingest_specimen_without_frames,
        ingest_output_under_a_file,
        folds_of_fullres_file,
        folds_nan_in_processed,
        folds_processed_missing_landmark_name,
        folds_non_numeric_val_fraction,
        train_unknown_loss,
        train_unknown_term,
        params_negative_weight,
        params_non_numeric_weight,
        params_batch_size_zero,
        params_epochs_zero,
        params_unknown_key,
        params_study_fold_zero,
        params_not_yaml,
        train_unknown_backbone,
        train_fold_not_in_data,
        train_folds_name_missing_frames,
        train_missing_folds_file,
        train_missing_data,
        train_output_under_a_file,
        train_live_dir_under_a_file,
        evaluate_before_train,
        evaluate_corrupt_checkpoint,
        evaluate_truncated_checkpoint,
        evaluate_foreign_checkpoint,
        evaluate_checkpoint_of_another_fold,
        evaluate_output_blocked,
        report_before_evaluate,
        report_garbage_predictions,
        report_truncated_label_maps,
        report_plots_blocked,
    )
}


def test_catalogue_covers_every_stage():
    stages = {name.split("_", 1)[0] for name in CATALOGUE}
    assert {"synth", "ingest", "folds", "train", "evaluate", "report", "params"} <= stages
    assert len(CATALOGUE) >= 20


@pytest.mark.parametrize("name", list(CATALOGUE))
def test_bad_input(name, world, capsys):
    case = CATALOGUE[name](world)
    rc = cli.main(case.argv)
    captured = capsys.readouterr()
    check_failure(case, rc, captured.out, captured.err)


# ------------------------------------------------------------------ read-only outputs


@pytest.mark.skipif(
    not Path("/sys").is_dir() or not sys_is_read_only(),
    reason="/sys accepts new files here; the under-a-file cases still cover blocked outputs",
)
@pytest.mark.parametrize("stage", ["synth", "ingest", "folds"])
def test_read_only_directory_even_for_root(stage, world, capsys):
    """/sys refuses new files to every user: a real read-only output directory when tests run
    as root."""
    out = Path("/sys") / f"silr-catalogue-{stage}.out"
    argv = {
        "synth": ["synth", "--out", str(out), "--specimens", "2", "--frames", "1"],
        "ingest": [
            "ingest",
            "--raw",
            str(world.fullres),
            "--out",
            str(out),
            "--crop",
            "4",
            "--downsample",
            "4",
        ],
        "folds": ["folds", "--data", str(world.project.processed), "--out", str(out)],
    }[stage]
    rc = cli.main(argv)
    captured = capsys.readouterr()
    line = check_failure(Case(argv, [out], [str(out)]), rc, captured.out, captured.err)
    assert (
        "Permission denied" in line or "not writable" in line or "does not accept new files" in line
    ), line


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0,
    reason="root writes into a chmod 0555 directory; test_read_only_directory_even_for_root "
    "covers the case for root",
)
def test_chmod_read_only_directory(world, capsys):
    locked = world.tmp / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        out = locked / "folds.json"
        argv = ["folds", "--data", str(world.project.processed), "--out", str(out)]
        rc = cli.main(argv)
        captured = capsys.readouterr()
        check_failure(Case(argv, [out], [str(out), "not writable"]), rc, captured.out, captured.err)
    finally:
        locked.chmod(0o755)


# ------------------------------------------------------------------ real processes


@pytest.mark.parametrize(
    "name",
    ["ingest_truncated_hdf5", "folds_non_numeric_val_fraction", "evaluate_corrupt_checkpoint"],
)
def test_installed_command_exit_status_and_clean_stderr(name, world):
    case = CATALOGUE[name](world)
    result = subprocess.run(
        [str(SILR), *case.argv],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=world.tmp,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert result.stdout == ""
    check_failure(case, result.returncode, result.stdout, result.stderr)
    assert result.stderr.count("\n") == 1 and result.stderr.endswith("\n")


def test_existing_output_survives_a_failed_run(world, capsys):
    """A failed rerun leaves the previous complete output untouched (not deleted, not
    half-replaced)."""
    out = world.tmp / "out" / "ds_8x.h5"
    assert (
        cli.main(
            [
                "ingest",
                "--raw",
                str(world.fullres),
                "--out",
                str(out),
                "--crop",
                "4",
                "--downsample",
                "4",
            ]
        )
        == 0
    )
    before = out.read_bytes()
    edit_fullres(world, lambda f: f.__delitem__(f"{FRAME}/gt-seg"))
    capsys.readouterr()
    rc = cli.main(
        [
            "ingest",
            "--raw",
            str(world.fullres),
            "--out",
            str(out),
            "--crop",
            "4",
            "--downsample",
            "4",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "missing group" in err
    assert out.read_bytes() == before
    assert not list(out.parent.glob(f"{TMP_PREFIX}*"))
