"""Stage `synth`: a synthetic phantom in the full-resolution DeepFluoro layout.

Each specimen is a random lower torso (src/silr/phantom/specimen.py): left and right
hemipelvis (iliac wing, acetabulum, obturator foramen), femora with their heads in the
acetabula, lumbar vertebrae and the upper sacrum, built from ellipsoids, with size and
shape varying between specimens, and the 14 landmarks at the points their names mean.
Every frame is a cone-beam projection with the real C-arm geometry (1536 x 1536 pixels
of 0.194 mm, 1020 mm source to detector) from a pose drawn over the real set's range
(src/silr/phantom/projector.py: obliques up to 40 degrees, the C-arm centred anywhere from
one hip to the other, magnification 1.13 to 1.46); raw detector counts follow
Beer-Lambert through soft tissue and bone, with quantum noise (bone is dark). Labels come
from ray casting: a pixel gets the bone with the longest path along its ray. About 30% of
the frames are stored upside down with `rot-180-for-up` = 1, as on the real C-arm. The
source is anterior, so an upright frame shows the patient's left on the image's right,
as the real frames do. Specimens have different frame counts (`synth.frames`, one entry
per specimen). The output is deterministic for a seed; specimen k and its frames do not
depend on how many other specimens or frames are generated.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from silr.core import anatomy, coords
from silr.core.errors import ConfigError
from silr.core.io import atomic_path, ensure_writable
from silr.core.params import DEFAULT_PARAMS_FILE, SynthParams, load_params
from silr.data import deepfluoro, fullres
from silr.phantom.projector import (
    AIR_INTENSITY,
    COLLIMATOR_PX,
    MIN_BONE_PATH_MM,
    Detector,
    Pose,
    Projection,
    render,
    sample_pose,
)
from silr.phantom.specimen import Specimen, make_specimen
from silr.phantom.volume import voxelize

__all__ = ["add_arguments", "frames_from_arguments", "main", "run", "specimen_ids",
           "specimen_rng", "write_phantom", "write_preview"]

GENERATOR_VERSION = "1"
DATA_KIND = "synthetic"
LABEL_RULE = (f"each pixel gets the bone with the longest path along its ray; background where "
              f"no bone is crossed for at least {MIN_BONE_PATH_MM} mm")
PREVIEW_PANELS = 12
PREVIEW_FACTOR = 4


def specimen_ids(count: int) -> list[str]:
    """The real ids for the first six specimens (paper order), then invented `99-NNNN` ids."""
    if not 1 <= count <= 9999:
        raise ConfigError(f"synth.specimens must be between 1 and 9999, got {count}")
    return [anatomy.SPECIMEN_IDS.get(n, f"99-{n:04d}") for n in range(1, count + 1)]


def check_frames(frames: Sequence[int]) -> tuple[int, ...]:
    """Frames per specimen as a tuple; ConfigError naming synth.specimens / synth.frames."""
    frames = tuple(frames)
    specimen_ids(len(frames))  # the specimen count's own check
    bad = [count for count in frames
           if isinstance(count, bool) or not isinstance(count, int) or count < 1]
    if bad:
        raise ConfigError(f"synth.frames must be >= 1 for every specimen, got {bad[0]!r}")
    return frames


def specimen_rng(seed: int, number: int, frame: int | None = None) -> np.random.Generator:
    """Independent streams: the anatomy of specimen `number`, and each of its frames."""
    stream = 0 if frame is None else frame + 1
    return np.random.default_rng(np.random.SeedSequence([seed, number, stream]))


@dataclass
class PreviewPanel:
    title: str
    image: np.ndarray          # upright log image, downsampled by PREVIEW_FACTOR
    labels: np.ndarray
    landmarks_xy: np.ndarray   # (14, 2) in the downsampled upright frame


@dataclass
class SynthSummary:
    specimens: int
    frames: int
    landmarks_out_of_frame: int = 0
    landmarks_total: int = 0
    turned_frames: int = 0
    panels: list[PreviewPanel] = field(default_factory=list)


def _write_specimen_volume(group: h5py.Group, specimen: Specimen) -> None:
    volume = voxelize(specimen)
    fullres.write_specimen_volume(group, hounsfield=volume.hounsfield, labels=volume.labels,
                                  spacing=volume.spacing, origin=volume.origin,
                                  landmarks=specimen.landmarks)


def _write_projection(group: h5py.Group, projection: Projection, pose: Pose, specimen: Specimen,
                      detector: Detector) -> None:
    size = detector.size_px
    cam_to_femur_vol, femur_good_fov = {}, {}
    for side, label in zip(fullres.FEMUR_SIDES, (anatomy.LEFT_FEMUR, anatomy.RIGHT_FEMUR)):
        head = specimen.femoral_head_centres[label]
        cam_to_femur_vol[side] = pose.cam_to_femur_vol(label, head)
        # Good field of view: the femoral head centre is on the detector.
        head_xy = projection.landmarks_xy[anatomy.LANDMARK_NAMES.index(f"FH-{side[0]}")]
        femur_good_fov[side] = coords.in_frame(head_xy, size, size)
    fullres.write_projection(group, intensity=projection.intensity, labels=projection.labels,
                             landmarks_xy=projection.landmarks_xy, spacing_mm=detector.spacing_mm,
                             cam_to_pelvis_vol=pose.cam_to_vol, cam_to_femur_vol=cam_to_femur_vol,
                             femur_good_fov=femur_good_fov, rotate=pose.rot180)


def preview_panel(title: str, projection: Projection, rot180: bool, size: int) -> PreviewPanel:
    """Upright, log-transformed, PREVIEW_FACTOR-times smaller view of one frame."""
    f = PREVIEW_FACTOR
    log_image = np.log(AIR_INTENSITY) - np.log(projection.intensity)
    image = log_image.reshape(size // f, f, size // f, f).mean(axis=(1, 3))
    labels = projection.labels[f // 2::f, f // 2::f].copy()
    # No tint where the collimator blocks the beam: the labels there describe anatomy the frame
    # cannot show (the projector draws the collimator over the labelled field).
    border = -(-COLLIMATOR_PX // f)
    labels[:border] = labels[-border:] = 0
    labels[:, :border] = labels[:, -border:] = 0
    xy = projection.landmarks_xy
    if rot180:
        image, labels = image[::-1, ::-1], labels[::-1, ::-1]
        xy = coords.rotate180(xy, size, size)
    xy = coords.rescale(xy, (size, size), (size // f, size // f))
    return PreviewPanel(title, np.ascontiguousarray(image), np.ascontiguousarray(labels), xy)


def write_phantom(path: Path, frames: Sequence[int], seed: int, detector: Detector | None = None,
                  preview_panels: int = PREVIEW_PANELS) -> SynthSummary:
    """Generate the phantom into the HDF5 file `path` (written in place: callers pass a temp
    name); specimen k gets frames[k - 1] frames."""
    frames = check_frames(frames)
    detector = detector if detector is not None else Detector()
    specimens = len(frames)
    ids = specimen_ids(specimens)
    summary = SynthSummary(specimens, sum(frames))
    per_specimen_panels = -(-preview_panels // specimens) if preview_panels else 0
    size = detector.size_px
    with h5py.File(path, "w") as f:
        f.attrs.update({deepfluoro.ATTR_DATA_KIND: DATA_KIND, "silr-generator": "silr synth",
                        "silr-generator-version": GENERATOR_VERSION, "silr-seed": seed,
                        "silr-specimens": specimens,
                        "silr-frames-per-specimen": np.asarray(frames, np.int64),
                        deepfluoro.ATTR_LABEL_RULE: LABEL_RULE,
                        "silr-air-intensity": AIR_INTENSITY})
        fullres.write_proj_params(f.create_group("proj-params"), intrinsic=detector.intrinsic,
                                  extrinsic=np.eye(4),  # world = camera frame
                                  num_rows=size, num_cols=size, spacing_mm=detector.spacing_mm)
        for number, (specimen_id, count) in enumerate(zip(ids, frames), start=1):
            specimen = make_specimen(specimen_rng(seed, number))
            group = f.create_group(specimen_id)
            _write_specimen_volume(group, specimen)
            projections = group.create_group("projections")
            for frame in range(count):
                rng = specimen_rng(seed, number, frame)
                pose = sample_pose(rng)
                projection = render(specimen, pose, rng, detector)
                _write_projection(projections.create_group(f"{frame:03d}"), projection, pose,
                                  specimen, detector)
                inside = coords.in_frame(projection.landmarks_xy, size, size)
                summary.landmarks_total += inside.size
                summary.landmarks_out_of_frame += int((~inside).sum())
                summary.turned_frames += int(pose.rot180)
                if frame < per_specimen_panels and len(summary.panels) < preview_panels:
                    turned = " (stored turned)" if pose.rot180 else ""
                    title = f"{specimen_id} / {frame:03d}{turned}"
                    summary.panels.append(preview_panel(title, projection, pose.rot180, size))
    return summary


def write_preview(path: Path, panels: list[PreviewPanel]) -> None:
    """A grid of upright frames with tinted labels and in-frame landmarks, written atomically."""
    # matplotlib is imported here, not at the top: it is slow to import, and only the preview
    # (an optional output) needs it.
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap, to_rgba
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    columns = min(4, len(panels))
    rows = -(-len(panels) // columns)
    legend_in, panel_in = 0.7, 3.3
    fig, axes = plt.subplots(rows, columns, figsize=(3.0 * columns, panel_in * rows + legend_in),
                             squeeze=False)
    label_cmap = ListedColormap([(0, 0, 0, 0)] + [to_rgba(anatomy.LABEL_COLORS[v], 0.2)
                                                  for v in anatomy.BONE_LABELS])
    marker_colours = plt.get_cmap("tab20")(np.linspace(0, 1, anatomy.NUM_LANDMARKS,
                                                       endpoint=False))
    for ax in axes.flat:
        ax.axis("off")
    for ax, panel in zip(axes.flat, panels):
        h, w = panel.image.shape
        interior = panel.image[h // 10:-h // 10, w // 10:-w // 10]
        ax.imshow(panel.image, cmap="gray", vmin=np.percentile(interior, 0.5),
                  vmax=np.percentile(interior, 99.8))
        ax.imshow(panel.labels, cmap=label_cmap, vmin=-0.5, vmax=anatomy.MAX_LABEL + 0.5,
                  interpolation="nearest")
        inside = coords.in_frame(panel.landmarks_xy, w, h)
        ax.scatter(panel.landmarks_xy[inside, 0], panel.landmarks_xy[inside, 1], s=14,
                   c=marker_colours[inside], edgecolors="black", linewidths=0.4)
        ax.set_title(panel.title, fontsize=7)
    handles = [Line2D([], [], marker="o", linestyle="", color=marker_colours[i],
                      markeredgecolor="black", label=name)
               for i, name in enumerate(anatomy.LANDMARK_NAMES)]
    handles += [Patch(color=anatomy.LABEL_COLORS[v], label=anatomy.LABEL_NAMES[v])
                for v in anatomy.BONE_LABELS]
    height = panel_in * rows + legend_in
    fig.legend(handles=handles, loc="lower center", ncol=10, fontsize=6.5, frameon=False)
    fig.suptitle("silr synthetic phantom: log-transformed frames turned upright (full detector, "
                 "bright collimator edge); labels tinted inside the collimated field; in-frame "
                 "landmarks", fontsize=7.5)
    fig.subplots_adjust(left=0.01, right=0.99, top=1 - 0.55 / height, bottom=legend_in / height,
                        wspace=0.04, hspace=0.12)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


# An upper bound on what one frame takes in the file: a float32 image and a uint8 label map
# at full resolution, uncompressed (the file compresses them; about 2.8 MB a frame seen).
FRAME_BYTES_BOUND = anatomy.FULLRES_SIZE_PX ** 2 * (4 + 1)


def check_disk_space(out: Path, frames: Sequence[int]) -> None:
    """ConfigError when the frames asked for could outgrow the free space where `out` goes: a
    params file asking for millions of frames must fail before it starts writing."""
    need = sum(frames) * FRAME_BYTES_BOUND
    folder = Path(out).resolve().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if need > free:
        raise ConfigError(f"synth.frames: {sum(frames)} frames may take up to "
                          f"{need / 1024 ** 3:.1f} GiB, but {folder} has {free / 1024 ** 3:.1f} "
                          f"GiB free")


def run(out: Path, frames: Sequence[int], seed: int, preview: Path | None = None) -> SynthSummary:
    """The stage: generate the phantom file atomically, then the preview picture."""
    frames = check_frames(frames)  # before any output is touched
    ensure_writable(out, *([preview] if preview is not None else []))  # both outputs or none
    check_disk_space(out, frames)
    with atomic_path(out) as tmp:
        summary = write_phantom(tmp, frames, seed, preview_panels=PREVIEW_PANELS if preview else 0)
    if preview is not None:
        write_preview(preview, summary.panels)
    return summary


def _frame_counts(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a frame count or a comma-separated list of "
                                         f"them, got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path,
                        help="output HDF5 file (full-resolution layout)")
    parser.add_argument("--params", type=Path, default=Path(DEFAULT_PARAMS_FILE),
                        help="params file whose `synth` section is used (default %(default)s)")
    parser.add_argument("--frames", type=_frame_counts, default=None,
                        help="override synth.frames: frames per specimen as a list (22,21,5), or "
                             "one count for every specimen with --specimens")
    parser.add_argument("--specimens", type=int, default=None,
                        help="number of specimens, each with the one count given by --frames")
    parser.add_argument("--seed", type=int, default=None, help="override synth.seed")
    parser.add_argument("--preview", type=Path, default=None,
                        help="also write a PNG grid of frames")


def frames_from_arguments(params: SynthParams, frames: list[int] | None,
                          specimens: int | None) -> tuple[int, ...]:
    """synth.frames, or the command line's --frames / --specimens in its place."""
    if specimens is not None:
        if frames is not None and len(frames) != 1:
            raise ConfigError(f"--specimens {specimens} takes one count in --frames, "
                              f"got {len(frames)}")
        specimen_ids(specimens)
        return tuple((frames or [max(params.frames)]) * specimens)
    return tuple(frames) if frames is not None else params.frames


def main(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    params = load_params(args.params).synth
    frames = frames_from_arguments(params, args.frames, args.specimens)
    seed = params.seed if args.seed is None else args.seed
    summary = run(args.out, frames, seed, args.preview)
    size_mb = os.path.getsize(args.out) / 1e6
    print(f"silr synth: wrote {args.out} ({summary.specimens} specimens, {summary.frames} frames "
          f"({', '.join(map(str, frames))}), {size_mb:.0f} MB, {summary.turned_frames} frames "
          f"stored turned, {summary.landmarks_out_of_frame}/{summary.landmarks_total} landmarks "
          f"off the detector) "
          f"in {time.perf_counter() - start:.0f} s")
    return 0
