"""The sample order: a function of (seed, step) only, split the same way for 1 or N processes."""

from __future__ import annotations

import numpy as np
import pytest

from reconvla_core.train.data import ProcessSampler, SampleStream, source_sample_weights

pytestmark = pytest.mark.unit


def _micro_batches(stream: SampleStream, *, per_device: int, processes: int, accum: int, steps: int,
                   start: int = 0) -> dict[int, list[list[int]]]:
    """Per process: its micro-batches in order."""
    out = {}
    for rank in range(processes):
        flat = list(ProcessSampler(stream, per_device=per_device, num_processes=processes, rank=rank, accum=accum,
                                   start_step=start, total_steps=steps))
        out[rank] = [flat[i : i + per_device] for i in range(0, len(flat), per_device)]
    return out


def test_one_process_with_accumulation_sees_the_same_micro_batches_as_two_processes() -> None:
    stream = SampleStream(None, length=50, seed=3)
    single = _micro_batches(stream, per_device=2, processes=1, accum=2, steps=4)[0]
    double = _micro_batches(stream, per_device=2, processes=2, accum=1, steps=4)
    # Global micro-batch k of step s: single's (s, micro k) == rank k's (s, micro 0).
    for step in range(4):
        for k in range(2):
            assert single[step * 2 + k] == double[k][step]


def test_order_is_a_function_of_seed_and_step_and_covers_each_epoch() -> None:
    stream = SampleStream(None, length=12, seed=0)
    full = _micro_batches(stream, per_device=3, processes=1, accum=1, steps=8)[0]
    resumed = _micro_batches(SampleStream(None, length=12, seed=0), per_device=3, processes=1, accum=1, steps=8,
                             start=5)[0]
    assert resumed == full[5:]  # a resumed run reads what the uninterrupted run read
    first_epoch = sorted(i for batch in full[:4] for i in batch)
    assert first_epoch == list(range(12))  # a permutation per epoch
    assert full[:4] != full[4:]  # and a new one the next epoch
    assert _micro_batches(SampleStream(None, 12, seed=1), per_device=3, processes=1, accum=1, steps=4)[0] != full[:4]


class _TwoSources:
    lengths = np.array([100, 10])


def test_mixture_draws_sources_by_weight_not_size() -> None:
    weights = source_sample_weights(_TwoSources(), [1.0, 1.0])
    stream = SampleStream(weights, length=110, seed=0)
    draws = np.array([stream[p] for p in range(110 * 40)])
    share_small = float(np.mean(draws >= 100))
    assert share_small == pytest.approx(0.5, abs=0.03)  # equal weights: half from the 10-frame source
    assert source_sample_weights(_TwoSources(), [1.0]) is None


def _stats(low: float, high: float, count: int) -> dict:
    entry = {"min": [low - 1], "q01": [low], "q99": [high], "max": [high + 1], "mean": [(low + high) / 2],
             "std": [high - low], "count": [count]}
    return {"observation.state": entry, "action": dict(entry)}


def test_recordings_of_one_robot_share_one_normalisation_other_robots_keep_theirs() -> None:
    from reconvla_core.train.data import share_robot_stats

    clean, noisy, bridge = _stats(-1.0, 0.5, 300), _stats(-2.0, 0.4, 100), _stats(-9.0, 9.0, 10)
    shared = share_robot_stats([clean, noisy, bridge], ["reconvla", "reconvla", "bridge"])
    assert shared[0] is shared[1] and shared[2] is bridge
    state = shared[0]["observation.state"]
    assert state["q01"] == [-2.0] and state["q99"] == [0.5]  # covers both recordings
    assert state["min"] == [-3.0] and state["max"] == [1.5] and state["count"] == [400]
    assert state["mean"] == pytest.approx([(-0.25 * 300 + -0.8 * 100) / 400])
    assert share_robot_stats([clean], ["reconvla"]) == [clean]  # one source: its own stats, untouched


class _WeightedFrames:
    """One 100-frame source whose last 10 frames (interventions) weigh 9 each."""

    lengths = [100]

    def frame_weights(self) -> np.ndarray:
        return np.array([1.0] * 90 + [9.0] * 10)


def test_frame_sample_weights_reach_the_training_stream() -> None:
    weights = source_sample_weights(_WeightedFrames(), [1.0])
    assert weights is not None
    stream = SampleStream(weights, length=100, seed=0)
    draws = np.array([stream[p] for p in range(100 * 40)])
    # 10 frames x 9 against 90 frames x 1: half of the draws are interventions.
    assert float(np.mean(draws >= 90)) == pytest.approx(0.5, abs=0.03)
