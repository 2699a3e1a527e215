"""`silr report` on hand-made evaluations whose Table 2 is known in advance."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from silr.core.anatomy import LANDMARK_NAMES, LEFT_HEMIPELVIS, NUM_LANDMARKS
from silr.core.errors import DataError
from silr.core.io import write_json
from silr.core.params import params_from_dict
from silr.data import deepfluoro, processed
from silr.data.splits import folds_to_json, make_folds
from silr.evaluation import presence, results
from silr.inference import predictor
from silr.stages import report

SPECIMENS = (1, 2, 3)
FRAMES = 2
LOSSES = ("proposed", "mse")


def write_data(path: Path) -> dict[int, processed.SpecimenFrames]:
    """3 specimens x 2 frames; landmarks on a diagonal, ASIS-r of frame 1 outside the frame."""
    rng = np.random.default_rng(0)
    specimens = {}
    for s in SPECIMENS:
        labels = np.zeros((FRAMES, 180, 180), np.uint8)
        labels[:, 40:100, 40:100] = LEFT_HEMIPELVIS
        landmarks = np.stack(
            [
                np.stack([np.arange(NUM_LANDMARKS) * 10.0 + 20, np.full(NUM_LANDMARKS, 90.0)], -1)
                for _ in range(FRAMES)
            ]
        )
        landmarks[1, LANDMARK_NAMES.index("ASIS-r")] = (-12.0, 90.0)
        images = rng.uniform(1.0, 2.0, (FRAMES, 180, 180)).astype(np.float32)
        specimens[s] = processed.SpecimenFrames(s, images, labels, landmarks)
    processed.write_processed(
        path,
        specimens.values(),
        {deepfluoro.ATTR_DATA_KIND: "synthetic", deepfluoro.ATTR_SOURCE: "test phantom"},
    )
    return specimens


def offset_for(loss: str, specimen: int) -> np.ndarray:
    # proposed: every prediction 5 px off (3-4-5); mse: `specimen` px off along x.
    return np.array([3.0, 4.0]) if loss == "proposed" else np.array([float(specimen), 0.0])


def write_evaluations(metrics_dir: Path, specimens: dict[int, processed.SpecimenFrames]) -> None:
    for loss in LOSSES:
        for fold in SPECIMENS:  # fold k tests specimen k
            spec = specimens[fold]
            predicted_labels = (
                spec.labels.copy() if loss == "proposed" else np.zeros_like(spec.labels)
            )
            predicted = predictor.FramePredictions(
                xy=spec.landmarks_xy + offset_for(loss, fold),
                present=np.ones((FRAMES, NUM_LANDMARKS), bool),
                score=np.full((FRAMES, NUM_LANDMARKS), 0.9),
                threshold_score=np.full((FRAMES, NUM_LANDMARKS), 0.9),
                visibility_hat=np.ones((FRAMES, NUM_LANDMARKS)),
                labels=predicted_labels,
            )
            table = results.predictions_table(
                loss=loss,
                fold=fold,
                specimens=[fold] * FRAMES,
                frame_indices=list(range(FRAMES)),
                gt_xy=spec.landmarks_xy,
                predicted=predicted,
                frame_size=(180, 180),
            )
            paths = results.output_paths(metrics_dir, loss, fold)
            results.write_predictions_csv(paths.predictions, table)
            results.write_label_maps(
                paths.segmentation,
                specimens=[fold] * FRAMES,
                frame_indices=list(range(FRAMES)),
                labels=predicted_labels,
            )
            # What evaluate records of the heatmaps' meaning and presence: here mse stands in for a
            # shape-only (NCC) loss decoded by the threshold rule, which does not apply to it.
            kind = "shape" if loss == "mse" else "logit"
            rules = presence.presence_rules_of(
                {"kind": kind, "presence_threshold": 0.5, "template_ncc": 0.9}
            )
            write_json(
                paths.fold_metrics,
                {
                    "heatmap_kind": kind,
                    "presence_rule": "threshold",
                    "presence": {} if kind == "logit" else None,
                    "presence_rules": rules,
                },
            )


def write_dvclive(live_dir: Path) -> None:
    """dvclive's layout: plots/metrics/<name>.tsv with timestamp, step and the value column."""
    for loss in LOSSES:
        for fold in SPECIMENS:
            metrics_dir = live_dir / loss / f"fold{fold}" / "plots" / "metrics"
            (metrics_dir / "train").mkdir(parents=True)
            (metrics_dir / "val").mkdir()
            (metrics_dir / "train" / "loss.tsv").write_text(
                "timestamp\tstep\tloss\n"
                + "".join(f"{1000 + s}\t{s}\t{fold * 10 - s}\n" for s in range(3))
            )
            (metrics_dir / "val" / "error_px.tsv").write_text(
                f"timestamp\tstep\terror_px\n1\t1\t{fold}.5\n"
            )
    # A run whose logs are missing contributes no rows (mse fold 3).
    for tsv in (live_dir / "mse" / "fold3").rglob("*.tsv"):
        tsv.unlink()


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    data_path = root / "ds_8x.h5"
    specimens = write_data(data_path)
    write_evaluations(root / "metrics", specimens)
    write_dvclive(root / "dvclive")
    params = params_from_dict(
        {
            "study": {"losses": list(LOSSES), "folds": list(SPECIMENS)},
            "train": {"epochs": 3},
            "model": {"backbone": "tiny"},
        }
    )
    folds = make_folds({s: FRAMES for s in SPECIMENS}, val_fraction=0.0, seed=0)
    write_json(
        root / "folds.json",
        folds_to_json(
            folds,
            data=str(data_path),
            val_fraction=0.0,
            seed=0,
            frames_per_specimen={s: FRAMES for s in SPECIMENS},
        ),
    )
    summary = report.run(
        params,
        metrics_dir=root / "metrics",
        plots_dir=root / "plots",
        data_path=data_path,
        live_dir=root / "dvclive",
        folds_path=root / "folds.json",
    )
    return root, params, data_path, summary


def test_training_curves_are_fold_means_per_loss(reported):
    root, _, _, _ = reported
    train_loss = pd.read_csv(root / "metrics" / "curves" / "train_loss.csv")
    assert list(train_loss.columns) == ["epoch", "proposed", "mse"]
    assert train_loss["epoch"].tolist() == [
        1,
        2,
        3,
    ]  # epochs count from 1, as the training log does
    # proposed: folds 1-3 give 10 - s, 20 - s, 30 - s -> mean 20 - s; mse: folds 1-2 only -> 15 - s.
    assert train_loss["proposed"].tolist() == [20.0, 19.0, 18.0]
    assert train_loss["mse"].tolist() == [15.0, 14.0, 13.0]
    val = pd.read_csv(root / "metrics" / "curves" / "val_error_px.csv")
    assert val.to_dict("list") == {"epoch": [2], "proposed": [2.5], "mse": [2.0]}


def test_table2_has_the_known_errors(reported):
    _, _, _, summary = reported
    proposed, mse = summary["table2"]["proposed"], summary["table2"]["mse"]
    assert proposed["per_specimen_px"] == {"1": 5.0, "2": 5.0, "3": 5.0}
    assert proposed["mean_px"] == 5.0 and proposed["std_px"] == 0.0
    assert mse["per_specimen_px"] == {"1": 1.0, "2": 2.0, "3": 3.0}
    assert mse["mean_px"] == 2.0
    assert mse["std_px"] == pytest.approx(np.sqrt(2 / 3), abs=1e-6)  # ddof = 0
    assert mse["mean_mm"] == pytest.approx(2.0 * 8 * 0.194, abs=1e-6)  # spacing of the 8x file
    # 27 in-frame landmarks per specimen (one of 28 lies outside), all found present.
    assert proposed["pooled"]["landmarks_in_frame"] == 81
    assert proposed["pooled"]["presence"] == {
        "true_positive": 81,
        "false_positive": 3,
        "false_negative": 0,
        "true_negative": 0,
    }
    assert proposed["pooled"]["visibility_accuracy"] == pytest.approx(81 / 84, abs=1e-6)
    # A loss whose heatmaps have no presence (NCC's kind) reports none.
    assert mse["pooled"]["presence"] is None and mse["pooled"]["visibility_accuracy"] is None


def test_dvc_metrics_are_one_small_file_per_loss_and_baseline(reported):
    root, _, _, details = reported
    files = sorted((root / "metrics" / "summary").glob("*.json"))
    assert [f.stem for f in files] == [
        "baseline_frame_centre",
        "baseline_mean_shape",
        "mse",
        "proposed",
    ]
    compact = {f.stem: json.loads(f.read_text()) for f in files}
    # What each number covers: 3 folds, 1 training seed, 6 test frames.
    coverage = {"n_folds": 3, "n_seeds": 1, "n_frames": 6}
    assert compact["proposed"] == {
        "mean_px": 5.0,
        "std_px": 0.0,
        "mean_mm": pytest.approx(5.0 * 8 * 0.194),
        "dice": 1.0,
        **coverage,
    }
    # Dice: the mean over the bones that any frame defines (here only the left hemipelvis).
    assert compact["mse"]["dice"] == 0.0 and compact["mse"]["mean_px"] == 2.0
    assert compact["baseline_mean_shape"] == {
        "mean_px": 0.0,
        "std_px": 0.0,
        "mean_mm": 0.0,
        **coverage,
    }
    assert (
        compact["baseline_frame_centre"]["mean_px"]
        == details["baselines"]["frame_centre"]["mean_px"]
    )
    # `dvc metrics show` prints one row per file and one column per key: a screen, not 160 columns.
    assert {key for entry in compact.values() for key in entry} == {
        "mean_px",
        "std_px",
        "mean_mm",
        "dice",
        *coverage,
    }
    assert sum(len(entry) for entry in compact.values()) <= 4 * 8
    # The rest, the paper's numbers included, is in details.json, which is not a DVC metric.
    assert (
        json.loads((root / "metrics" / "details.json").read_text())["paper_table2"]["ncc"][
            "mean_px"
        ]
        == 38.43
    )
    dvc_yaml = (Path(__file__).parents[1] / "dvc.yaml").read_text()
    metrics_block = dvc_yaml.split("    metrics:\n", 1)[1].split("\n\n", 1)[0]
    assert "metrics/summary:" in metrics_block and "details.json" not in metrics_block


def test_a_loss_dropped_from_the_study_leaves_no_metric_file(reported, tmp_path):
    root, params, data_path, _ = reported
    stale = root / "metrics" / "summary" / "ncc.json"
    stale.write_text("{}\n")
    report.run(
        params,
        metrics_dir=root / "metrics",
        plots_dir=tmp_path / "plots",
        data_path=data_path,
        live_dir=root / "dvclive",
        folds_path=root / "folds.json",
    )
    assert not stale.exists()


def test_baselines_are_scored_like_a_loss(reported):
    _, _, _, summary = reported
    # Every frame has the same landmarks (ASIS-r of frame 1 out of frame): the mean shape over
    # the training frames is the truth itself, so it is exactly right.
    mean_shape = summary["baselines"]["mean_shape"]
    assert (
        mean_shape["per_specimen_px"] == {"1": 0.0, "2": 0.0, "3": 0.0}
        and mean_shape["mean_px"] == 0.0
    )
    # Frame centre (89.5, 89.5) against landmarks at (20 + 10 i, 90): 13 landmarks twice, ASIS-r
    # once.
    distances = np.hypot(20 + 10 * np.arange(NUM_LANDMARKS) - 89.5, 0.5)
    counted = np.concatenate([distances, distances[:-1]])
    centre = summary["baselines"]["frame_centre"]
    assert centre["per_specimen_px"]["2"] == pytest.approx(counted.mean(), abs=1e-6)
    assert centre["std_px"] == 0.0 and set(centre) >= {"per_specimen_mm", "mean_mm", "pooled"}
    # Neither loss beats a perfect guess, and the report says so.
    assert summary["not_beating_mean_shape"] == ["proposed", "mse"]


def test_table2_is_recomputable_from_the_csvs_with_pandas(reported):
    root, _, _, summary = reported
    csvs = sorted((root / "metrics" / "predictions").glob("*/fold*.csv"))
    assert len(csvs) == len(LOSSES) * len(SPECIMENS)
    rows = pd.concat(map(pd.read_csv, csvs))
    in_frame = rows[rows["gt_in_frame"] == 1]
    per_specimen = in_frame.groupby(["loss", "specimen"])["error_px"].mean()
    for loss in LOSSES:
        means = per_specimen[loss]
        entry = summary["table2"][loss]
        assert entry["per_specimen_px"] == {
            str(s): pytest.approx(v, abs=1e-6) for s, v in means.items()
        }
        assert entry["mean_px"] == pytest.approx(means.mean(), abs=1e-6)
        assert entry["std_px"] == pytest.approx(means.std(ddof=0), abs=1e-6)
        pooled = in_frame.loc[in_frame["loss"] == loss, "error_px"]
        assert entry["pooled"]["mean_px"] == pytest.approx(pooled.mean(), abs=1e-6)
        assert entry["pooled"]["median_px"] == pytest.approx(pooled.median(), abs=1e-6)


def test_dice_from_the_label_maps(reported):
    _, _, _, summary = reported
    assert summary["segmentation_dice"]["proposed"]["left hemipelvis"] == {"mean": 1.0, "frames": 6}
    assert summary["segmentation_dice"]["mse"]["left hemipelvis"] == {"mean": 0.0, "frames": 6}
    assert summary["segmentation_dice"]["proposed"]["vertebrae"] == {"mean": None, "frames": 0}


def test_dataset_and_paper_keys(reported):
    _, _, _, summary = reported
    dataset = summary["dataset"]
    assert dataset["kind"] == "synthetic" and dataset["source"] == "test phantom"
    assert (dataset["specimens"], dataset["frames"], dataset["test_frames"]) == (3, 6, 6)
    assert dataset["settings"] == {
        "backbone": "tiny",
        "epochs": 3,
        "losses": list(LOSSES),
        "folds": [1, 2, 3],
    }
    assert summary["paper_table2"]["ncc"]["mean_px"] == 38.43
    assert summary["paper_table2"]["proposed"]["per_specimen_px"]["6"] == 18.28


def test_presence_and_consistency_tables_follow_table2(reported):
    root, _, _, summary = reported
    text = (root / "metrics" / "table2.md").read_text()
    presence = text.split("## Presence")[1].split("## Anatomical consistency")[0]
    rows = [
        line
        for line in presence.splitlines()
        if line.startswith("| Proposed") or line.startswith("| MSE")
    ]
    # proposed: threshold (in force) and template; mse (a shape map here): template only.
    assert [row.split("|")[2].strip() for row in rows] == [
        "threshold (in force)",
        "template",
        "template",
    ]
    assert (
        summary["presence"]["proposed"]["rule"] == "threshold"
        and summary["presence"]["mse"]["rule"] is None
    )
    # Every prediction is called present at score 0.9: no absent landmark is found.
    assert summary["presence"]["proposed"]["by_rule"]["threshold"]["absent_recall"] == 0.0
    assert (
        "## Anatomical consistency" in text
        and "| Proposed |" in text.split("## Anatomical consistency")[1]
    )


def test_table2_markdown_has_the_papers_layout(reported):
    root, _, _, _ = reported
    text = (root / "metrics" / "table2.md").read_text()
    table2 = text.split("## Paired differences")[0]
    lines = [line for line in table2.splitlines() if line.startswith("|")]
    assert lines[0] == (
        "| Test specimen | Proposed (ours) | MSE (ours) | Frame centre (baseline) | "
        "Mean shape (baseline) | Proposed (paper) | MSE (paper) |"
    )
    assert [line.split("|")[1].strip() for line in lines[2:]] == [
        "6",
        "5",
        "4",
        "3",
        "2",
        "1",
        "Mean ± Std",
    ]
    assert lines[2] == "| 6 | – | – | – | – | 18.28 | 32.26 |"  # fold 6 not evaluated here
    assert lines[7].startswith("| 1 | 5.00 | 1.00 | ") and lines[7].endswith(
        " | 0.00 | 6.76 | 17.22 |"
    )
    assert lines[8].startswith("| Mean ± Std | 5.00 ± 0.00 | 2.00 ± 0.82 | ")
    assert "the synthetic phantom (test phantom), 3 specimens, 6 frames" in text
    assert "**Not better than the mean-shape baseline (0.00 px): Proposed, MSE.**" in text


def test_per_specimen_csv_and_plots(reported):
    root, _, _, _ = reported
    per_specimen = pd.read_csv(root / "metrics" / "per_specimen.csv")
    assert list(per_specimen.columns) == ["loss", "specimen", "specimen_loss", "mean_px", "mean_mm"]
    assert per_specimen[per_specimen["specimen"] == 1]["specimen_loss"].tolist() == [
        "specimen 1 / Frame centre (baseline)",
        "specimen 1 / Mean shape (baseline)",
        "specimen 1 / MSE",
        "specimen 1 / Proposed",
    ]
    assert per_specimen.set_index(["loss", "specimen"]).loc[("mse", 3), "mean_px"] == 3.0
    for name in report.PLOT_NAMES:
        png = (root / "plots" / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000, name


def test_outputs_are_byte_stable(reported, tmp_path):
    root, params, data_path, _ = reported
    before = {
        name: (root / "metrics" / name).read_bytes()
        for name in (
            "summary/mse.json",
            "details.json",
            "table2.md",
            "per_specimen.csv",
            "curves/train_loss.csv",
        )
    }
    assert json.loads(before["summary/mse.json"])["mean_px"] == 2.0
    report.run(
        params,
        metrics_dir=root / "metrics",
        plots_dir=tmp_path / "plots",
        data_path=data_path,
        live_dir=root / "dvclive",
        folds_path=root / "folds.json",
    )
    for name, content in before.items():
        assert (root / "metrics" / name).read_bytes() == content, name
    assert (root / "plots" / "figure1.png").read_bytes() == (
        tmp_path / "plots" / "figure1.png"
    ).read_bytes()


def test_missing_evaluation_names_the_stage(reported, tmp_path):
    root, params, data_path, _ = reported
    metrics_dir = tmp_path / "metrics"
    (metrics_dir / "predictions" / "proposed").mkdir(parents=True)
    with pytest.raises(DataError, match=r"run `dvc repro evaluate@proposed-1` first"):
        report.run(
            params,
            metrics_dir=metrics_dir,
            plots_dir=tmp_path / "plots",
            data_path=data_path,
            folds_path=root / "folds.json",
        )


# ------------------------------------------------------------------ the figures


@pytest.fixture
def figures(reported, monkeypatch, tmp_path):
    """Every Figure `silr report` saves, by file name."""
    from silr.evaluation import plots

    root, params, data_path, _ = reported
    saved = {}
    monkeypatch.setattr(
        plots, "save_png", lambda figure, path: saved.__setitem__(Path(path).name, figure)
    )
    report.run(
        params,
        metrics_dir=root / "metrics",
        plots_dir=tmp_path / "plots",
        data_path=data_path,
        live_dir=root / "dvclive",
        folds_path=root / "folds.json",
    )
    assert sorted(saved) == sorted(report.PLOT_NAMES)
    return saved


def test_every_figure_says_what_data_it_shows(figures):
    for name, figure in figures.items():
        title = figure.get_suptitle()
        assert "Data: the synthetic phantom (simulated images, not patient data)" in title.replace(
            "\n", " "
        ), name


def _error_table(errors_by_loss: dict[str, list[float]], specimen: int = 1) -> pd.DataFrame:
    rows = [
        {
            "loss": loss,
            "specimen": specimen,
            "frame": 0,
            "landmark": LANDMARK_NAMES[i % NUM_LANDMARKS],
            "gt_in_frame": 1,
            "error_px": error,
        }
        for loss, errors in errors_by_loss.items()
        for i, error in enumerate(errors)
    ]
    return pd.DataFrame(rows)


def test_per_specimen_error_bars_never_go_below_zero(figures):
    from silr.evaluation import plots

    # Mean 7.5, SD 13: a mean ± SD bar would reach -5.5 px; the interquartile range is 0..7.5.
    figure = plots.per_specimen_errors(
        _error_table({"proposed": [0, 0, 0, 30], "mse": [5, 5, 5, 5]}),
        ["proposed", "mse"],
        source="Data: x",
    )
    axes = figure.axes[0]
    bars = sorted(
        (segment[:, 1].min(), segment[:, 1].max())
        for collection in axes.collections
        for segment in collection.get_segments()
    )
    assert bars == [(0.0, 7.5), (5.0, 5.0)]
    assert axes.get_ylim()[0] == 0.0
    for name in ("per_specimen_errors.png", "per_landmark_errors.png"):
        assert figures[name].axes[0].get_ylim()[0] == 0.0, name
    # The legend is the figure's, outside the data axes.
    assert figure.legends and not axes.get_legend()


def test_cumulative_errors_show_0_to_20_mm_and_label_thresholds_without_overlap(figures):
    from silr.evaluation import plots

    ax = figures["cumulative_errors.png"].axes[0]
    assert ax.get_xlim() == (0.0, plots.CUMULATIVE_XMAX_MM) == (0.0, 20.0)
    figure = plots.cumulative_errors(
        _error_table({"proposed": [1.0, 2.0, 3.0], "mean_shape": [9.0, 12.0]}),
        ["proposed", "mean_shape"],
        1.552,
        (2.0, 2.5, 4.0, 8.0, 50.0),
    )
    ax = figure.axes[0]
    assert sorted(line.get_xdata()[0] for line in ax.lines if line.get_linestyle() == ":") == [
        2.0,
        2.5,
        4.0,
        8.0,
    ]
    assert [
        line.get_linestyle() for line in ax.lines if line.get_label().startswith("Mean shape")
    ] == ["--"]
    top = next(child for child in ax.get_children() if type(child).__name__ == "SecondaryAxis")
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(figure).get_renderer()
    figure.draw(renderer)
    boxes = [
        label.get_window_extent(renderer) for label in top.get_xticklabels() if label.get_text()
    ]
    assert [label.get_text() for label in top.get_xticklabels()] == ["2", "4", "8"]
    assert all(not a.overlaps(b) for a, b in zip(boxes, boxes[1:]))


def test_training_curves_have_one_panel_per_loss_and_integer_epochs(figures):
    figure = figures["training_curves.png"]
    data_axes = [ax for ax in figure.axes if ax.lines]
    assert [ax.get_title() for ax in figure.axes[:2]] == ["Proposed", "MSE"]
    assert len(figure.axes) == 2 * len(LOSSES)  # rows: training loss, validation error
    for ax in figure.axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks)
    # dvclive's steps 0, 1, 2 are epochs 1, 2, 3.
    assert min(min(line.get_xdata()) for ax in data_axes for line in ax.lines) == 1


def test_figure1_draws_every_prediction_absent_ones_with_their_own_marker(reported):
    from silr.evaluation import plots

    root, _, data_path, _ = reported
    table = pd.concat(
        [pd.read_csv(root / "metrics" / "predictions" / loss / "fold1.csv") for loss in LOSSES]
    )
    table = table[table["frame"] == 0].copy()
    table.loc[(table["loss"] == "mse") & (table.index % 2 == 0), "pred_present"] = 0
    absent = int((table["pred_present"] == 0).sum())
    assert absent > 0
    images = {1: processed.read_processed(data_path).specimens[1].images[0]}
    figure = plots.figure1(images, table, list(LOSSES), source="Data: x")
    mse_axes = figure.axes[1]
    drawn = {"x": 0, "s": 0}
    for collection in mse_axes.collections:
        count = len(collection.get_offsets())
        facecolors = collection.get_facecolors()
        if len(facecolors) == 0:  # hollow: the absent predictions
            drawn["s"] += count
        elif tuple(np.round(facecolors[0][:3], 2)) == (1.0, 0.13, 0.13):
            drawn["x"] += count
    assert drawn == {"x": NUM_LANDMARKS - absent, "s": absent}
    assert "predicted absent" in mse_axes.get_xlabel()
    labels = [text.get_text() for text in figure.legends[0].get_texts()]
    assert labels == [
        "ground truth (in frame)",
        "prediction, present",
        "prediction, absent (still scored)",
    ]


def test_figure1_says_presence_is_not_defined_for_shape_only_losses(reported):
    from silr.evaluation import plots

    root, _, data_path, _ = reported
    table = pd.concat(
        [pd.read_csv(root / "metrics" / "predictions" / loss / "fold1.csv") for loss in LOSSES]
    )
    table = table[table["frame"] == 0].copy()
    table.loc[table["loss"] == "mse", "pred_present"] = (
        0  # an NCC-like loss: its presence means nothing
    )
    images = {1: processed.read_processed(data_path).specimens[1].images[0]}
    figure = plots.figure1(images, table, list(LOSSES), source="Data: x", no_presence=["mse"])
    mse_axes = figure.axes[1]
    hollow = sum(len(c.get_offsets()) for c in mse_axes.collections if len(c.get_facecolors()) == 0)
    assert hollow == 0  # every prediction drawn as a cross, none as "absent"
    assert (
        "presence not defined" in mse_axes.get_xlabel()
        and "predicted absent" not in mse_axes.get_xlabel()
    )
