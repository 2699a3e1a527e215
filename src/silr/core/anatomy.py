"""The one place where the data set's anatomical facts are spelled out.

Landmark names, their canonical order, label values and names, the landmark-to-bone
map, the specimen numbering and the detector geometry. Every other module imports
these names; nothing else in the code base writes them out again.
"""

from __future__ import annotations

__all__ = [
    "BACKGROUND", "BONE_LABELS", "DEEPFLUORO_FRAMES", "FRAME_SIZE_PX", "FULLRES_PIXEL_SPACING_MM",
    "FULLRES_SIZE_PX", "LABEL_COLORS", "LABEL_NAMES", "LANDMARK_BONE", "LANDMARK_BONE_INDEX",
    "LANDMARK_BONE_LABELS", "LANDMARK_BONE_SLOT", "LANDMARK_NAMES", "LEFT_FEMUR",
    "LEFT_HEMIPELVIS", "MAX_LABEL", "NETWORK_INPUT_PX", "NUM_CLASSES", "NUM_LANDMARKS",
    "RIGHT_FEMUR", "RIGHT_HEMIPELVIS", "SOURCE_TO_DETECTOR_MM", "SPECIMEN_IDS", "SPECIMEN_NUMBERS",
    "UPPER_SACRUM", "VERTEBRAE", "specimen_group",
]

# Canonical landmark order: the order of `land-names/land-00..13` in the published
# preprocessed files. Files are always matched to it by name, never by position.
LANDMARK_NAMES: tuple[str, ...] = (
    "FH-l", "FH-r",
    "GSN-l", "GSN-r",
    "IOF-l", "IOF-r",
    "MOF-l", "MOF-r",
    "SPS-l", "SPS-r",
    "IPS-l", "IPS-r",
    "ASIS-l", "ASIS-r",
)
NUM_LANDMARKS = len(LANDMARK_NAMES)

# Label values (2D and 3D files use the same ones).
BACKGROUND = 0
LEFT_HEMIPELVIS = 1
RIGHT_HEMIPELVIS = 2
VERTEBRAE = 3
UPPER_SACRUM = 4
LEFT_FEMUR = 5
RIGHT_FEMUR = 6

LABEL_NAMES: dict[int, str] = {
    BACKGROUND: "background",
    LEFT_HEMIPELVIS: "left hemipelvis",
    RIGHT_HEMIPELVIS: "right hemipelvis",
    VERTEBRAE: "vertebrae",
    UPPER_SACRUM: "upper sacrum",
    LEFT_FEMUR: "left femur",
    RIGHT_FEMUR: "right femur",
}
NUM_CLASSES = len(LABEL_NAMES)
MAX_LABEL = max(LABEL_NAMES)
# The one bone palette of every figure (report, phantom preview, predict overlay), indexed by
# label value; background black.
LABEL_COLORS: tuple[str, ...] = ("#000000", "#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231",
                                  "#911eb4")
BONE_LABELS: tuple[int, ...] = tuple(v for v in LABEL_NAMES if v != BACKGROUND)


def _bone_of(name: str) -> int:
    # Femoral heads lie in the femora; every other landmark lies in its hemipelvis.
    side = name.rsplit("-", 1)[1]
    if name.startswith("FH-"):
        return LEFT_FEMUR if side == "l" else RIGHT_FEMUR
    return LEFT_HEMIPELVIS if side == "l" else RIGHT_HEMIPELVIS


# Landmark name -> label value of the bone it lies in (the anatomical-consistency term).
LANDMARK_BONE: dict[str, int] = {name: _bone_of(name) for name in LANDMARK_NAMES}
# The same map as a tuple in canonical landmark order, for tensor code.
LANDMARK_BONE_INDEX: tuple[int, ...] = tuple(LANDMARK_BONE[n] for n in LANDMARK_NAMES)
# The bones landmarks lie in (sorted label values), and each landmark's position among them.
LANDMARK_BONE_LABELS: tuple[int, ...] = tuple(sorted(set(LANDMARK_BONE_INDEX)))
LANDMARK_BONE_SLOT: tuple[int, ...] = tuple(LANDMARK_BONE_LABELS.index(b)
                                            for b in LANDMARK_BONE_INDEX)

# Paper numbering (1..6, also the `01`..`06` groups of the preprocessed files) -> specimen id.
SPECIMEN_IDS: dict[int, str] = {
    1: "17-1882",
    2: "18-1109",
    3: "18-0725",
    4: "18-2799",
    5: "18-2800",
    6: "17-1905",
}
SPECIMEN_NUMBERS: dict[str, int] = {sid: num for num, sid in SPECIMEN_IDS.items()}
# Frames per specimen in the real data set (paper numbering; 366 in all), the model for
# the phantom's default size.
DEEPFLUORO_FRAMES: dict[int, int] = {1: 111, 2: 104, 3: 24, 4: 48, 5: 55, 6: 24}

# Detector geometry of the full-resolution frames (Siemens CIOS Fusion, 30x30 cm panel).
FULLRES_SIZE_PX = 1536
FULLRES_PIXEL_SPACING_MM = 0.194
SOURCE_TO_DETECTOR_MM = 1020.0

# Network frame: an 8x frame is 180x180; it is padded (not resized) to 192x192.
FRAME_SIZE_PX = 180
NETWORK_INPUT_PX = 192


def specimen_group(number: int) -> str:
    """Group name of a specimen in the preprocessed layout: 1 -> '01'."""
    return f"{number:02d}"
