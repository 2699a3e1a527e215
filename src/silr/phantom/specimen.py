"""A random lower-torso specimen: six bones as unions of ellipsoids, soft tissue, 14 landmarks.

Coordinates are the specimen's CT volume frame in mm, LPS: +x patient left, +y posterior,
+z superior, origin midway between the femoral head centres. The left side is built in
a template (x > 0) and mirrored for the right side with its own random variation; the
whole specimen is then scaled anisotropically, so size and shape vary between specimens.

Each landmark is a point inside the primitive that carries its anatomical feature
(for example SPS: the superior-medial part of the pubic body at the symphysis), given
in that primitive's normalised coordinates, so it follows every random variation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from silr.core import anatomy
from silr.phantom.geometry import Body, Ellipsoid, frame_from, rotation_about

__all__ = ["Specimen", "make_specimen"]

Shapes = tuple[Ellipsoid, ...]
X_AXIS = np.array([1.0, 0.0, 0.0])
Z_AXIS = np.array([0.0, 0.0, 1.0])


@dataclass(frozen=True)
class Specimen:
    bones: dict[int, Body]                 # label value -> bone
    soft_tissue: Body                      # torso minus gas pockets
    landmarks: dict[str, np.ndarray]       # name -> (3,) mm, volume frame
    femoral_head_centres: dict[int, np.ndarray]   # femur label -> (3,), pivot of the femur
    cortical_mu: float                     # attenuation above soft tissue, 1/mm
    cancellous_mu: float


class _Jitter:
    """Small random changes of a template primitive (centre in mm, semi-axes relative)."""

    def __init__(self, rng: np.random.Generator, centre_mm: float = 1.5, semi_rel: float = 0.07):
        self.rng, self.centre_mm, self.semi_rel = rng, centre_mm, semi_rel

    def ellipsoid(self, centre: ArrayLike, semi_axes: ArrayLike,
                  rotation: ArrayLike | None = None) -> Ellipsoid:
        centre = np.asarray(centre, float) + self.rng.normal(0.0, self.centre_mm, 3)
        semi = np.asarray(semi_axes, float) * (
            1.0 + self.rng.uniform(-self.semi_rel, self.semi_rel, 3))
        axes = np.eye(3) if rotation is None else np.asarray(rotation, float)
        return Ellipsoid(centre, axes, semi)

    def segment(self, start: ArrayLike, end: ArrayLike, radius_hint: float, radius_other: float,
                hint: ArrayLike = Z_AXIS, extend: float = 0.0) -> Ellipsoid:
        """Elongated ellipsoid from `start` to `end`; `radius_hint` lies along `hint`."""
        start, end = np.asarray(start, float), np.asarray(end, float)
        half = np.linalg.norm(end - start) / 2.0 + extend
        return self.ellipsoid((start + end) / 2.0, (half, radius_hint, radius_other),
                              frame_from(end - start, hint))


def _left_hemipelvis(jit: _Jitter, fh_centre: np.ndarray,
                     head_radius: float) -> tuple[Shapes, Shapes, dict[str, np.ndarray]]:
    """Left hemipelvis (template, x > 0) and its six landmarks."""
    acetabulum = jit.ellipsoid(fh_centre + (-13, 5, 7), (26, 31, 33))
    # The cup: the femoral head plus a joint space of 1.5 mm is cut out of the acetabular body.
    socket = Ellipsoid(fh_centre.copy(), np.eye(3), np.full(3, head_radius + 1.5))

    # Iliac wing: a thin plate facing antero-medially, spanning SI joint to ASIS.
    wing_axes = frame_from((0.59, -0.81, 0.0), (0.18, 0.0, 1.0))
    wing = jit.ellipsoid((80, 12, 66), (62, 54, 5.5), wing_axes)

    def wing_edge(deg: float) -> np.ndarray:
        t = np.radians(deg)
        return wing.point((0.93 * np.cos(t), 0.93 * np.sin(t), 0.0))

    crest = [jit.segment(wing_edge(a), wing_edge(b), 7, 6, hint=wing_axes[:, 2])
             for a, b in ((168, 115), (115, 62), (62, 5))]
    asis_spine = jit.ellipsoid(wing_edge(-15), (12, 7, 6), wing_axes)
    brim = jit.segment((50, 50, 58), (66, -4, 8), 10, 8, hint=(0, -1, 1))
    buttress = jit.segment((75, 20, -2), (52, 60, 52), 14, 10, hint=(0, 1, -1))
    si_region = jit.ellipsoid((54, 66, 70), (11, 16, 26))
    superior_ramus = jit.segment((66, -14, -6), (19, -47, -22), 9, 8)
    pubic_body = jit.ellipsoid((13, -46, -45), (10, 11, 25), rotation_about(X_AXIS, np.radians(12)))
    inferior_ramus = jit.segment((15, -40, -66), (42, -10, -84), 8, 7)
    ischial_ramus = jit.segment((42, -10, -84), (63, 22, -70), 9, 8)
    tuberosity = jit.ellipsoid((64, 26, -64), (13, 15, 19))
    ischium = jit.segment((64, 26, -56), (74, 20, -8), 13, 11, hint=(0, 1, 0))

    solids = (acetabulum, wing, *crest, asis_spine, brim, buttress, si_region, superior_ramus,
              pubic_body, inferior_ramus, ischial_ramus, tuberosity, ischium)
    landmarks = {
        "ASIS": asis_spine.point((0.55, -0.25, 0.0)),
        "GSN": buttress.point((0.0, 0.6, 0.0)),         # notch: postero-inferior border
        "IOF": ischial_ramus.point((-0.6, 0.5, 0.0)),   # top of the ramus, foramen's lowest point
        "MOF": pubic_body.point((0.6, 0.0, -0.15)),     # lateral face of the pubis, mid-foramen
        "SPS": pubic_body.point((-0.4, -0.1, 0.8)),     # superior end of the symphysis
        "IPS": pubic_body.point((-0.4, 0.0, -0.8)),     # inferior end of the symphysis
    }
    return solids, (socket,), landmarks


def _left_femur(jit: _Jitter, rng: np.random.Generator, fh_centre: np.ndarray,
                head_radius: float) -> Shapes:
    """Left femur (template): head in the socket, neck, trochanters, proximal shaft."""
    neck_shaft_deg = rng.uniform(122, 136)
    anteversion_deg = rng.uniform(5, 20)
    neck_length = rng.uniform(45, 55)
    shaft_up = np.array([0.13, 0.0, 1.0]) / np.linalg.norm([0.13, 0.0, 1.0])
    medial = np.array([-1.0, 0.0, 0.0])
    medial_perp = medial - np.dot(medial, shaft_up) * shaft_up
    medial_perp /= np.linalg.norm(medial_perp)
    tilt = np.radians(180.0 - neck_shaft_deg)
    neck_dir = np.cos(tilt) * shaft_up + np.sin(tilt) * medial_perp
    # Anteversion turns the neck (and head) forward, towards -y.
    neck_dir = rotation_about(shaft_up, np.radians(anteversion_deg)) @ neck_dir
    junction = fh_centre - neck_length * neck_dir
    shaft_axes = frame_from(shaft_up, medial_perp)
    lateral, posterior = -medial_perp, np.array([0.0, 1.0, 0.0])

    head = Ellipsoid(fh_centre.copy(), np.eye(3), np.full(3, head_radius))
    neck = jit.segment(fh_centre, junction, 0.68 * head_radius, 0.58 * head_radius, hint=shaft_up)
    greater_trochanter = jit.ellipsoid(junction + 12 * shaft_up + 16 * lateral + 4 * posterior,
                                       (22, 12, 15), shaft_axes)
    metaphysis = jit.ellipsoid(junction - 40 * shaft_up, (60, 19, 16), shaft_axes)
    shaft = jit.ellipsoid(junction - 300 * shaft_up, (330, 13.5, 13.5), shaft_axes)
    lesser_trochanter = jit.ellipsoid(junction - 35 * shaft_up + 13 * medial + 8 * posterior,
                                      (11, 9, 8), shaft_axes)
    return (head, neck, greater_trochanter, metaphysis, shaft, lesser_trochanter)


def _sacrum(jit: _Jitter) -> tuple[Shapes, Shapes]:
    base_tilt = rotation_about(X_AXIS, np.radians(30))
    plate_tilt = rotation_about(X_AXIS, np.radians(27))
    # S1 to S3 only (the "upper sacrum"): a plate that narrows downwards, tilted backwards.
    plate = jit.ellipsoid((0, 64, 38), (34, 12, 30), plate_tilt)
    solids = [jit.ellipsoid((0, 46, 64), (25, 17, 13), base_tilt), plate,
              jit.ellipsoid((0, 70, 20), (20, 10, 22), plate_tilt)]
    holes = []
    for side in (1, -1):
        solids.append(jit.ellipsoid((27 * side, 54, 62), (20, 18, 14), base_tilt))   # ala
        solids.append(jit.ellipsoid((31 * side, 60, 46), (15, 14, 20), plate_tilt))  # lateral mass
        for height in (0.5, 0.0, -0.5):  # sacral foramina
            centre = plate.point((0.36 * side, 0.0, height))
            holes.append(Ellipsoid(centre, plate.rotation, np.array([4.5, 20.0, 4.5])))
    return tuple(solids), tuple(holes)


def _vertebrae(jit: _Jitter) -> Shapes:
    solids = []
    for centre_z, transverse_reach in ((94, 48), (125, 42), (156, 38)):  # L5, L4, L3
        # body, then spinous process
        solids.append(jit.ellipsoid((0, 36, centre_z), (25, 17, 12),
                                    rotation_about(X_AXIS, np.radians(-8))))
        solids.append(jit.segment((0, 70, centre_z - 2), (0, 92, centre_z - 10), 8, 4))
        for side in (1, -1):
            # pedicle, lamina, transverse process, articular process
            solids.append(jit.ellipsoid((13 * side, 53, centre_z + 3), (5, 9, 7)))
            solids.append(jit.segment((13 * side, 62, centre_z), (0, 72, centre_z - 2), 5, 4))
            solids.append(jit.segment((12 * side, 57, centre_z + 3),
                                      (transverse_reach * side, 57, centre_z + 6), 6, 5))
            solids.append(jit.ellipsoid((15 * side, 65, centre_z + 10), (6, 6, 10)))
    return tuple(solids)


def _mirrored(ellipsoid: Ellipsoid) -> Ellipsoid:
    flip = np.diag([-1.0, 1.0, 1.0])
    return Ellipsoid(flip @ ellipsoid.centre, flip @ ellipsoid.rotation, ellipsoid.semi_axes)


def _transformed(ellipsoid: Ellipsoid, linear: np.ndarray) -> Ellipsoid:
    """The ellipsoid under p -> linear @ p (an ellipsoid again; axes from the SVD)."""
    u, sv, _ = np.linalg.svd(linear @ ellipsoid.rotation @ np.diag(ellipsoid.semi_axes))
    return Ellipsoid(linear @ ellipsoid.centre, u, sv)


def _transformed_body(body: Body, linear: np.ndarray) -> Body:
    return Body(tuple(_transformed(s, linear) for s in body.solids),
                tuple(_transformed(h, linear) for h in body.holes), body.cortex_mm)


def make_specimen(rng: np.random.Generator) -> Specimen:
    """One random specimen; everything it varies comes from `rng`."""
    bones: dict[int, Body] = {}
    landmarks: dict[str, np.ndarray] = {}
    head_centres: dict[int, np.ndarray] = {}
    half_width = rng.uniform(80, 90)
    sides = (("l", 1.0, anatomy.LEFT_HEMIPELVIS, anatomy.LEFT_FEMUR),
             ("r", -1.0, anatomy.RIGHT_HEMIPELVIS, anatomy.RIGHT_FEMUR))
    for suffix, sign, pelvis_label, femur_label in sides:
        jit = _Jitter(rng)
        fh_centre = np.array([half_width, 0.0, 0.0]) + rng.normal(0.0, 1.0, 3)
        head_radius = rng.uniform(22.5, 25.5)
        solids, holes, points = _left_hemipelvis(jit, fh_centre, head_radius)
        femur = _left_femur(jit, rng, fh_centre, head_radius)
        flip = (lambda e: e) if sign > 0 else _mirrored
        flip_point = np.array([sign, 1.0, 1.0])
        bones[pelvis_label] = Body(tuple(map(flip, solids)), tuple(map(flip, holes)), cortex_mm=1.8)
        bones[femur_label] = Body(tuple(map(flip, femur)), (), cortex_mm=3.0)
        head_centres[femur_label] = fh_centre * flip_point
        landmarks[f"FH-{suffix}"] = fh_centre * flip_point
        for short, point in points.items():
            landmarks[f"{short}-{suffix}"] = point * flip_point
    jit = _Jitter(rng)
    sacrum_solids, sacrum_holes = _sacrum(jit)
    bones[anatomy.UPPER_SACRUM] = Body(sacrum_solids, sacrum_holes, cortex_mm=1.5)
    bones[anatomy.VERTEBRAE] = Body(_vertebrae(jit), (), cortex_mm=1.5)

    gas = tuple(Ellipsoid(np.array([rng.uniform(-45, 45), rng.uniform(-70, -10),
                                    rng.uniform(35, 140)]),
                          rotation_about(rng.normal(size=3), rng.uniform(0, np.pi)),
                          rng.uniform(7, 20, 3))
                for _ in range(int(rng.integers(3, 7))))
    torso = Ellipsoid(np.array([0.0, 5.0, 50.0]), np.eye(3),
                      np.array([175.0, 115.0, 500.0]) * rng.uniform(0.92, 1.08))
    soft_tissue = Body((torso,), gas)

    # Size and proportions of the whole specimen.
    linear = rng.uniform(0.88, 1.0) * np.diag(rng.uniform(0.95, 1.05, 3))
    density = rng.uniform(0.85, 1.15)
    return Specimen(
        bones={label: _transformed_body(bones[label], linear) for label in anatomy.BONE_LABELS},
        soft_tissue=_transformed_body(soft_tissue, linear),
        landmarks={name: linear @ landmarks[name] for name in anatomy.LANDMARK_NAMES},
        femoral_head_centres={label: linear @ c for label, c in head_centres.items()},
        cortical_mu=0.030 * density,
        cancellous_mu=0.008 * density,
    )
