"""Stage `report`: Table 2, Figure 1 and the summary plots from every evaluation.

  silr report

Reads `metrics/predictions/<loss>/fold<k>.csv` and `metrics/segmentation/<loss>/fold<k>.npz`
for every (loss, fold) of `study:` in params.yaml, and the processed data (frames, true
labels, pixel spacing, what data it is). Writes
- `metrics/summary/<name>.json`, the DVC metrics (`dvc metrics show`, `dvc exp show`), one
  file per loss and per baseline (`baseline_frame_centre`, `baseline_mean_shape`):
  `mean_px`, `std_px`, `mean_mm`, and for a loss `dice` (mean over bones); `dvc metrics
  show` prints them as one row per file;
- `metrics/details.json` (a plain output, not a DVC metric; silr.evaluation.summary): `table2`
  (per loss: per-specimen mean error, mean and std over specimens (ddof = 0), the same in mm,
  pooled statistics, presence counts and visibility accuracy: all recomputable from the
  predictions CSVs), `baselines` (the trivial predictors of silr.evaluation.baselines, frame
  centre and mean shape, scored per held-out specimen exactly as a loss, each entry in the form
  of a `table2` entry), `not_beating_mean_shape` (the losses whose mean is not below the
  mean-shape baseline's), `segmentation_dice` (per loss and bone, from the label maps),
  `dataset` (data kind, source, counts, settings) and `paper_table2` (the paper's numbers);
- `metrics/table2.md` (silr.evaluation.tables): the paper's table layout, our numbers and the
  baselines beside the paper's, and the losses that do not beat the mean shape;
- `metrics/per_specimen.csv`: loss, specimen, specimen_loss, mean_px, mean_mm (for `dvc plots`);
- `metrics/curves/<metric>.csv` for the training loss and the validation error: epoch, then
  one column per loss (mean over folds) from the dvclive logs, for `dvc plots` (whose
  definitions cannot enumerate the dvclive folders of every (loss, fold) themselves);
- `plots/figure1.png`, `plots/per_specimen_errors.png`, `plots/cumulative_errors.png`,
  `plots/per_landmark_errors.png`, `plots/segmentation.png`, `plots/training_curves.png`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from silr.core.errors import DataError
from silr.core.io import ensure_writable, write_json, write_text
from silr.core.params import DEFAULT_PARAMS_FILE, Params, load_params
from silr.data.processed import ProcessedData, read_processed
from silr.data.splits import Fold, load_folds
from silr.evaluation import baselines, extra_plots, metrics, plots, summary
from silr.evaluation.curves import CURVE_FILES, curves_wide, read_training_curves
from silr.evaluation.results import (
    DEFAULT_FOLDS,
    DEFAULT_METRICS,
    output_paths,
    read_label_maps,
    read_predictions_csv,
    write_csv,
)
from silr.evaluation.tables import report_markdown, table2_markdown

__all__ = [
    "DEFAULT_LIVE", "DEFAULT_PLOTS", "PLOT_NAMES", "ROBUSTNESS_PLOT", "SUMMARY_DIR",
    "add_arguments", "build_figures", "load_predictions", "main", "run", "study_seeds",
    "write_plots",
]

DEFAULT_PLOTS = "plots"
DEFAULT_LIVE = "dvclive"
# Under --metrics: the DVC metrics, one small JSON file per loss and baseline.
SUMMARY_DIR = "summary"
PLOT_NAMES = ("figure1.png", "per_specimen_errors.png", "cumulative_errors.png",
              "per_landmark_errors.png", "segmentation.png", "training_curves.png")
# Drawn where the robustness stage has run for the study (dvc.yaml always runs it).
ROBUSTNESS_PLOT = "robustness.png"


# ------------------------------------------------------------------ reading

def study_seeds(params: Params) -> list[int | None]:
    """The seeds of the study as evaluation names: None for train.seed (the default runs), then
    every extra seed of study.seeds that is not train.seed again (that one is the default run)."""
    return [None, *(seed for seed in params.study.seeds if seed != params.train.seed)]


def load_predictions(metrics_dir: str | Path, losses: Sequence[str], folds: Sequence[int],
                     seeds: Sequence[int | None] = (None,)) -> pd.DataFrame:
    """Every (loss, fold, seed) predictions CSV, concatenated; DataError naming the missing
    evaluation."""
    tables = []
    for loss in losses:
        for fold, seed in ((f, s) for f in folds for s in seeds):
            path = output_paths(metrics_dir, loss, fold, seed).predictions
            if not path.is_file():
                stage = (f"evaluate@{loss}-{fold}" if seed is None
                         else f"evaluate_seed@{loss}-{fold}-{seed}")
                raise DataError(f"{path}: missing; run `dvc repro {stage}` first")
            table = read_predictions_csv(path)
            if set(table["loss"]) != {loss} or set(table["fold"]) != {fold}:
                raise DataError(f"{path}: holds loss {sorted(set(table['loss']))} fold "
                                f"{sorted(set(table['fold']))}, expected loss {loss!r} fold {fold}")
            tables.append(table)
    return pd.concat(tables, ignore_index=True)


def _read_study(params: Params, metrics_dir: Path, data_path: str | Path,
                folds_path: str | Path) -> tuple[pd.DataFrame, ProcessedData, dict[int, Fold]]:
    """The study's predictions, the processed data and the folds; DataError for a missing one."""
    losses, folds = list(params.study.losses), list(params.study.folds)
    table = load_predictions(metrics_dir, losses, folds, study_seeds(params))
    data = read_processed(data_path)
    fold_splits = load_folds(folds_path, data)
    missing = [k for k in folds if k not in fold_splits]
    if missing:
        raise DataError(f"{folds_path}: no fold(s) {missing} (study.folds asks for them)")
    return table, data, fold_splits


# ------------------------------------------------------------------ figures

def _segmentation_figure(showcase: Mapping[int, int], data: ProcessedData, metrics_dir: Path,
                         params: Params, source: str) -> Figure:
    """The first loss of the study (the proposed one by default) on the Figure 1 frames; only a
    loss with a segmentation term trains the masks."""
    seg_loss = params.study.losses[0]
    frames_shown, truth, predicted, titles = [], [], [], []
    for fold in params.study.folds:
        maps = read_label_maps(output_paths(metrics_dir, seg_loss, fold).segmentation)
        for index, (s, f) in enumerate(zip(maps["specimen"], maps["frame"])):
            if showcase.get(int(s)) == int(f):
                frames_shown.append(data.specimens[int(s)].images[int(f)])
                truth.append(data.specimens[int(s)].labels[int(f)])
                predicted.append(maps["labels"][index])
                titles.append(f"specimen {int(s)}, frame {int(f)}")
    return extra_plots.segmentation_comparison(frames_shown, truth, predicted, titles,
                                               metrics.loss_title(seg_loss), source=source)


def build_figures(table: pd.DataFrame, data: ProcessedData, metrics_dir: Path, params: Params,
                  curves: pd.DataFrame, baseline_table: pd.DataFrame | None = None, *,
                  source: str = "", no_presence: Sequence[str] = ()) -> dict[str, Figure]:
    """Every figure of the report, by file name (silr.evaluation.plots and extra_plots draw,
    this function picks the frames)."""
    losses = list(params.study.losses)
    showcase = metrics.showcase_frames(table)
    images = {s: data.specimens[s].images[f] for s, f in showcase.items()}
    shown_rows = table[[showcase.get(int(s)) == int(f)
                        for s, f in zip(table["specimen"], table["frame"])]]
    with_baselines = (table if baseline_table is None
                      else pd.concat([table, baseline_table], ignore_index=True))
    named = [*losses, *(() if baseline_table is None else baselines.BASELINES)]
    figures = {
        "figure1.png": plots.figure1(images, shown_rows, losses, source=source,
                                     no_presence=no_presence),
        "per_specimen_errors.png": plots.per_specimen_errors(with_baselines, named, source=source),
        "cumulative_errors.png": plots.cumulative_errors(with_baselines, named,
                                                         data.pixel_spacing_mm,
                                                         params.evaluate.success_mm,
                                                         source=source),
        "per_landmark_errors.png": plots.per_landmark_errors(table, losses, source=source),
        "training_curves.png": extra_plots.training_curves(curves, losses, list(CURVE_FILES),
                                                           source=source),
    }
    figures["segmentation.png"] = _segmentation_figure(showcase, data, metrics_dir, params, source)
    return figures


def write_plots(plots_dir: Path, table: pd.DataFrame, data: ProcessedData, metrics_dir: Path,
                params: Params, curves: pd.DataFrame, baseline_table: pd.DataFrame | None = None,
                *, source: str = "", no_presence: Sequence[str] = ()) -> None:
    """Every PNG of the report."""
    for name, figure in build_figures(table, data, metrics_dir, params, curves, baseline_table,
                                      source=source, no_presence=no_presence).items():
        plots.save_png(figure, plots_dir / name)


# ------------------------------------------------------------------ writing

def _outputs(metrics_dir: Path, plots_dir: Path, losses: Sequence[str]) -> list[Path]:
    """Every file the report writes."""
    return [*(metrics_dir / name for name in ("details.json", "table2.md", "per_specimen.csv")),
            *(metrics_dir / SUMMARY_DIR / f"{name}.json"
              for name in [*losses, *(f"baseline_{b}" for b in baselines.BASELINES)]),
            *(metrics_dir / "curves" / name for name in CURVE_FILES.values()),
            *(plots_dir / name for name in (*PLOT_NAMES, ROBUSTNESS_PLOT))]


def _write_metrics(metrics_dir: Path, details: Mapping[str, Any], losses: Sequence[str]) -> None:
    """details.json, the DVC metrics (removing those of losses no longer in the study),
    table2.md and per_specimen.csv."""
    write_json(metrics_dir / "details.json", details)
    compact = summary.compact_summary(details)
    for name, entry in compact.items():
        write_json(metrics_dir / SUMMARY_DIR / f"{name}.json", entry)
    for stale in sorted((metrics_dir / SUMMARY_DIR).glob("*.json")):
        if stale.stem not in compact:  # a loss no longer in the study
            stale.unlink()
    write_text(metrics_dir / "table2.md", report_markdown(details, losses))
    write_csv(metrics_dir / "per_specimen.csv",
              metrics.per_specimen_rows({**details["table2"], **details["baselines"]}))


def run(params: Params, *, metrics_dir: str | Path, plots_dir: str | Path,
        data_path: str | Path, live_dir: str | Path = DEFAULT_LIVE,
        folds_path: str | Path = DEFAULT_FOLDS) -> dict[str, Any]:
    """Build and write the summary, the details, Table 2, the per-specimen CSV and the plots;
    return the details."""
    metrics_dir, plots_dir = Path(metrics_dir), Path(plots_dir)
    losses, folds = list(params.study.losses), list(params.study.folds)
    table, data, fold_splits = _read_study(params, metrics_dir, data_path, folds_path)
    # Every output or none: a blocked location fails before the first one is written.
    ensure_writable(*_outputs(metrics_dir, plots_dir, losses))
    details, baseline_table = summary.build_details(params, table, data, fold_splits, metrics_dir)
    _write_metrics(metrics_dir, details, losses)
    curves = read_training_curves(live_dir, losses, folds)
    for metric, name in CURVE_FILES.items():
        write_csv(metrics_dir / "curves" / name, curves_wide(curves, metric, losses))
    source = summary.figure_source(details["dataset"])
    write_plots(plots_dir, table, data, metrics_dir, params, curves, baseline_table,
                source=source, no_presence=summary.no_presence_losses(details["presence"]))
    if details["robustness"] is not None:
        plots.save_png(extra_plots.robustness(details["robustness"], source=source),
                       plots_dir / ROBUSTNESS_PLOT)
    return details


# ------------------------------------------------------------------ command

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metrics", default=DEFAULT_METRICS,
                        help="metrics directory holding predictions/ and segmentation/ "
                             "(default: %(default)s)")
    parser.add_argument("--out-plots", default=DEFAULT_PLOTS,
                        help="directory for the PNGs (default: %(default)s)")
    parser.add_argument("--params", default=DEFAULT_PARAMS_FILE,
                        help="params file (default: %(default)s)")
    parser.add_argument("--data", default=None,
                        help="processed HDF5 file (default: data.processed in params)")
    parser.add_argument("--live", default=DEFAULT_LIVE,
                        help="dvclive root of the training runs (default: %(default)s)")
    parser.add_argument("--folds", default=DEFAULT_FOLDS,
                        help="folds file, for the baselines' training frames "
                             "(default: %(default)s)")


def main(args: argparse.Namespace) -> int:
    params = load_params(args.params)
    details = run(params, metrics_dir=args.metrics, plots_dir=args.out_plots,
                  data_path=args.data or params.data.processed, live_dir=args.live,
                  folds_path=args.folds)
    print(table2_markdown(details["table2"], list(params.study.losses), details["dataset"],
                          details["baselines"]))
    if details["robustness"] is None:
        print("silr report: no robustness results (metrics/robustness/); run `dvc repro "
              "robustness` for them", file=sys.stderr)
    return 0
