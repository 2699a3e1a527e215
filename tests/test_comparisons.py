"""Paired comparisons: the hierarchical bootstrap on tables whose answer is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from silr.evaluation import comparisons


def table(
    offsets: dict[int, float],
    loss: str,
    *,
    frames: int = 4,
    landmarks: int = 3,
    seeds=(0,),
    noise: float = 0.0,
    rng=None,
) -> pd.DataFrame:
    """Errors of `loss`: per specimen a base error of 5 px plus offsets[specimen], plus noise."""
    rows = []
    for seed in seeds:
        for specimen, offset in offsets.items():
            for frame in range(frames):
                for landmark in range(landmarks):
                    error = 5.0 + offset + (rng.normal(0, noise) if noise else 0.0)
                    rows.append(
                        {
                            "loss": loss,
                            "fold": specimen,
                            "seed": seed,
                            "specimen": specimen,
                            "frame": frame,
                            "landmark": f"L{landmark}",
                            "gt_in_frame": 1,
                            "error_px": error,
                        }
                    )
    return pd.DataFrame(rows)


def test_identical_losses_differ_by_nothing():
    both = pd.concat([table({1: 0, 2: 1, 3: 2}, "a"), table({1: 0, 2: 1, 3: 2}, "b")])
    result = comparisons.hierarchical_bootstrap(
        comparisons.paired_frames(both, "a", "b"), draws=200
    )
    assert (
        result["mean_difference_px"] == 0 and result["ci_low_px"] == 0 and result["ci_high_px"] == 0
    )


def test_a_constant_offset_is_found_exactly_and_never_flips():
    both = pd.concat([table({1: 2.0, 2: 2.0, 3: 2.0}, "a"), table({1: 0.0, 2: 0.0, 3: 0.0}, "b")])
    result = comparisons.hierarchical_bootstrap(
        comparisons.paired_frames(both, "a", "b"), draws=200
    )
    assert result["mean_difference_px"] == pytest.approx(2.0)
    assert result["ci_low_px"] == pytest.approx(2.0) and result["ci_high_px"] == pytest.approx(2.0)
    assert result["flip_share"] == 0.0


def test_the_interval_reflects_the_spread_between_specimens():
    rng = np.random.default_rng(0)
    # The difference is +3 px on two specimens and -1 px on four: mean +1/3, and the specimen level
    # makes the sign uncertain.
    a = table({1: 3.0, 2: 3.0, 3: -1.0, 4: -1.0, 5: -1.0, 6: -1.0}, "a", noise=0.5, rng=rng)
    b = table({s: 0.0 for s in range(1, 7)}, "b")
    result = comparisons.hierarchical_bootstrap(
        comparisons.paired_frames(pd.concat([a, b]), "a", "b"), draws=2000
    )
    assert result["mean_difference_px"] == pytest.approx(1 / 3, abs=0.15)
    assert result["ci_low_px"] < 0 < result["ci_high_px"]
    assert 0.1 < result["flip_share"] < 0.5


def test_seeds_are_pooled_within_frames_and_pairs_must_match():
    a = table({1: 1.0, 2: 1.0}, "a", seeds=(0, 1))
    b = table({1: 0.0, 2: 0.0}, "b", seeds=(0, 1))
    frames = comparisons.paired_frames(pd.concat([a, b]), "a", "b")
    assert frames["count"].tolist() == [6] * 8  # 3 landmarks x 2 seeds per frame
    with pytest.raises(ValueError, match="do not cover the same"):
        comparisons.paired_frames(
            pd.concat([a, table({1: 0.0, 2: 0.0}, "b", seeds=(0,))]), "a", "b"
        )


def test_compare_runs_every_loss_against_each_reference_present():
    both = pd.concat(
        [table({1: 1.0, 2: 1.0}, "a"), table({1: 0.0, 2: 0.0}, "b"), table({1: 2.0, 2: 2.0}, "c")]
    )
    result = comparisons.compare(both, ["a", "b", "c"], ["b", "missing"], draws=50)
    assert set(result) == {"b"} and set(result["b"]) == {"a", "c"}
    assert result["b"]["c"]["mean_difference_px"] == pytest.approx(2.0)
