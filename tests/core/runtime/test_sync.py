"""Base/wrist frame pairing and its statistics."""

from __future__ import annotations

import pytest

from reconvla_core.runtime.sync import FramePairer, RateMeter

pytestmark = pytest.mark.unit


def test_pairs_frames_within_tolerance():
    pairer = FramePairer(tolerance_s=0.01)
    assert pairer.add("base", 1.000, "b0", now=1.0) is None
    pair = pairer.add("wrist", 1.008, "w0", now=1.01)
    assert pair is not None
    assert (pair.base, pair.wrist) == ("b0", "w0")
    assert pair.stamp == pytest.approx(1.000)
    assert pair.skew_s == pytest.approx(0.008)


def test_frames_outside_tolerance_are_not_paired_and_counted_as_drops():
    pairer = FramePairer(tolerance_s=0.01)
    pairer.add("base", 1.00, "b0", now=1.0)
    assert pairer.add("wrist", 1.05, "w0", now=1.05) is None  # too far from b0
    assert pairer.streams["base"].dropped == 1  # b0 can never pair with a later wrist frame
    pair = pairer.add("base", 1.055, "b1", now=1.06)
    assert (pair.base, pair.wrist) == ("b1", "w0")
    d = pairer.diagnostics(now=1.06)
    assert d["pairs"] == 1 and d["base_dropped"] == 1 and d["wrist_dropped"] == 0
    assert d["base_received"] == 2 and d["wrist_received"] == 1


def test_picks_the_closest_frame_and_drops_older_ones():
    pairer = FramePairer(tolerance_s=0.05, buffer_size=8)
    for i, stamp in enumerate([1.00, 1.03, 1.06]):
        pairer.add("base", stamp, f"b{i}", now=stamp)
    pair = pairer.add("wrist", 1.031, "w", now=1.07)
    assert pair.base == "b1"
    assert pairer.streams["base"].dropped == 1  # b0 is older than the paired frame
    # b2 stays buffered and pairs with the next wrist frame.
    assert pairer.add("wrist", 1.061, "w2", now=1.08).base == "b2"


def test_buffer_overflow_drops_the_oldest():
    pairer = FramePairer(tolerance_s=0.001, buffer_size=2)
    for i in range(5):
        pairer.add("base", float(i), i, now=float(i))
    assert pairer.streams["base"].dropped == 3


def test_rates_and_ages():
    pairer = FramePairer(tolerance_s=0.01)
    for i in range(31):
        t = i / 30
        pairer.add("base", t, i, now=t + 0.005)
        pairer.add("wrist", t + 0.002, i, now=t + 0.006)
    d = pairer.diagnostics(now=1.0 + 0.006)
    assert d["pairs"] == 31
    assert d["base_rate_hz"] == pytest.approx(30.0, rel=1e-6)
    assert d["pair_rate_hz"] == pytest.approx(30.0, rel=1e-6)
    assert d["wrist_age_ms"] == pytest.approx(4.0, abs=1e-6)
    assert d["base_dropped"] == 0 and d["wrist_dropped"] == 0


def test_rate_meter_goes_to_zero_when_stale():
    meter = RateMeter()
    meter.tick(0.0)
    meter.tick(0.1)
    assert meter.rate_hz(0.1) == pytest.approx(10.0)
    assert meter.rate_hz(5.0) == 0.0


def test_rejects_unknown_stream_and_bad_config():
    with pytest.raises(ValueError):
        FramePairer().add("left", 0.0, None, now=0.0)
    with pytest.raises(ValueError):
        FramePairer(tolerance_s=-1)


def test_state_history_returns_the_state_nearest_the_frame_even_out_of_order():
    from reconvla_core.runtime.sync import StateHistory

    history = StateHistory(size=3)
    assert history.nearest(1.0) is None
    for stamp in (1.0, 1.3, 1.1):  # one arrives late
        history.add(stamp, f"s{stamp}")
    assert history.nearest(1.12) == (1.1, "s1.1")
    assert history.nearest(0.0) == (1.0, "s1.0")
    assert history.nearest(9.0) == (1.3, "s1.3")
    history.add(1.4, "s1.4")  # the oldest falls out
    assert len(history) == 3 and history.nearest(0.0) == (1.1, "s1.1")
    with pytest.raises(ValueError, match="size"):
        StateHistory(size=0)
