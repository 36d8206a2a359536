"""The study's measurements: attention share inside the gaze box, box mapping, confidence intervals."""

from __future__ import annotations

import numpy as np
import pytest

from reconvla_core.demo.report import mean_and_ci
from reconvla_core.demo.study import StudyConfig, attention_inside, gaze_box_in_frame, summarise

pytestmark = pytest.mark.unit


def test_attention_inside_whole_and_empty_box():
    attention = np.random.default_rng(0).random((8, 8))
    assert attention_inside(attention, np.array([0.0, 0.0, 1.0, 1.0])) == pytest.approx(1.0)
    assert attention_inside(attention, np.array([0.5, 0.5, 0.5, 0.5])) == pytest.approx(0.0)


def test_attention_inside_weights_partial_cells():
    attention = np.zeros((4, 4))
    attention[0, 0] = 1.0  # all mass in the top-left cell, which spans [0, 0.25] x [0, 0.25]
    assert attention_inside(attention, np.array([0.0, 0.0, 0.125, 0.25])) == pytest.approx(0.5)
    uniform = np.full((4, 4), 1 / 16)
    box = np.array([0.1, 0.2, 0.6, 0.7])
    assert attention_inside(uniform, box) == pytest.approx(0.25)  # uniform attention -> box area


def test_gaze_box_maps_into_the_top_part_of_the_stitched_frame():
    box = gaze_box_in_frame(np.array([0.2, 0.5, 0.4, 1.0]), top_fraction=14 / 27)
    np.testing.assert_allclose(box, [0.2, 0.5 * 14 / 27, 0.4, 14 / 27])


def test_mean_and_ci():
    assert mean_and_ci([2.0]) == (2.0, 0.0)
    mean, half = mean_and_ci([1.0, 2.0, 3.0])
    assert mean == pytest.approx(2.0)
    assert half == pytest.approx(4.303 * 1.0 / np.sqrt(3), rel=1e-3)  # t(0.975, 2) = 4.303


def test_summarise_groups_by_variant():
    runs = [{"variant": v, "seed": s, "avg_len": a, "attention_in_gaze": 0.1 * a, "uniform_in_gaze": 0.05,
             "final_action_loss": 1.0, "success_by_position": [a / 5] * 5}
            for v, s, a in [("none", 0, 1.0), ("none", 1, 2.0), ("gaze", 0, 3.0), ("gaze", 1, 3.0)]]
    summary = summarise(runs, ("none", "gaze"))
    assert summary["none"]["avg_len"]["mean"] == pytest.approx(1.5)
    assert summary["gaze"]["avg_len"]["ci95"] == pytest.approx(0.0)
    assert summary["gaze"]["success_by_position"] == pytest.approx([0.6] * 5)


def test_study_config_rejects_bad_values(tmp_path):
    with pytest.raises(ValueError, match="unknown variants"):
        StudyConfig(out_dir=tmp_path, variants=("gaze", "crop"))
    with pytest.raises(ValueError, match="seeds"):
        StudyConfig(out_dir=tmp_path, seeds=0)
    with pytest.raises(FileNotFoundError, match="meta/info.json"):
        StudyConfig(out_dir=tmp_path, data=[tmp_path])
