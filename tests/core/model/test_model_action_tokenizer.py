"""Action tokenizer: normalisation, 256 bins, round trip, per-dimension modes, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from reconvla_core.model.action_tokenizer import (
    ActionTokenizer,
    Normalizer,
    check_array,
    stats_from_bounds,
    validate_norm_stats,
)

LOW = np.array([-2.0, 0.0, -3.0, -1.0, -1.2, -2.0, 0.0])
HIGH = np.array([2.0, 3.0, 0.0, 1.0, 1.2, 2.0, 0.07])


def test_round_trip_within_half_a_bin():
    stats = stats_from_bounds(LOW, HIGH)
    norm = Normalizer(stats, "q01_q99", ("normalize",) * 7, "action")
    tok = ActionTokenizer(256, 1000, 7, 5)
    rng = np.random.default_rng(0)
    q01, q99 = np.array(stats["q01"]), np.array(stats["q99"])
    actions = q01 + (q99 - q01) * rng.uniform(size=(5, 7))
    ids = tok.encode(norm.normalize(actions))
    assert ids.shape == (5, 7) and ids.min() >= 1000 and ids.max() < 1256
    decoded = norm.unnormalize(tok.decode(ids))
    half_bin = (q99 - q01) / 256
    assert np.all(np.abs(decoded - actions) <= half_bin + 1e-12)


def test_out_of_range_values_clip_to_the_end_bins():
    tok = ActionTokenizer(256, 0, 1, 1)
    assert tok.values_to_bins(np.array([-5.0, -1.0, 1.0, 7.0])).tolist() == [0, 0, 255, 255]


def test_binary_and_identity_dimensions():
    stats = stats_from_bounds(LOW, HIGH)
    modes = ("normalize",) * 5 + ("identity", "binary")
    norm = Normalizer(stats, "min_max", modes, "action")
    x = np.array([0.0, 1.0, -1.0, 0.0, 0.0, 0.25, 0.06])
    n = norm.normalize(x)
    assert n[5] == 0.25 and n[6] == 1.0
    back = norm.unnormalize(n)
    assert back[5] == 0.25 and back[6] == HIGH[6]
    assert norm.unnormalize(norm.normalize(np.r_[x[:6], 0.01]))[6] == LOW[6]


def test_constant_dimension_decodes_to_its_value():
    stats = stats_from_bounds(np.zeros(2), np.array([1.0, 0.0]))
    norm = Normalizer(stats, "min_max", ("normalize",) * 2, "action")
    assert np.allclose(norm.unnormalize(norm.normalize(np.array([0.5, 0.0]))), [0.5, 0.0], atol=1e-6)


@pytest.mark.parametrize("value, message", [
    (np.full((5, 7), np.nan), "NaN or inf"),
    (np.full((5, 7), np.inf), "NaN or inf"),
    (np.zeros((4, 7)), "shape"),
    ("abc", "numeric"),
])
def test_bad_arrays_raise(value, message):
    with pytest.raises(ValueError, match=message):
        check_array(value, (5, 7), "actions")


def test_non_action_tokens_rejected():
    with pytest.raises(ValueError, match="not action tokens"):
        ActionTokenizer(256, 100, 7, 5).decode(np.array([5, 120]))


def test_stats_validation_names_the_problem():
    good = {"action": stats_from_bounds(LOW, HIGH), "observation.state": stats_from_bounds(LOW, HIGH)}
    assert validate_norm_stats(good, 7, 7)["action"]["q01"] == good["action"]["q01"]
    with pytest.raises(ValueError, match="observation.state"):
        validate_norm_stats({"action": good["action"]}, 7, 7)
    bad = {**good, "action": {**good["action"], "q99": [1.0] * 6}}
    with pytest.raises(ValueError, match="q99"):
        validate_norm_stats(bad, 7, 7)
